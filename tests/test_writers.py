"""Many writers on one store at once, writing conflicting edits for the same facts: the records database keeps
exactly one current edit per fact, all the others as history, and the key index in step.

- embedded: 4 `lte edit add` processes on one store folder (records in its SQLite file);
- shared deployment: 4 `lte edit add` processes and 2 `lte serve` replicas on one Chroma server and one PostgreSQL
  database, both started by the test.
"""

from __future__ import annotations

import json
import subprocess
from concurrent.futures import ThreadPoolExecutor

import httpx

from retrieval.store import EditStore
from tests.services import chroma_server, lte_command, lte_serve, postgres

FACTS = 300


def edits_of(writer: int) -> list[dict]:
    """Writer `writer`'s edit of each of the same FACTS facts: same subject and relation, its own answer."""
    return [{"subject": f"Landmark {i}", "prompt": f"Landmark {i} is located in", "target_new": f"City {writer}-{i}"}
            for i in range(FACTS)]


def write_file(path, writer: int):
    path.write_text("".join(json.dumps(e) + "\n" for e in edits_of(writer)))
    return path


def run_writers(tmp_path, where: list[str], writers: int) -> list[subprocess.CompletedProcess]:
    files = [write_file(tmp_path / f"w{w}.jsonl", w) for w in range(writers)]
    processes = [subprocess.Popen(lte_command(*where, "edit", "add", str(f), "--batch-size", "16"),
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for f in files]
    return [subprocess.CompletedProcess(p.args, p.wait(timeout=900), *p.communicate()) for p in processes]


def assert_one_current_per_fact(store: EditStore, writers: int) -> None:
    assert store.count() == FACTS
    assert store.count(history=True) == FACTS * writers  # every writer's edit kept, as current or history
    check = store.verify()
    assert check.ok, check
    current = store.list()
    assert len({s.edit.supersede_key for s in current}) == FACTS
    history = [s for s in store.list(history=True) if s.status != "current"]
    assert all(h.superseded_by for h in history)  # each history edit names the edit that superseded it


def test_four_writer_processes_on_one_embedded_store(tmp_path, embedder):
    store_dir = tmp_path / "store"
    results = run_writers(tmp_path, ["--store", str(store_dir)], 4)
    assert [r.returncode for r in results] == [0] * 4, [r.stderr[-800:] for r in results]
    store = EditStore.open(store_dir, embedder=embedder)
    assert_one_current_per_fact(store, 4)
    [hit] = store.search("Where is Landmark 7?", k=1)
    assert hit.edit.subject == "Landmark 7" and hit.edit.id == next(s.edit.id for s in store.list()
                                                                    if s.edit.subject == "Landmark 7")


def test_writers_and_two_serve_replicas_on_postgres_and_a_chroma_server(tmp_path, embedder):
    with postgres() as records, chroma_server(tmp_path / "chroma") as chroma:
        where = ["--chroma-url", chroma, "--records-url", records, "--model", "tiny-random"]
        with lte_serve(*where) as first, lte_serve(*where) as second:
            with ThreadPoolExecutor(max_workers=3) as pool:
                posted = [pool.submit(post_all, url, edits_of(4 + r)) for r, url in enumerate([first, second])]
                writers = pool.submit(run_writers, tmp_path, where, 4)
                answers = [p.result() for p in posted]
                results = writers.result()
        assert [r.returncode for r in results] == [0] * 4, [r.stderr[-800:] for r in results]
        assert all(code == 200 for codes in answers for code in codes), answers
        store = EditStore.open(url=chroma, records_url=records, embedder=embedder)
        assert_one_current_per_fact(store, 6)


def post_all(base: str, edits: list[dict], per_request: int = 10) -> list[int]:
    with httpx.Client(base_url=base, timeout=300) as client:
        return [client.post("/v1/edits", json=edits[i:i + per_request]).status_code
                for i in range(0, len(edits), per_request)]
