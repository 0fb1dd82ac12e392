"""Load and robustness check for `lte serve` (issue 6), on loopback only.

1. Start `lte serve` on a fresh store; N concurrent clients for D seconds mix questions and edit inserts.
   Prints request counts, server errors, p50/p99 latency per kind, and checks every acknowledged edit is stored.
2. Insert edits while the server is killed with SIGKILL, restart it on the same store, and check that no
   acknowledged edit was lost.

    python benchmarks/serve_load.py --model tiny-random --clients 32 --seconds 60
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

KEY = "load-test-key"
HEADERS = {"Authorization": f"Bearer {KEY}"}


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def start_server(model: str, store: Path, port: int) -> subprocess.Popen:
    command = [sys.executable, "-m", "lte.cli", "--model", model, "--store", str(store), "serve",
               "--port", str(port), "--api-key", KEY, "--max-queue", "256"]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while time.time() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200:
                return process
        except httpx.HTTPError:
            time.sleep(0.5)
    process.kill()
    raise RuntimeError("server did not start")


def edit(i: int) -> dict:
    return {"subject": f"Landmark {i}", "prompt": f"Landmark {i} is located in", "target_new": f"City {i}"}


async def worker(client: httpx.AsyncClient, deadline: float, seed: int, stats: dict) -> None:
    rng = random.Random(seed)
    while time.time() < deadline:
        if rng.random() < 0.3:
            kind, i = "insert", rng.randrange(10**9)
            request = client.post("/v1/edits", json=edit(i))
        else:
            kind = "question"
            request = client.post("/v1/chat/completions", json={"max_tokens": 16, "messages": [
                {"role": "user", "content": f"Where is Landmark {rng.randrange(1000)}?"}]})
        start = time.perf_counter()
        try:
            response = await request
            status = response.status_code
        except httpx.HTTPError:
            status = -1
        stats.setdefault(kind, []).append(time.perf_counter() - start)
        stats.setdefault("status", []).append(status)
        if kind == "insert" and status == 200:
            stats.setdefault("acked", set()).update(response.json()["ids"])


async def load(base: str, clients: int, seconds: float) -> dict:
    stats: dict = {}
    deadline = time.time() + seconds
    async with httpx.AsyncClient(base_url=base, headers=HEADERS, timeout=600) as client:
        await asyncio.gather(*(worker(client, deadline, seed, stats) for seed in range(clients)))
    return stats


def stored_ids(base: str) -> set[str]:
    ids, offset = set(), 0
    with httpx.Client(base_url=base, headers=HEADERS, timeout=60) as client:
        while True:
            page = client.get("/v1/edits", params={"offset": offset, "limit": 1000, "history": True}).json()
            ids.update(item["id"] for item in page["data"])
            offset += 1000
            if offset >= page["total"]:
                return ids


def percentile(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100)[int(q) - 1] if len(values) > 1 else (values or [0.0])[0]


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


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="tiny-random")
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=60)
    args = parser.parse_args()
    store, port = Path(tempfile.mkdtemp()) / "store", free_port()
    base = f"http://127.0.0.1:{port}"
    process = start_server(args.model, store, port)
    try:
        stats = asyncio.run(load(base, args.clients, args.seconds))
        missing = stats.get("acked", set()) - stored_ids(base)
        errors = sum(1 for s in stats["status"] if s >= 500 or s < 0)
        print(f"model {args.model}, {args.clients} clients, {args.seconds:.0f} s: {len(stats['status'])} requests, "
              f"{errors} server errors, {len(stats.get('acked', ()))} edits acknowledged, {len(missing)} missing")
        for kind in ("question", "insert"):
            values = stats.get(kind, [])
            if values:
                print(f"  {kind:<9} n={len(values):<6} p50 {percentile(values, 50) * 1000:8.1f} ms   "
                      f"p99 {percentile(values, 99) * 1000:8.1f} ms")
        acked = asyncio.run(insert_until_killed(base, process, seconds=5))
    finally:
        process.kill()
        process.wait()
    process = start_server(args.model, store, port)
    try:
        lost = acked - stored_ids(base)
        print(f"kill -9 during inserts: {len(acked)} edits acknowledged before the kill, "
              f"{len(lost)} lost after restart")
    finally:
        process.kill()
    return 1 if errors or missing or lost else 0


if __name__ == "__main__":
    sys.exit(main())
