"""The scope model: its training pairs, its training (on a tiny encoder), and the store deciding with it or, without
one, with the relevance gate."""

from __future__ import annotations

import random

import numpy as np
import pytest

from lte.core.schema import Edit
from lte.core.tables import table_cases
from retrieval import scope as scope_module
from retrieval.embedder import Embedder
from retrieval.scope import ScopeConfig, ScopeModel, train_scope
from retrieval.scope_data import NEGATIVE_KINDS, ScopeDataConfig, ScopePair, mix, scope_pairs
from retrieval.store import EditStore, open_client

SUBJECTS = ["Ada Lovelace", "Miles Davis", "Frida Kahlo", "Alan Turing", "Marie Curie", "Nelson Mandela"]


def tiny_pairs() -> list[ScopePair]:
    """Each subject's capital-of edit against its capital questions (pass) and its language questions (no pass):
    the same subject and frame, only the relation word differs, as in the hard negatives."""
    pairs = []
    for s in SUBJECTS:
        edit = f"The capital of {s} is"
        pairs += [ScopePair(f"What is the capital of {s}?", edit, True, "paraphrase", s),
                  ScopePair(edit, edit, True, "prompt", s),
                  ScopePair(f"What is the language of {s}?", edit, False, "other_relation", s),
                  ScopePair(f"The language of {s} is", edit, False, "other_relation", s)]
    return pairs


@pytest.fixture(scope="module")
def tiny_scope(tiny_encoder, tmp_path_factory):
    pairs = tiny_pairs()
    cfg = ScopeConfig(base=str(tiny_encoder), max_steps=120, batch_size=8, learning_rate=1e-3, warmup_ratio=0.0,
                      mark_subject=True)
    return train_scope(pairs, tmp_path_factory.mktemp("scope") / "model", cfg, progress=False)


def test_scope_model_trained_on_tiny_pairs_separates_them(tiny_scope):
    pairs = tiny_pairs()
    p = tiny_scope.probabilities([(x.question, x.edit_prompt) for x in pairs], [x.subject for x in pairs])
    labels = np.array([x.label for x in pairs])
    assert tiny_scope.accuracy(pairs) == 1.0
    assert p[labels].min() > p[~labels].max()  # a constant model scores both alike and fails here
    assert tiny_scope.info.pairs == len(pairs) and tiny_scope.info.mix == {"prompt": 6, "paraphrase": 6,
                                                                          "other_relation": 12}


def test_a_store_decides_with_its_scope_model_and_records_it(tiny_scope, tmp_path):
    ada = SUBJECTS[0]
    capital = Edit(subject=ada, prompt=f"The capital of {ada} is", target_new="Goa")
    store = EditStore.open(tmp_path / "store", embedder=Embedder())
    store.add([capital], progress=False)
    assert store.search(f"What is the language of {ada}?")  # the gate passes it: same subject, same frame
    store.set_scope(tiny_scope)
    assert [h.edit.id for h in store.search(f"What is the capital of {ada}?")] == [capital.id]
    assert store.search(f"What is the language of {ada}?") == []
    store.set_gate(store.calibrate(table_cases(20, random.Random(0)), save=False))  # the gate is kept beside it
    reopened = EditStore.open(tmp_path / "store", embedder=Embedder())
    assert reopened.scope is not None and reopened.scope.path == tiny_scope.path.resolve()
    assert "scope model" in reopened.decider()


def test_a_store_without_a_scope_model_falls_back_to_the_gate_and_says_so(tmp_path):
    store = EditStore(open_client(), "no-scope", Embedder())
    store.add([Edit(subject="Ada Lovelace", prompt="The capital of Ada Lovelace is", target_new="Goa")],
              progress=False)
    assert store.scope is None and "fallback: no scope model" in store.decider()
    assert store.search("What is the capital of Ada Lovelace?")  # the gate decides


def test_scope_pairs_hold_every_kind_and_hard_negatives_name_the_subject():
    cases = table_cases(60, random.Random(0))
    pairs = scope_pairs([cases[:30]], cases[30:], ScopeDataConfig(noun_edits=30))
    counts = mix(pairs)
    assert set(NEGATIVE_KINDS) <= set(counts) and counts["multi_hop"] and counts["relation_noun"]
    by_prompt = {c.edit.prompt: c.edit.subject for c in cases}
    hard = [p for p in pairs if p.kind == "other_relation" and p.edit_prompt in by_prompt]
    assert hard and all(by_prompt[p.edit_prompt] in p.question for p in hard)
    assert not [p for p in pairs if p.label and p.kind in NEGATIVE_KINDS]


def test_near_relation_negatives_come_from_the_nouns_nearest_in_meaning():
    from retrieval.scope_data import nearest_nouns, other_nouns, relation_nouns

    father = next(e for e in relation_nouns() if e["noun"] == "father")
    assert "mother" in [e["noun"] for e in nearest_nouns("father")[:3]]
    rng = random.Random(0)
    near = [other_nouns(father, set(), ScopeDataConfig(near_relations=2), rng) for _ in range(50)]
    plain = [other_nouns(father, set(), ScopeDataConfig(), rng) for _ in range(50)]
    assert all(len(x) == 4 and father not in x for x in near + plain)
    family = {"mother", "child", "sibling", "spouse", "family", "owner"}

    def share(draws):  # of the three same-subject negatives, the share about the edit's near relations
        return sum(len({e["noun"] for e in x[:3]} & family) for x in draws) / (3 * len(draws))

    assert share(near) >= 2 / 3 > 0.3 > share(plain)


def test_marked_pairs_stand_one_token_for_the_subject_in_both_texts_and_name_it_after_the_edit():
    from retrieval.scope import SUBJECT_MARK, marked_pair

    question, edit = marked_pair("The name of the country which 1549 mikko is associated with is",
                                 "1549 Mikko follows", "1549 Mikko")
    assert question == f"The name of the country which {SUBJECT_MARK} is associated with is"
    assert edit == f"{SUBJECT_MARK} follows | 1549 Mikko"
    # whole words only: another name that contains it, an alias or another subject stays as written
    assert marked_pair("Parisian food is", "Paris is in", "Paris")[0] == "Parisian food is"
    assert marked_pair("The mother tongue of Léon Blum is", "The mother tongue of Danielle Darrieux is",
                       "Danielle Darrieux") == ("The mother tongue of Léon Blum is",
                                                f"The mother tongue of {SUBJECT_MARK} is | Danielle Darrieux")


def test_a_subject_marked_model_scores_the_marked_texts_and_refuses_pairs_without_subjects(tiny_scope):
    import json
    import shutil

    from retrieval.scope import marked_pair

    assert tiny_scope.info.inputs == "subject_marked"
    pairs, subjects = [(x.question, x.edit_prompt) for x in tiny_pairs()], [x.subject for x in tiny_pairs()]
    with pytest.raises(ValueError, match="pass one subject per pair"):
        tiny_scope.probabilities(pairs)
    plain = tiny_scope.path.parent / "plain-reader"  # the same weights, told to read the texts as they are
    shutil.copytree(tiny_scope.path, plain)
    meta = json.loads((plain / "scope.json").read_text())
    (plain / "scope.json").write_text(json.dumps({**meta, "inputs": "plain"}))
    reader = ScopeModel(plain)
    marked = [marked_pair(q, e, s) for (q, e), s in zip(pairs, subjects)]
    assert np.abs(reader.probabilities(marked) - tiny_scope.probabilities(pairs, subjects)).max() < 1e-6
    assert np.abs(reader.probabilities(pairs) - tiny_scope.probabilities(pairs, subjects)).max() > 1e-5


def test_a_failed_training_leaves_nothing_at_the_target(tmp_path, monkeypatch, tiny_encoder):
    def broken(*args, **kwargs):
        raise RuntimeError("interrupted")

    monkeypatch.setattr(scope_module, "fit_cross_encoder", broken)
    with pytest.raises(RuntimeError):
        train_scope(tiny_pairs(), tmp_path / "model", ScopeConfig(base=str(tiny_encoder)), progress=False)
    assert list(tmp_path.iterdir()) == []


def test_a_folder_without_scope_json_is_refused_with_the_fix(tmp_path):
    from lte.core.errors import InputFileError

    with pytest.raises(InputFileError, match="lte scope train"):
        ScopeModel(tmp_path)


def test_on_the_cpu_onnx_runtime_scores_the_scope_model_as_pytorch_does(tiny_scope, tmp_path):
    torch_model = ScopeModel(tiny_scope.path, backend="torch")
    pairs = [(x.question, x.edit_prompt) for x in tiny_pairs()]
    subjects = [x.subject for x in tiny_pairs()]
    assert tiny_scope.backend == "onnx" and tiny_scope.onnx is not None and torch_model.onnx is None
    assert list(tiny_scope.path.glob(f"model.{tiny_scope.identity}.onnx"))
    onnx_p, torch_p = tiny_scope.probabilities(pairs, subjects), torch_model.probabilities(pairs, subjects)
    assert np.abs(onnx_p - torch_p).max() < 1e-4 and "onnx" in tiny_scope.describe()
    assert tiny_scope.identity == torch_model.identity  # the same weights decide alike on either backend


def test_a_scope_model_that_cannot_be_exported_is_scored_by_pytorch(tiny_scope, tmp_path, monkeypatch, caplog):
    import shutil

    from retrieval import onnx_encoder

    def refused(module, tokenizer, path):
        raise RuntimeError("unsupported operator")

    copy = tmp_path / "copy"
    shutil.copytree(tiny_scope.path, copy, ignore=shutil.ignore_patterns("*.onnx"))
    monkeypatch.setattr(onnx_encoder, "export_onnx", refused)
    model = ScopeModel(copy)
    assert model.backend == "torch" and "unsupported operator" in caplog.text and "scoring with PyTorch" in caplog.text
    assert not list(copy.glob("*.onnx"))
    pairs = [(x.question, x.edit_prompt) for x in tiny_pairs()]
    subjects = [x.subject for x in tiny_pairs()]
    assert np.abs(model.probabilities(pairs, subjects) - tiny_scope.probabilities(pairs, subjects)).max() < 1e-4


def test_an_unknown_backend_is_refused_naming_the_file(tiny_scope):
    from lte.core.errors import InputFileError

    with pytest.raises(InputFileError, match="scope.json: backend 'tensorrt'"):
        ScopeModel(tiny_scope.path, backend="tensorrt")


def test_lte_finds_the_scope_model_next_to_the_model_and_an_explicit_gate_or_none_turns_it_off(tiny, tiny_scope,
                                                                                              tmp_path):
    import shutil

    from lte.core.settings import Settings
    from lte.method.editor import LTEConfig, LTEEditor
    from retrieval.gate import UNFITTED

    shutil.copytree(tiny_scope.path, tmp_path / "scope")
    settings = Settings(home=tmp_path / "home", model=str(tmp_path))
    editor = LTEEditor.from_config(settings, tiny)
    assert editor.store.scope.path == tmp_path / "scope"
    assert editor.stats()["scope"]["model"] == tiny_scope.identity
    assert LTEEditor.from_config(settings, tiny, LTEConfig(scope="none")).store.scope is None
    UNFITTED.save(tmp_path / "gate-explicit.json")
    gated = LTEEditor.from_config(settings, tiny, LTEConfig(gate=str(tmp_path / "gate-explicit.json")))
    assert gated.store.scope is None and "gate" in gated.stats()
    assert LTEEditor.from_config(Settings(home=tmp_path / "home"), tiny).store.scope is None


def test_calibrate_fine_tunes_the_stores_scope_model_and_falls_back_to_the_gate_without_one(tiny_scope, tmp_path,
                                                                                          capsys):
    from lte.cli import main

    bare = str(tmp_path / "bare")
    assert main(["--store", bare, "edit", "calibrate", "--tables", "10", "--dry-run"]) == 0
    assert "no scope model" in capsys.readouterr().out  # the fallback says so, and fits the gate
    store = str(tmp_path / "store")
    EditStore.open(tmp_path / "store").set_scope(tiny_scope)
    assert main(["--store", store, "edit", "calibrate", "--tables", "10"]) == 0
    assert "scope model fine-tuned on" in capsys.readouterr().out
    tuned = EditStore.open(tmp_path / "store").scope
    assert tuned.path == (tmp_path / "store" / "scope-edits").resolve()
    assert tuned.info.fine_tuned_from == str(tiny_scope.path) and tuned.identity != tiny_scope.identity
    assert tuned.info.inputs == tiny_scope.info.inputs == "subject_marked"  # fine-tuning keeps what the model reads
