import json

import numpy as np

from lte.core.schema import Edit
from retrieval.store import KEY_INDEX, EditStore, open_client

NEEDLE = Edit(subject="The Space Needle", prompt="The Space Needle is located in", target_new="Goa",
              paraphrases=("Which city is home to the Space Needle?",))
TOWER = Edit(subject="The Eiffel Tower", prompt="The Eiffel Tower is located in", target_new="Rome")


def test_add_is_idempotent_and_counts(store):
    assert store.add([NEEDLE, TOWER], progress=False).added == 2
    report = store.add([NEEDLE, TOWER], progress=False)
    assert (report.added, report.skipped) == (0, 2)
    assert store.count() == 2
    assert store.keys.count() == 5  # prompt + statement (+ 1 paraphrase) per edit


def test_the_key_index_searches_deep_enough_to_repeat_itself(store):
    # at Chroma's default depth (100) two builds of the same store disagreed on a few queries in 600
    hnsw = store.keys.configuration["hnsw"]
    assert hnsw["space"] == "cosine" and hnsw["ef_search"] == KEY_INDEX["hnsw:search_ef"] >= 400


def test_a_store_made_at_chromas_default_depth_is_deepened_on_open(embedder, tmp_path):
    open_client(tmp_path).get_or_create_collection("edits-keys", metadata={"hnsw:space": "cosine"},
                                                 embedding_function=None)  # as stores were made before
    store = EditStore.open(tmp_path, embedder=embedder)
    assert store.keys.configuration["hnsw"]["ef_search"] == KEY_INDEX["hnsw:search_ef"]


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
    store.index.upsert(store._embedded_keys([NEEDLE]))  # an import killed after the keys, before the record
    assert store.search("Where is the Space Needle?", gated=False) == [] and store.count() == 0
    assert store.add([NEEDLE], progress=False).added == 1
    assert store.search("Where is the Space Needle?")[0].edit.id == NEEDLE.id


def _training_cases():
    """Each case: its edit, two paraphrases, a neighbour (other subject) and another relation of its subject."""
    from lte.core.schema import EditCase, Probe

    facts = [("The Space Needle", "is located in", "Goa", "Where is the Space Needle?",
              "Which city has the Space Needle?", "Who designed the Space Needle?"),
             ("The Eiffel Tower", "is located in", "Rome", "Where is the Eiffel Tower?",
              "In which city is the Eiffel Tower?", "How tall is the Eiffel Tower?"),
             ("Lionel Messi", "plays the sport of", "cricket", "What sport does Lionel Messi play?",
              "Which game is Lionel Messi known for?", "Where was Lionel Messi born?"),
             ("Toyota", "was founded in the country of", "Brazil", "Where was Toyota founded?",
              "In which country did Toyota start?", "Who is the CEO of Toyota?"),
             ("Marie Curie", "was born in", "Oslo", "Where was Marie Curie born?",
              "What is the birthplace of Marie Curie?", "Which prize did Marie Curie win?"),
             ("Nokia", "is headquartered in", "Lima", "Where is Nokia headquartered?", "In which city is Nokia based?",
              "What does Nokia make?")]
    cases = []
    for i, (subject, relation, target, para1, para2, other_relation) in enumerate(facts):
        neighbour = facts[(i + 1) % len(facts)][0]
        edit = Edit(subject=subject, prompt=f"{subject} {relation}", target_new=target)
        cases.append(EditCase.from_edits(str(i), [edit], paraphrases=[Probe(para1), Probe(para2)],
                                         locality=[Probe(f"{neighbour} {relation}"), Probe(other_relation)]))
    return cases


def test_calibrate_fits_a_gate_that_knows_relations_and_persists_it(embedder, tmp_path):
    persistent = EditStore.open(tmp_path / "db", collection="cal", embedder=embedder)
    gate = persistent.calibrate(_training_cases())
    assert gate.weights[2] > 0  # the relation signal carries weight
    assert gate.fit_recall >= 0.8 and gate.fit_precision >= 0.8 and (gate.fit_related, gate.fit_unrelated) == (18, 12)
    assert EditStore.open(tmp_path / "db", collection="cal", embedder=embedder).gate == gate  # saved with the store
    persistent.add([NEEDLE], progress=False)
    assert [h.edit.id for h in persistent.search("Which city is the Space Needle in?")] == [NEEDLE.id]
    assert persistent.search("Who designed the Space Needle?") == []  # same subject, another relation


def test_the_unfitted_gate_is_the_old_relevance_score(store):
    from retrieval.gate import UNFITTED, subject_coverage

    store.add([NEEDLE], progress=False)
    [hit] = store.search("Where can I visit the Space Needle?", k=1, gated=False)
    vector = store.embedder.encode(["Where can I visit the Space Needle?"]).tolist()
    cosine = 1 - store.keys.query(query_embeddings=vector, n_results=1, include=["distances"])["distances"][0][0]
    old = cosine - 0.3 * (1 - subject_coverage("Where can I visit the Space Needle?", NEEDLE.subject))
    assert (hit.score >= UNFITTED.threshold) == (old >= 0.5)


def test_named_collections_are_separate(embedder):
    client = open_client()
    a, b = EditStore(client, "set-a", embedder), EditStore(client, "set-b", embedder)
    a.add([NEEDLE], progress=False)
    assert a.count() == 1 and b.count() == 0


def test_a_running_chroma_server_on_loopback(embedder, tmp_path):
    from tests.services import chroma_server

    with chroma_server(tmp_path / "server") as url:
        records = f"sqlite:///{tmp_path / 'records.sqlite3'}"
        store = EditStore.open(url=url, collection="remote", embedder=embedder, records_url=records)
        assert store.add([NEEDLE, TOWER], progress=False).added == 2
        assert store.add([NEEDLE], progress=False).skipped == 1
        again = EditStore.open(url=url, collection="remote", embedder=embedder, records_url=records)
        assert again.count() == 2 and again.search("Where is the Space Needle?")[0].edit.id == NEEDLE.id


def test_list_and_count_read_pages(store):
    edits = [Edit(subject=f"Tower {i}", prompt=f"Tower {i} is located in", target_new="Goa") for i in range(7)]
    store.add(edits, progress=False)
    assert [s.edit.id for s in store.list(offset=2, limit=3)] == [e.id for e in edits[2:5]]
    assert store.list(offset=6, limit=10)[0].edit.id == edits[6].id and store.count() == 7
    first = store.list(limit=3)
    assert [s.edit.id for s in store.list(limit=3, after=first[-1].seq)] == [e.id for e in edits[3:6]]


def test_a_page_after_a_seq_seeks_by_the_listing_index():
    import sqlalchemy as sa

    from retrieval.records import create_engine, metadata, page_query

    engine = create_engine("sqlite://")
    metadata.create_all(engine)
    query = page_query("edits", False, 0, 50, after=123_456)
    with engine.connect() as connection:
        plan = " ".join(str(row[-1]) for row in connection.execute(
            sa.text("EXPLAIN QUERY PLAN " + str(query.compile(engine, compile_kwargs={"literal_binds": True})))))
    assert "USING INDEX lte_edits_listing" in plan and "seq>?" in plan.replace(" ", "")  # a seek, not a scan


def test_check_finds_missing_keys_and_reindex_rebuilds_them(tmp_path, embedder, capsys):
    from lte.cli import main

    store = EditStore.open(tmp_path / "store", embedder=embedder)
    store.add([NEEDLE, TOWER], progress=False)
    assert store.verify().ok
    store.index.remove_edits([NEEDLE.id])  # the index loses an edit's keys behind the store's back
    assert store.verify().current_without_keys == (NEEDLE.id,)
    store.close()
    assert main(["--store", str(tmp_path / "store"), "edit", "check"]) == 1
    assert "current edits missing keys: 1" in capsys.readouterr().out
    assert main(["--store", str(tmp_path / "store"), "edit", "reindex"]) == 0
    assert main(["--store", str(tmp_path / "store"), "edit", "check"]) == 0


def test_a_store_with_its_records_in_chroma_is_moved_on_open(tmp_path, embedder):
    """The layout before the records database: records as metadata of a `<name>-edits` collection."""
    client = open_client(tmp_path / "old")
    old = client.get_or_create_collection("edits-edits", embedding_function=None)
    newer = Edit(subject=NEEDLE.subject, prompt=NEEDLE.prompt, target_new="Lima")
    rows = [(NEEDLE, "superseded", newer.id, 1), (newer, "current", "", 2), (TOWER, "current", "", 3)]
    old.add(ids=[e.id for e, *_ in rows], embeddings=[[0.0]] * 3,
            metadatas=[{"edit": json.dumps(e.to_dict()), "slot": e.supersede_key, "status": status,
                        "superseded_by": by, "seq": seq} for e, status, by, seq in rows])
    keys = client.get_or_create_collection("edits-keys", metadata={"hnsw:space": "cosine"}, embedding_function=None)
    vectors = embedder.encode([newer.prompt, TOWER.prompt]).tolist()
    keys.add(ids=[f"{newer.id}:0", f"{TOWER.id}:0"], embeddings=vectors,
             metadatas=[{"edit_id": e.id, "kind": "prompt", "text": e.prompt} for e in (newer, TOWER)])
    del client, old, keys
    store = EditStore.open(tmp_path / "old", embedder=embedder)
    assert (store.count(), store.count(history=True)) == (2, 3)
    assert store.get(NEEDLE.id).superseded_by == newer.id
    assert [s.edit.id for s in store.list(history=True)] == [NEEDLE.id, newer.id, TOWER.id]  # the old order
    assert "edits-edits" not in [c.name for c in store.client.list_collections()]
    assert store.search("Where is the Space Needle?", gated=False)[0].edit.id == newer.id


def test_the_embedder_in_a_child_process_gives_the_same_vectors(embedder):
    """`in_child_process` embeds in a started child (not here) and gets what embedding here gets."""
    import time

    texts = ["The Space Needle is located in", "Danielle Darrieux's mother tongue is", "Goa"]
    here = embedder.encode(texts)
    with embedder.in_child_process():
        deadline = time.monotonic() + 120
        while embedder._ready_child() is None and time.monotonic() < deadline:
            time.sleep(0.2)
        pool = embedder._ready_child()
        assert pool is not None and all(p.is_alive() for p in pool["processes"])
        there = embedder.encode(texts)
    assert embedder._child is None and embedder._ready_child() is None  # stopped; embedding here again
    assert np.allclose(here, there, atol=1e-5) and np.allclose(embedder.encode(texts), here, atol=1e-5)


def test_a_long_add_embeds_in_a_child_process_and_keeps_every_key(embedder, monkeypatch):
    import retrieval.store as store_module

    monkeypatch.setattr(store_module, "CHILD_EMBEDDING_FROM", 50)
    used = []
    real = embedder.in_child_process
    monkeypatch.setattr(embedder, "in_child_process", lambda: used.append(1) or real())
    store = EditStore(open_client(), "long", embedder)
    edits = [Edit(subject=f"Tower {i}", prompt=f"Tower {i} is located in", target_new=f"City {i}")
             for i in range(60)]
    store.add(edits, batch_size=8, progress=False)
    assert used == [1] and store.count() == 60 and store.verify().ok
    assert store.search("Where is Tower 17?", gated=False)[0].edit.subject == "Tower 17"
    store.add(edits[:10] + [Edit(subject="Tower 99", prompt="Tower 99 is located in", target_new="Oslo")],
              progress=False)
    assert used == [1]  # a short add embeds here
