"""The editor contract, run against every editor in the registry (PEFT-style: one suite, every method), and the
harness's side of it, checked with a recording fake editor.

Every registered editor, on the tiny model: `apply` raises the edited targets' scores (except `none`, the floor,
and `context`, the oracle that reads the case's edits instead); `restore` brings every score and answer back
exactly, after one or several `apply` calls and after a harness run in every mode; `stats()` is JSON; only the
oracle reads `Query.case_edits`. A new editor must add its tiny-model options to TINY_OPTIONS.
"""

from __future__ import annotations

import json
from collections.abc import Sequence

import pytest
import torch

from lte.core.editor import Editor, Query, UneditedEditor
from lte.core.harness import MODES, EvalConfig, evaluate
from lte.core.schema import Edit, EditCase, Probe
from lte.core.scoring import TargetScore
from lte.core.settings import Settings
from lte.registry import build_editor, editor_config, editor_names

# Options that make each editor fast on the tiny model (the defaults are sized for the real one).
TINY_OPTIONS = {
    "none": {},
    "context": {},
    "lte": {},
    "lte-unaligned": {},
    "rome": {"layer": 1, "cov_tokens": 600, "prefixes": 2, "prefix_tokens": 4, "v_steps": 10, "clamp_norm": 50.0},
    "grace": {"layer": 2, "value_steps": 40},
    "ke": {},  # checkpoint: the tiny one trained by the `ke_trained` fixture
    "ft": {"layers": [1, 2], "steps": 10, "lr": 0.01, "norm_bound": 0.05},
    "memoe": {"layer": 1, "steps": 15, "lr": 0.02, "retain_texts": 2, "retain_tokens": 4},
    "mend": {},  # checkpoint: the tiny one trained by the `mend_trained` fixture
    **{name: {"layers": [1, 2], "cov_tokens": 600, "prefixes": 2, "prefix_tokens": 4, "v_steps": 10}
       for name in ("memit", "emmet", "alphaedit", "coachhook")},
}
NO_EFFECT = {"none", "context"}  # apply changes nothing by design
ORACLES = {"context"}  # reads Query.case_edits
# Editors whose raise a random tiny model cannot show, so here their contract is that apply changes the scores:
# - through the prompt (lte): the tiny model does not read its prompt's facts; the aligned model's raise is measured
#   in RESULTS.md;
# - through the residual stream at the subject (memit, emmet, alphaedit): on the tiny model a target residual of norm
#   19 moves the target's NLL only from 6.09 to 6.05 (attention there is near uniform, so the subject's position
#   barely reaches the answer's); the raise on the default model is tested in test_locate.py (slow).
RAISE_SHOWN_ELSEWHERE = {"lte", "lte-unaligned", "memit", "emmet", "alphaedit", "coachhook"}

EDITS = [
    Edit(subject="The Space Needle", prompt="The Space Needle is located in", target_new="Goa", target_true="Seattle"),
    Edit(subject="Danielle Darrieux", prompt="The mother tongue of Danielle Darrieux is", target_new="Japanese",
         target_true="French"),
    Edit(subject="Michel Rocard", prompt="Michel Rocard is a native speaker of", target_new="German",
         target_true="French"),
]
UNRELATED = [Query("Who wrote Hamlet?"), Query("The capital of France is"), Query("Toyota is owned by")]


def test_every_registered_editor_is_covered():
    assert set(TINY_OPTIONS) == set(editor_names())


@pytest.fixture
def make(tiny, ke_trained, mend_trained, tmp_path):
    """Builds registered editors through the registry, as `lte eval` does; restores each afterwards."""
    built: list[Editor] = []
    checkpoints = {"ke": {"checkpoint": str(ke_trained[0])}, "mend": {"checkpoint": str(mend_trained[0])}}

    def build(name: str) -> Editor:
        options = dict(TINY_OPTIONS[name], **checkpoints.get(name, {}))
        settings = Settings(home=tmp_path / "home", model="tiny-random")
        built.append(build_editor(name, settings, tiny, editor_config(name, options), batch_size=8))
        return built[-1]

    yield build
    for editor in built:
        editor.restore()


def edit_queries(edits: Sequence[Edit], with_case: bool = True) -> list[Query]:
    return [Query(e.prompt, (e,) if with_case else ()) for e in edits]


def snapshot(editor: Editor) -> tuple:
    """Every score and greedy answer the contract compares, on edited and unrelated prompts."""
    queries = edit_queries(EDITS) + UNRELATED
    targets = [e.target_new for e in EDITS] + ["Shakespeare", "Paris", "Toyota"]
    return tuple(editor.score(queries, targets)), tuple(editor.generate(queries, 4))


@pytest.mark.parametrize("name", editor_names())
def test_apply_raises_the_target_and_restore_brings_everything_back_exactly(make, name):
    editor = make(name)
    before = snapshot(editor)
    gains = []
    for edit in EDITS:  # each edit on its own: its target rises, and restore undoes it
        alone = editor.score(edit_queries([edit]), [edit.target_new])[0].mean_logprob  # same batch shape as after
        editor.apply([edit])
        gains.append(editor.score(edit_queries([edit]), [edit.target_new])[0].mean_logprob - alone)
        editor.restore()
        assert snapshot(editor) == before, f"{name}: restore did not bring every score and answer back"
    if name in NO_EFFECT:
        assert gains == [0.0] * len(EDITS)
    elif name in RAISE_SHOWN_ELSEWHERE:
        assert all(gain != 0 for gain in gains), f"{name}: apply left some target's score as it was ({gains})"
    else:
        assert min(gains) > 0, f"{name}: apply did not raise every target (gains {gains})"
    editor.apply(EDITS[:1])
    editor.apply(EDITS[1:])  # several calls: one restore undoes all of them
    editor.restore()
    assert snapshot(editor) == before, f"{name}: restore after two applies did not bring everything back"


@pytest.mark.parametrize("name", editor_names())
def test_stats_are_json_and_only_the_oracle_reads_case_edits(make, name):
    editor = make(name)
    editor.apply(EDITS[:2])
    json.dumps(editor.stats())
    targets = [e.target_new for e in EDITS]
    with_case = editor.score(edit_queries(EDITS), targets)
    without = editor.score(edit_queries(EDITS, with_case=False), targets)
    if name in ORACLES:
        assert with_case != without
    else:
        assert with_case == without, f"{name}: its scores depend on Query.case_edits (only the oracle may read it)"


@pytest.fixture(scope="module")
def tiny_bf16():
    from lte.core.models import load_model

    return load_model("tiny-random", dtype="bfloat16")


@pytest.mark.parametrize("name", editor_names())
def test_every_editor_works_on_a_bfloat16_model(tiny_bf16, ke_trained, mend_trained, tmp_path, name):
    """`--dtype bfloat16` (the GPU default): every editor applies, answers and restores exactly on half-precision
    weights (its own solves and trained parameters keep their precision)."""
    checkpoints = {"ke": {"checkpoint": str(ke_trained[0])}, "mend": {"checkpoint": str(mend_trained[0])}}
    settings = Settings(home=tmp_path / "home", model="tiny-random", dtype="bfloat16")
    editor = build_editor(name, settings, tiny_bf16, editor_config(name, dict(TINY_OPTIONS[name],
                                                                             **checkpoints.get(name, {}))))
    before = snapshot(editor)
    editor.apply(EDITS)
    edited = snapshot(editor)
    editor.restore()
    assert snapshot(editor) == before, f"{name}: restore in bfloat16 did not bring everything back"
    assert (edited == before) == (name in NO_EFFECT)
    assert next(tiny_bf16.model.parameters()).dtype == torch.bfloat16


def contract_cases() -> list[EditCase]:
    return [EditCase.from_edits(str(i), [edit], paraphrases=[Probe(f"Where does {edit.subject} belong?",
                                                                   (edit.target_new,))],
                                locality=[Probe(UNRELATED[i].prompt)]) for i, edit in enumerate(EDITS[:2])]


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("name", editor_names())
def test_every_harness_mode_leaves_the_editor_restored(make, tiny, name, mode):
    editor = make(name)
    before = snapshot(editor)
    cfg = EvalConfig(mode=mode, max_new_tokens=3, fluency_cases=1, fluency_tokens=4, progress=False,
                     edit_batch=2 if mode == "sequential-batch" else None)
    report = evaluate(editor, contract_cases(), UneditedEditor(tiny), cfg, dataset="contract")
    json.dumps(report)
    assert report["editor"] == name and report["metrics"]["reliability"]["n"] == 2
    assert snapshot(editor) == before, f"{name}: not restored after a {mode} run"


# ---------------------------------------------------------------- the harness's side, with a fake editor

class ForgetfulEditor(Editor):
    """Knows only the edits of its latest `apply` (so sequential editing visibly forgets) and logs every call.
    An edited prompt (it names a known subject) is answered with the new target, anything else with 'Paris'."""

    name = "forgetful"

    def __init__(self) -> None:
        self.known: list[Edit] = []
        self.calls: list[str] = []

    @classmethod
    def from_config(cls, settings, loaded, config=None, batch_size=16) -> ForgetfulEditor:
        return cls()

    @property
    def model_name(self) -> str:
        return "fake"

    def answer(self, prompt: str) -> str:
        return next((e.target_new for e in self.known if e.subject in prompt), "Paris")

    def apply(self, edits: Sequence[Edit]) -> None:
        self.calls.append("apply " + ",".join(e.subject.split()[-1] for e in edits))
        self.known = list(edits)

    def restore(self) -> None:
        self.calls.append("restore")
        self.known = []

    def score(self, queries: Sequence[Query], targets: Sequence[str]) -> list[TargetScore]:
        self.log("score")
        hits = [self.answer(q.prompt).strip() == t.strip() for q, t in zip(queries, targets)]
        return [TargetScore((0.0 if hit else -5.0,), (hit,)) for hit in hits]

    def generate(self, queries: Sequence[Query], max_new_tokens: int) -> list[str]:
        self.log("generate")
        return [" " + self.answer(q.prompt) for q in queries]

    def log(self, call: str) -> None:
        if not self.calls or self.calls[-1] != call:  # consecutive calls of one kind collapse into one entry
            self.calls.append(call)


EXPECTED_CALLS = {
    "single": ["apply Needle", "score", "generate", "restore", "apply Darrieux", "score", "generate", "restore",
               "apply Rocard", "score", "generate", "restore"],
    "batch": ["apply Needle,Darrieux,Rocard", "score", "generate", "score", "restore"],
    "sequential": ["apply Needle", "score", "generate", "apply Darrieux", "score", "generate", "apply Rocard",
                   "score", "generate", "score", "generate", "score", "restore"],
    "sequential-batch": ["apply Needle,Darrieux", "score", "generate", "apply Rocard", "score", "generate", "score",
                         "generate", "score", "restore"],  # edit batches of 2
}
# Where edits accumulate, the general probe runs with them applied, before the restore: its answers ("generate",
# collapsed with the scoring's) and its scores against the unedited answers and of the passage ("score").
# Sequential: the fake forgets all but the last edit, so at the end only one case in three holds; right after each
# edit, every one did. Locality prompts name no subject: the fake answers them as the unedited reference does.
EXPECTED_RELIABILITY = {"single": 1.0, "batch": 1.0, "sequential": round(1 / 3, 4), "sequential-batch": round(1 / 3, 4)}


@pytest.mark.parametrize("mode", MODES)
def test_harness_calls_editors_in_order_and_computes_exact_metrics(mode):
    cases = [EditCase.from_edits(str(i), [edit], paraphrases=[Probe(f"Where is {edit.subject}?", (edit.target_new,))],
                                 locality=[Probe("The capital of France is")]) for i, edit in enumerate(EDITS)]
    editor = ForgetfulEditor()
    cfg = EvalConfig(mode=mode, max_new_tokens=3, fluency_cases=0, progress=False,
                     edit_batch=2 if mode == "sequential-batch" else None)
    report = evaluate(editor, cases, ForgetfulEditor(), cfg)
    assert editor.calls == EXPECTED_CALLS[mode]
    metrics = report["metrics"]
    for facet in ("reliability", "generalization"):
        expected = EXPECTED_RELIABILITY[mode]
        assert metrics[facet]["gen_acc"] == expected and metrics[facet]["token_acc"] == expected
    assert metrics["reliability"]["prob_win"] == EXPECTED_RELIABILITY[mode]
    assert metrics["locality"]["gen_acc"] == 1.0 and metrics["locality"]["n"] == 3
    if mode.startswith("sequential"):
        assert report["metrics_immediate"]["reliability"]["gen_acc"] == 1.0
        assert report["metrics_immediate"]["reliability"]["n"] == 3
    else:
        assert "metrics_immediate" not in report
