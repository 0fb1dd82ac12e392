"""Faults and load for `lte serve` and the edit store (issues 6 and 20), on loopback only. Prints one report:

1. load: N concurrent clients for D seconds mix questions, edit inserts, deletes and abandoned requests (a client
   that gives up after 0.2 s, streaming or not). Requests and errors by status, p50/p99 latency per kind, edits
   acknowledged, and every acknowledged edit not deleted since checked stored (a delete with status 0 found no
   acknowledged edit to delete yet); then the queue must be empty and answer at once.
2. kill -9 of the server mid-insert: restart on the same store; acknowledged edits lost (must be 0).
3. kill -9 of `lte edit add` mid-import: the store opens, and re-running the import completes it (no duplicate).
4. a Chroma server (`--chroma-url`) stopped under load and restarted: answers while it is down (503 with a clear
   message expected), and recovery without restarting `lte serve`.

    python benchmarks/serve_load.py [--model smollm2-135m-instruct] [--clients 32] [--seconds 60] \\
        | tee results/serve-faults.txt
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import httpx

KEY = "load-test-key"
HEADERS = {"Authorization": f"Bearer {KEY}"}
MIX = (("question", 0.5), ("insert", 0.25), ("delete", 0.1), ("abandoned", 0.15))


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_until_up(url: str, process: subprocess.Popen, seconds: float = 300) -> None:
    deadline = time.time() + seconds
    while time.time() < deadline and process.poll() is None:
        try:
            httpx.get(url, timeout=2)
            return
        except httpx.HTTPError:
            time.sleep(0.3)
    process.kill()
    raise RuntimeError(f"{url} did not come up")


def lte(*args: str) -> list[str]:
    return [sys.executable, "-m", "lte.cli", *args]


def start_server(model: str, port: int, store: Path | None = None, chroma_url: str | None = None) -> subprocess.Popen:
    where = ["--chroma-url", chroma_url] if chroma_url else ["--store", str(store)]
    process = subprocess.Popen(lte("--model", model, *where, "serve", "--port", str(port), "--api-key", KEY,
                                   "--max-queue", "256"), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_until_up(f"http://127.0.0.1:{port}/health", process)
    return process


def start_chroma(path: Path, port: int) -> subprocess.Popen:
    chroma = shutil.which("chroma") or str(Path(sys.executable).parent / "chroma")
    process = subprocess.Popen([chroma, "run", "--path", str(path), "--port", str(port)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_until_up(f"http://127.0.0.1:{port}/api/v2/heartbeat", process)
    return process


def edit(i: int) -> dict:
    return {"subject": f"Landmark {i}", "prompt": f"Landmark {i} is located in", "target_new": f"City {i}"}


def question(rng: random.Random, stream: bool = False, tokens: int = 16) -> dict:
    return {"max_tokens": tokens, "stream": stream,
            "messages": [{"role": "user", "content": f"Where is Landmark {rng.randrange(1000)}?"}]}


def percentile(values: list[float], q: int) -> float:
    return statistics.quantiles(values, n=100)[q - 1] if len(values) > 1 else (values or [0.0])[0]


# ---------------------------------------------------------------- 1. load

async def worker(client: httpx.AsyncClient, deadline: float, seed: int, stats: dict) -> None:
    rng = random.Random(seed)
    while time.time() < deadline:
        kind = rng.choices([k for k, _ in MIX], [w for _, w in MIX])[0]
        start = time.perf_counter()
        try:
            status = await one_request(client, kind, rng, stats)
        except httpx.TimeoutException:
            status = "gave up" if kind == "abandoned" else "timeout"
        except httpx.HTTPError:
            status = "connection error"
        stats["latency"].setdefault(kind, []).append(time.perf_counter() - start)
        stats["status"][(kind, status)] += 1


async def one_request(client: httpx.AsyncClient, kind: str, rng: random.Random, stats: dict) -> int:
    if kind == "question":
        return (await client.post("/v1/chat/completions", json=question(rng))).status_code
    if kind == "insert":
        response = await client.post("/v1/edits", json=edit(rng.randrange(10**9)))
        if response.status_code == 200:
            stats["acked"].update(response.json()["ids"])
        return response.status_code
    if kind == "delete":
        if not stats["acked"]:
            return 0
        victim = rng.choice(sorted(stats["acked"]))
        stats["deleted"].add(victim)  # before the request: a delete that fails midway may still have happened
        return (await client.delete(f"/v1/edits/{victim}")).status_code
    stream = rng.random() < 0.5  # abandoned: a client that gives up after 0.2 s
    request = client.build_request("POST", "/v1/chat/completions", json=question(rng, stream, tokens=64),
                                   timeout=0.2)
    response = await client.send(request, stream=stream)
    await response.aclose()
    return response.status_code


async def load(base: str, clients: int, seconds: float) -> dict:
    stats = {"latency": {}, "status": Counter(), "acked": set(), "deleted": set()}
    deadline = time.time() + seconds
    async with httpx.AsyncClient(base_url=base, headers=HEADERS, timeout=600) as client:
        await asyncio.gather(*(worker(client, deadline, seed, stats) for seed in range(clients)))
    return stats


def stored_ids(base: str) -> set[str]:
    ids, offset = set(), 0
    with httpx.Client(base_url=base, headers=HEADERS, timeout=120) as client:
        while True:
            page = client.get("/v1/edits", params={"offset": offset, "limit": 1000, "history": True}).json()
            ids.update(item["id"] for item in page["data"])
            offset += 1000
            if offset >= page["total"]:
                return ids


def settle(base: str, seconds: float = 120) -> tuple[float, int]:
    """Seconds until the queue is empty after the load, and the status of one question asked then."""
    start = time.time()
    while time.time() - start < seconds and httpx.get(base + "/health", timeout=10).json()["queued"]:
        time.sleep(0.2)
    waited = time.time() - start
    response = httpx.post(base + "/v1/chat/completions", headers=HEADERS, timeout=120,
                          json=question(random.Random(0), tokens=4))
    return waited, response.status_code


def report_load(stats: dict, base: str, args) -> bool:
    requests = sum(stats["status"].values())
    errors = sum(n for (_, status), n in stats["status"].items() if isinstance(status, int) and status >= 500
                 or status in ("timeout", "connection error"))
    missing = stats["acked"] - stats["deleted"] - stored_ids(base)
    print(f"1. load: model {args.model}, {args.clients} clients, {args.seconds:.0f} s: {requests} requests, "
          f"{errors} server errors, {len(stats['acked'])} edits acknowledged ({len(stats['deleted'])} of them "
          f"deleted since), {len(missing)} acknowledged and not deleted missing from the store")
    for (kind, status), n in sorted(stats["status"].items(), key=lambda item: (item[0][0], str(item[0][1]))):
        print(f"   {kind:<10} {status!s:<17} {n:>6}")
    for kind, values in sorted(stats["latency"].items()):
        p50, p99 = percentile(values, 50) * 1000, percentile(values, 99) * 1000
        print(f"   {kind:<10} p50 {p50:9.1f} ms   p99 {p99:9.1f} ms")
    waited, status = settle(base)
    print(f"   after the load: queue empty after {waited:.1f} s; a new question got {status}")
    return not errors and not missing and status == 200


# ---------------------------------------------------------------- 2. kill -9 of the server

async def insert_until_killed(base: str, process: subprocess.Popen, seconds: float) -> set[str]:
    acked: set[str] = set()

    async def inserter(seed: int) -> None:
        rng = random.Random(seed)
        async with httpx.AsyncClient(base_url=base, headers=HEADERS, timeout=30) as client:
            while process.poll() is None:
                try:
                    response = await client.post("/v1/edits", json=edit(rng.randrange(10**9)))
                    if response.status_code == 200:
                        acked.update(response.json()["ids"])
                except httpx.HTTPError:
                    return

    async def killer() -> None:
        await asyncio.sleep(seconds)
        os.kill(process.pid, signal.SIGKILL)

    await asyncio.gather(killer(), *(inserter(seed) for seed in range(8)))
    return acked


def kill_server(args, store: Path, port: int, process: subprocess.Popen) -> bool:
    base = f"http://127.0.0.1:{port}"
    acked = asyncio.run(insert_until_killed(base, process, seconds=5))
    process.wait()
    process = start_server(args.model, port, store)
    try:
        lost = acked - stored_ids(base)
    finally:
        process.kill()
        process.wait()
    print(f"2. kill -9 of lte serve during inserts: {len(acked)} edits acknowledged before the kill, {len(lost)} lost "
          "after the restart")
    return not lost


# ---------------------------------------------------------------- 3. kill -9 of lte edit add

def kill_import(work: Path, n: int = 3000) -> bool:
    data = work / "import.jsonl"
    data.write_text("".join(json.dumps(edit(i)) + "\n" for i in range(n)))
    store = work / "import-store"
    process = subprocess.Popen(lte("--store", str(store), "edit", "add", str(data), "--batch-size", "64"),
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(12)  # past model loading, into the import
    process.send_signal(signal.SIGKILL)
    process.wait()
    count = subprocess.run(lte("--store", str(store), "edit", "count"), capture_output=True, text=True)
    again = subprocess.run(lte("--store", str(store), "edit", "add", str(data)), capture_output=True, text=True)
    final = subprocess.run(lte("--store", str(store), "edit", "count", "--history"), capture_output=True, text=True)
    print(f"3. kill -9 of lte edit add ({n} edits) after 12 s: the store opened with {count.stdout.strip() or '?'} "
          f"edits (exit {count.returncode}); re-running the import: {again.stdout.strip()} (exit {again.returncode});"
          f" stored now {final.stdout.strip()}")
    return count.returncode == 0 and again.returncode == 0 and final.stdout.strip() == str(n)


# ---------------------------------------------------------------- 4. a Chroma server that goes away

def chroma_outage(args, work: Path) -> bool:
    chroma_port, port = free_port(), free_port()
    chroma = start_chroma(work / "chroma", chroma_port)
    server = start_server(args.model, port, chroma_url=f"http://127.0.0.1:{chroma_port}")
    base, rng = f"http://127.0.0.1:{port}", random.Random(1)
    try:
        with httpx.Client(base_url=base, headers=HEADERS, timeout=120) as client:
            ids = client.post("/v1/edits", json=edit(7)).json()["ids"]
            chroma.terminate()
            chroma.wait()
            down = Counter()
            messages = set()
            for i in range(10):
                response = (client.post("/v1/edits", json=edit(100 + i)) if i % 2 else
                            client.post("/v1/chat/completions", json=question(rng, tokens=4)))
                down[response.status_code] += 1
                if response.status_code >= 400:
                    messages.add(response.json()["error"]["message"][:90])
            chroma = start_chroma(work / "chroma", chroma_port)
            back = client.post("/v1/chat/completions", json={"max_tokens": 4, "messages": [
                {"role": "user", "content": "Where is Landmark 7?"}]})
            found = [e["id"] for e in back.json().get("lte", {}).get("edits", [])]
        print(f"4. Chroma server stopped under lte serve: 10 requests while down got {dict(down)} "
              f"({'; '.join(sorted(messages))}); after its restart a question got {back.status_code}, "
              f"with the edit stored before the outage {'retrieved' if ids[0] in found else 'NOT retrieved'}")
        return set(down) == {503} and back.status_code == 200 and ids[0] in found
    finally:
        server.kill()
        chroma.kill()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=60)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp())
    print(f"command: python benchmarks/serve_load.py --model {args.model} --clients {args.clients} "
          f"--seconds {args.seconds:g}; {os.cpu_count()} cores")
    store, port = work / "store", free_port()
    process = start_server(args.model, port, store)
    try:
        ok = report_load(asyncio.run(load(f"http://127.0.0.1:{port}", args.clients, args.seconds)),
                         f"http://127.0.0.1:{port}", args)
        ok &= kill_server(args, store, port, process)
    finally:
        process.kill()
    ok &= kill_import(work)
    ok &= chroma_outage(args, work)
    print("all checks passed" if ok else "SOME CHECKS FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
