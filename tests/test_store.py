import json

from lte.schema import Edit
from retrieval.store import EditStore, open_client

NEEDLE = Edit(subject="The Space Needle", prompt="The Space Needle is located in", target_new="Goa",
              paraphrases=("Which city is home to the Space Needle?",))
TOWER = Edit(subject="The Eiffel Tower", prompt="The Eiffel Tower is located in", target_new="Rome")


def test_add_is_idempotent_and_counts(store):
    assert store.add([NEEDLE, TOWER], progress=False).added == 2
    report = store.add([NEEDLE, TOWER], progress=False)
    assert (report.added, report.skipped) == (0, 2)
    assert store.count() == 2
    assert store.keys.count() == 5  # prompt + statement (+ 1 paraphrase) per edit


def test_search_finds_paraphrase_and_gate_drops_unrelated(store):
    store.add([NEEDLE, TOWER], progress=False)
    [hit] = store.search("Where can I visit the Space Needle?", k=1)
    assert hit.edit.id == NEEDLE.id and hit.score >= store.threshold
    assert store.search("How do I bake sourdough bread?") == []
    assert store.search("How do I bake sourdough bread?", gated=False)  # below the gate, still ranked


def test_supersede_keeps_history_and_restore(store):
    store.add([NEEDLE], progress=False)
    newer = Edit(subject="The Space Needle", prompt="The Space Needle is located in", target_new="Lima")
    assert store.add([newer], progress=False).superseded == 1
    assert store.count() == 1 and store.count(history=True) == 2
    assert store.search("Where is the Space Needle?", k=1)[0].edit.target_new == "Lima"
    assert store.get(NEEDLE.id).status == "superseded" and store.get(NEEDLE.id).superseded_by == newer.id
    assert [s.edit.id for s in store.list(history=True)] == [NEEDLE.id, newer.id]
    store.restore(NEEDLE.id)
    assert store.search("Where is the Space Needle?", k=1)[0].edit.target_new == "Goa"
    assert store.keys.count() == 3  # only the current edit's keys are searchable


def moved(edit: Edit, target: str) -> Edit:
    """The same slot with another answer."""
    return Edit(subject=edit.subject, prompt=edit.prompt, target_new=target, paraphrases=edit.paraphrases)


def test_supersede_within_one_import_and_across_batches(store):
    lima = moved(NEEDLE, "Lima")
    oslo = moved(NEEDLE, "Oslo")
    report = store.add([NEEDLE, TOWER, lima], batch_size=2, progress=False)  # NEEDLE and lima in different batches
    assert (report.added, report.superseded) == (3, 1)
    report = store.add([oslo, moved(TOWER, "Kyiv")], batch_size=8, progress=False)
    assert (report.added, report.superseded) == (2, 2)
    report = store.add([moved(NEEDLE, "Bern"), moved(NEEDLE, "Pisa")], progress=False)
    assert (report.added, report.superseded) == (2, 2)  # in one batch the later edit wins at once
    assert sorted(s.edit.target_new for s in store.list()) == ["Kyiv", "Pisa"]
    assert store.keys.count() == 2 + 3  # keys of current edits only
    assert store.search("Where is the Space Needle?", k=1)[0].edit.target_new == "Pisa"


def test_delete_and_export(store, tmp_path):
    store.add([NEEDLE, TOWER], progress=False)
    assert store.delete(TOWER.id) and not store.delete(TOWER.id)
    assert store.count() == 1 and all(h.edit.id != TOWER.id for h in store.search("Eiffel Tower", gated=False))
    out = tmp_path / "out.jsonl"
    assert store.export(out) == 1
    assert Edit.from_dict(json.loads(out.read_text())) == NEEDLE


def test_half_written_edit_is_invisible_and_rerun_completes(store):
    store._write_keys(store._embedded_keys([NEEDLE]))  # an import killed after the keys, before the record
    assert store.search("Where is the Space Needle?", gated=False) == [] and store.count() == 0
    assert store.add([NEEDLE], progress=False).added == 1
    assert store.search("Where is the Space Needle?")[0].edit.id == NEEDLE.id


def test_calibrate_picks_a_threshold_and_persists_it(store, embedder, tmp_path):
    persistent = EditStore(open_client(tmp_path / "db"), "cal", embedder)
    persistent.add([NEEDLE, TOWER], progress=False)
    report = persistent.calibrate([("Where is the Space Needle?", NEEDLE.id), ("Where is the Eiffel Tower?", TOWER.id)],
                                  ["What is the boiling point of water?", "Who wrote Hamlet?"])
    assert report.precision == 1.0 and report.recall == 1.0
    assert EditStore(open_client(tmp_path / "db"), "cal", embedder).threshold == report.threshold


def test_named_collections_are_separate(embedder):
    client = open_client()
    a, b = EditStore(client, "set-a", embedder), EditStore(client, "set-b", embedder)
    a.add([NEEDLE], progress=False)
    assert a.count() == 1 and b.count() == 0


def test_a_running_chroma_server_on_loopback(embedder, tmp_path):
    import shutil
    import socket
    import subprocess
    import sys
    import time
    from pathlib import Path

    import httpx
    import pytest

    chroma = shutil.which("chroma") or str(Path(sys.executable).with_name("chroma"))
    if not Path(chroma).exists():
        pytest.skip("the chroma CLI is not installed")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = subprocess.Popen([chroma, "run", "--path", str(tmp_path / "server"), "--host", "127.0.0.1",
                               "--port", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(150):
            try:
                if httpx.get(f"http://127.0.0.1:{port}/api/v2/heartbeat", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.2)
        store = EditStore.open(url=f"http://127.0.0.1:{port}", collection="remote", embedder=embedder)
        assert store.add([NEEDLE, TOWER], progress=False).added == 2
        assert store.add([NEEDLE], progress=False).skipped == 1
        again = EditStore.open(url=f"http://127.0.0.1:{port}", collection="remote", embedder=embedder)
        assert again.count() == 2 and again.search("Where is the Space Needle?")[0].edit.id == NEEDLE.id
    finally:
        server.terminate()
        server.wait(timeout=30)
