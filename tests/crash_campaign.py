"""Kill a store writer at every kill point of add, supersede, delete, restore and clear; reopen; check.

Run as a script (`python -m tests.crash_campaign --out DIR`), it prints one JSON line: the kill points tried and
every invariant violation found. For each operation it first runs the operation whole on a copy of a prepared
store, counting the kill points it passes (`retrieval.faults`) and recording the final records. Then, for every
n up to that count, on a fresh copy: a child process runs the operation and is killed (`os._exit`, no cleanup, as
SIGKILL) at the n-th point; a second child opens the store (which repairs it), checks the invariants
(`EditStore.verify`: every current edit has all its keys, no key of an edit that is not current, one current edit
per fact, nothing queued), runs the operation again and checks that the records end as the uninterrupted run's.

The campaign forks from a process that never opened a Chroma client (a fork copies one thread; Chroma's own
threads would be left behind mid-lock), so it runs as its own process, not inside pytest's.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path

KILLED = 137  # the exit status a SIGKILL'd process reports to a shell

BASE = [("The Space Needle", "The Space Needle is located in", "Goa"),
        ("The Eiffel Tower", "The Eiffel Tower is located in", "Rome"),
        ("Lionel Messi", "Lionel Messi plays the sport of", "cricket"),
        ("Toyota", "Toyota was founded in the country of", "Brazil"),
        ("Marie Curie", "Marie Curie was born in", "Oslo"),
        ("Nokia", "Nokia is headquartered in", "Lima")]
TARGETS = ["Paris", "Tokyo", "Cairo", "Lagos", "Quito", "Hanoi", "Dakar", "Perth"]


def edit(subject: str, prompt: str, target: str, **extra):
    from lte.core.schema import Edit

    return Edit(subject=subject, prompt=prompt, target_new=target, **extra)


def base_edits():
    """Six facts, each edited twice (the first edit superseded, so restores have history to bring back)."""
    return [edit(s, p, t) for s, p, t in BASE] + [edit(s, p, TARGETS[i]) for i, (s, p, _) in enumerate(BASE)]


def new_edits(n: int):
    """n edits of new facts, two of them with paraphrases, and every third one superseded within the call."""
    edits = []
    for i in range(n):
        subject = f"Tower {i}"
        edits.append(edit(subject, f"{subject} is located in", TARGETS[i % len(TARGETS)],
                          paraphrases=[f"Where is {subject}?"] if i < 2 else []))
        if i % 3 == 2:
            edits.append(edit(subject, f"{subject} is located in", TARGETS[(i + 1) % len(TARGETS)]))
    return edits


def superseding_edits():
    """A new edit for every base fact, plus one already stored (skipped)."""
    return [edit(s, p, TARGETS[-1 - i]) for i, (s, p, _) in enumerate(BASE)] + [edit(*BASE[0])]


def operation(name: str):
    """The operation `name` as a function of an open store."""
    if name == "add":
        return lambda store: store.add(new_edits(60), batch_size=3, progress=False)
    if name == "supersede":
        return lambda store: store.add(superseding_edits(), batch_size=1, progress=False)
    if name == "delete":  # every stored edit, superseded ones first
        return lambda store: [store.delete(e.id) for e in base_edits()]
    if name == "restore":  # the first edit of each fact, which the second superseded
        return lambda store: [store.restore(e.id) for e in base_edits()[:len(BASE)]]
    if name == "clear":
        return lambda store: store.clear()
    raise ValueError(name)


def snapshot(store) -> dict[str, str]:
    return {s.edit.id: s.status for s in store.list(history=True)}


def in_child(work, *args, timeout_s: float = 120.0) -> int:
    """Run `work(*args)` in a forked child; its exit status (KILLED when a kill point ended it)."""
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            work(*args)
            code = 0
        except BaseException as error:  # noqa: BLE001 - the parent reads the status; say why on stderr
            print(f"child failed: {type(error).__name__}: {error}", file=sys.stderr)
        finally:
            os._exit(code)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status)
        time.sleep(0.01)
    os.kill(pid, 9)
    os.waitpid(pid, 0)
    return -9


def count_points(store_dir: Path, op_name: str, out: Path, embedder) -> None:
    """The operation run whole: how many kill points it passes and the records it ends with."""
    from retrieval import faults
    from retrieval.store import EditStore

    names: list[str] = []
    faults.install(names.append)
    store = EditStore.open(store_dir, embedder=embedder)
    names.clear()  # opening passes none on a clean store, but count from the operation's start
    operation(op_name)(store)
    faults.install(None)
    out.write_text(json.dumps({"points": names, "final": snapshot(store)}))


def killed_run(store_dir: Path, op_name: str, n: int, embedder) -> None:
    from retrieval import faults
    from retrieval.store import EditStore

    seen = 0

    def kill(_name: str) -> None:
        nonlocal seen
        seen += 1
        if seen == n:
            os._exit(KILLED)

    store = EditStore.open(store_dir, embedder=embedder)
    faults.install(kill)
    operation(op_name)(store)


def check(store_dir: Path, op_name: str, final: dict, out: Path, embedder) -> None:
    """Reopen (repairing), check the invariants, finish the operation, compare with the uninterrupted run."""
    from retrieval.store import EditStore

    store = EditStore.open(store_dir, embedder=embedder)
    problems = []
    first = store.verify()
    if not first.ok:
        problems.append(f"after reopening: {first}")
    operation(op_name)(store)
    second = store.verify()
    if not second.ok:
        problems.append(f"after re-running: {second}")
    if snapshot(store) != final:
        problems.append("re-running did not end where the uninterrupted run ends")
    out.write_text(json.dumps(problems))


def prepare(template: Path, embedder) -> None:
    from retrieval.store import EditStore

    store = EditStore.open(template, embedder=embedder)
    store.add(base_edits(), batch_size=6, progress=False)


def campaign(out: Path, ops: list[str], limit: int | None) -> dict:
    import torch

    torch.set_num_threads(1)
    import chromadb  # noqa: F401 - imported once here, not in every child (it takes a second); imports start no thread

    from retrieval.embedder import Embedder

    embedder = Embedder()
    embedder.encode(["warm up"])
    template = out / "template" / "store"
    if in_child(prepare, template, embedder) != 0:
        raise SystemExit("could not prepare the template store")
    results: dict = {"kill_points": 0, "per_operation": {}, "violations": [], "seconds": 0.0}
    start = time.monotonic()
    for op_name in ops:
        trial = out / f"{op_name}-whole"
        shutil.copytree(template.parent, trial)
        if in_child(count_points, trial / "store", op_name, trial / "count.json", embedder) != 0:
            raise SystemExit(f"{op_name}: the uninterrupted run failed")
        counted = json.loads((trial / "count.json").read_text())
        points = len(counted["points"]) if limit is None else min(limit, len(counted["points"]))
        results["per_operation"][op_name] = points
        for n in range(1, points + 1):
            trial = out / f"{op_name}-{n}"
            shutil.copytree(template.parent, trial)
            status = in_child(killed_run, trial / "store", op_name, n, embedder)
            if status != KILLED:
                results["violations"].append(f"{op_name} kill point {n}: the writer ended with {status}, not killed")
                continue
            code = in_child(check, trial / "store", op_name, counted["final"], trial / "check.json", embedder)
            problems = json.loads((trial / "check.json").read_text()) if code == 0 else [f"check exited {code}"]
            results["violations"] += [f"{op_name} killed at point {n} ({counted['points'][n - 1]}): {p}"
                                      for p in problems]
            results["kill_points"] += 1
            shutil.rmtree(trial, ignore_errors=True)
    results["seconds"] = round(time.monotonic() - start, 1)
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--ops", nargs="+", default=["add", "supersede", "delete", "restore", "clear"])
    parser.add_argument("--limit", type=int, help="at most this many kill points per operation")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    print(json.dumps(campaign(args.out, args.ops, args.limit)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
