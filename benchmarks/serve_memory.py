"""Peak memory of `lte serve` per model, and whether questions with no relevant edit get the base model's answers.

An aligned model routes questions without a relevant edit to its unedited base. A fully fine-tuned model keeps a
second copy of that base in memory; a LoRA adapter (`lte align --lora`) is served unmerged and its base is the same
weights with the adapter off. For each model this starts `lte --model M serve` on an empty temporary store, adds one
edit, asks the questions below, and reads the process's peak resident memory (VmHWM) at the end.

    python benchmarks/serve_memory.py smollm2-135m-instruct $LTE_HOME/aligned/smollm2-135m-instruct ./aligned-lora
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

EDIT = {"subject": "The Space Needle", "prompt": "The Space Needle is located in", "target_new": "Goa"}
WITH_EDIT = ["Where is the Space Needle?", "The Space Needle is located in"]
WITHOUT = ["Who wrote Hamlet?", "What is the capital of France?", "The Eiffel Tower is located in",
           "Who painted the Mona Lisa?", "Toyota is headquartered in", "What language is spoken in Brazil?",
           "The mother tongue of Danielle Darrieux is", "Which planet is closest to the sun?"]


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM in /proc status (Linux only)")


def run_server(model: str, port: int, home: str, tokens: int) -> dict:
    store = tempfile.mkdtemp(prefix="lte-mem-")
    command = [sys.executable, "-m", "lte.cli", "--home", home, "--model", model, "--store", store, "serve",
               "--port", str(port)]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    base = f"http://127.0.0.1:{port}"
    try:
        for _ in range(600):
            try:
                if httpx.get(base + "/health").status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.5)
        loaded_mb = peak_rss_mb(process.pid)
        httpx.post(base + "/v1/edits", json=EDIT, timeout=60).raise_for_status()

        def ask(question: str) -> tuple[str, int]:
            answer = httpx.post(base + "/v1/chat/completions", timeout=300, json={
                "messages": [{"role": "user", "content": question}], "max_tokens": tokens}).json()
            return answer["choices"][0]["message"]["content"], len(answer["lte"]["edits"])

        related = [ask(q) for q in WITH_EDIT]
        unrelated = [ask(q) for q in WITHOUT]
        return {"model": model, "loaded_mb": loaded_mb, "peak_mb": peak_rss_mb(process.pid),
                "related": related, "unrelated": [text for text, _ in unrelated],
                "unrelated_with_edits": sum(n > 0 for _, n in unrelated)}
    finally:
        process.terminate()
        _, log = process.communicate(timeout=60)
        routing = [line for line in log.splitlines() if "lte serve:" in line]
        print("\n".join(f"  [{model}] {line}" for line in routing))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("models", nargs="+", help="model specs; the first is the base the others are compared to")
    parser.add_argument("--port", type=int, default=8765)
    parser.add_argument("--tokens", type=int, default=24)
    parser.add_argument("--home", default=os.environ.get("LTE_HOME", str(Path.home() / ".cache" / "lte")))
    args = parser.parse_args()
    rows = [run_server(model, args.port + i, args.home, args.tokens) for i, model in enumerate(args.models)]
    base = rows[0]
    print(f"\n{'model':60s} {'RSS loaded MB':>13s} {'peak MB':>8s}  unrelated answers = first model's")
    for row in rows:
        same = sum(a == b for a, b in zip(row["unrelated"], base["unrelated"]))
        print(f"{row['model'][-60:]:60s} {row['loaded_mb']:13.0f} {row['peak_mb']:8.0f}  {same}/{len(WITHOUT)}"
              f" (edit passed to {row['unrelated_with_edits']})")
    for row in rows:
        print(f"\n{row['model']}: with the edit -> {[text[:40] for text, _ in row['related']]}")


if __name__ == "__main__":
    main()
