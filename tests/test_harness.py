import json

import pytest

from lte.core.editor import OracleContextEditor, UneditedEditor
from lte.core.harness import EvalConfig, evaluate, format_table
from lte.core.schema import Edit, EditCase, Probe


def make_cases(n=3):
    cases = []
    for i in range(n):
        edit = Edit(subject=f"Tower {i}", prompt=f"Tower {i} is located in", target_new="Goa", target_true="Paris")
        cases.append(EditCase.from_edits(str(i), [edit], paraphrases=[Probe(f"Where is Tower {i}?", ("Goa",))],
                                         locality=[Probe(f"The capital of land {i} is")]))
    return cases


@pytest.mark.parametrize("mode", ["single", "batch", "sequential"])
def test_report_shape_and_locality_of_the_unedited_model_is_perfect(tiny, mode):
    cfg = EvalConfig(mode=mode, max_new_tokens=4, fluency_cases=2, fluency_tokens=8, progress=False)
    report = evaluate(UneditedEditor(tiny), make_cases(), UneditedEditor(tiny), cfg, dataset="toy")
    json.dumps(report)
    assert set(report) >= {"editor", "model", "dataset", "mode", "n_cases", "metrics", "timing"}
    metrics = report["metrics"]
    # No portability probes; the general probe runs where edits accumulate (not in single mode).
    assert set(metrics) == {"reliability", "generalization", "locality", "fluency"} | (
        set() if mode == "single" else {"general"})
    assert metrics["reliability"]["n"] == 3 and "prob_win" in metrics["reliability"]
    # The unedited model agrees with itself: locality is exactly 1 in every protocol.
    assert metrics["locality"]["token_acc"] == 1.0 and metrics["locality"]["gen_acc"] == 1.0
    assert set(report["timing"]) == {"edit_s", "query_s", "peak_rss_mb"}
    assert ("metrics_immediate" in report) == (mode == "sequential")
    assert report.get("editor_stats", {}) == {}  # the unedited model has nothing to report
    assert "reliability" in format_table(report)


def test_oracle_puts_the_gold_edit_in_the_prompt(tiny):
    from lte.core.editor import Query

    case = make_cases(1)[0]
    [text] = OracleContextEditor(tiny).render([Query(case.edit.prompt, case.edits)])
    assert case.edit.statement in text
    [plain] = UneditedEditor(tiny).render([Query(case.edit.prompt, case.edits)])
    assert case.edit.statement not in plain


def test_limit_and_reproducibility(tiny):
    cfg = EvalConfig(mode="batch", limit=2, max_new_tokens=3, fluency_cases=0, progress=False)
    a = evaluate(OracleContextEditor(tiny), make_cases(), UneditedEditor(tiny), cfg)
    b = evaluate(OracleContextEditor(tiny), make_cases(), UneditedEditor(tiny), cfg)
    assert a["n_cases"] == 2 and a["metrics"] == b["metrics"]


class ScriptedReference(UneditedEditor):
    """Answers every prompt from a fixed list, to check which base answers become locality references."""

    def __init__(self, answers):
        self.answers = answers

    def generate(self, queries, max_new_tokens):
        return self.answers[: len(queries)]


def test_locality_references_without_words_are_dropped():
    from lte.core.harness import locality_references

    case = make_cases(1)[0]
    cases = [EditCase.from_edits("0", case.edits, locality=[Probe(f"Prompt {i}") for i in range(4)])]
    refs = locality_references(ScriptedReference([" Paris.\nMore", ":", " . ", ""]), cases, EvalConfig())
    # ':' can never be matched (matching strips punctuation), so it is not a probe for anyone.
    assert refs == {(0, 0): " Paris."}


def test_bad_mode_is_rejected():
    with pytest.raises(ValueError, match="mode 'parallel'"):
        EvalConfig(mode="parallel")


class RecordingEditor(UneditedEditor):
    """The unedited model, remembering what it was asked to apply and which prompts it answered."""

    name = "recording"

    def __init__(self, loaded):
        super().__init__(loaded)
        self.applied, self.prompts = [], []

    def apply(self, edits):
        self.applied.append([e.id for e in edits])

    def score(self, queries, targets):
        self.prompts += [q.prompt for q in queries]
        return super().score(queries, targets)


@pytest.mark.parametrize("mode", ["batch", "sequential"])
def test_score_sample_applies_every_edit_but_scores_a_seeded_sample(tiny, mode):
    cases = make_cases(6)
    cfg = EvalConfig(mode=mode, score_sample=2, max_new_tokens=2, fluency_cases=0, progress=False)
    editor = RecordingEditor(tiny)
    report = evaluate(editor, cases, UneditedEditor(tiny), cfg)
    assert sum(len(ids) for ids in editor.applied) == 6  # all six edits applied
    scored = cfg.scored(6)
    assert len(scored) == 2 and scored == EvalConfig(score_sample=2).scored(6)  # same seed, same sample
    assert report["scored_cases"] == 2 and report["n_cases"] == 6
    assert report["metrics"]["reliability"]["n"] == 2 and report["metrics"]["locality"]["n"] <= 2
    assert {p for p in editor.prompts if p.endswith("located in")} == {cases[i].edit.prompt for i in scored}


@pytest.mark.parametrize("mode", ["batch", "sequential"])
def test_extra_edits_are_applied_first_and_never_scored(tiny, mode):
    cases = make_cases(2)
    extra = [Edit(subject=f"Bridge {i}", prompt=f"Bridge {i} crosses the", target_new="Nile") for i in range(3)]
    editor = RecordingEditor(tiny)
    cfg = EvalConfig(mode=mode, max_new_tokens=2, fluency_cases=0, progress=False)
    report = evaluate(editor, cases, UneditedEditor(tiny), cfg, extra_edits=extra)
    assert editor.applied[0][:3] == [e.id for e in extra]
    assert report["extra_edits"] == 3 and report["metrics"]["reliability"]["n"] == 2
    assert not any("Bridge" in p for p in editor.prompts)


def test_extra_edits_are_refused_in_single_mode(tiny):
    extra = [Edit(subject="Bridge", prompt="Bridge crosses the", target_new="Nile")]
    with pytest.raises(ValueError, match="batch or sequential"):
        evaluate(UneditedEditor(tiny), make_cases(1), UneditedEditor(tiny),
                 EvalConfig(mode="single", progress=False), extra_edits=extra)


def test_report_records_the_models_identity(tiny):
    report = evaluate(UneditedEditor(tiny), make_cases(1), UneditedEditor(tiny),
                      EvalConfig(mode="batch", max_new_tokens=2, fluency_cases=0, progress=False))
    assert report["model_identity"]["spec"] == "tiny-random" and report["harness_version"] == 3
    assert report["placement"] == "cpu float32"  # where the figures were made, read off the model's weights
    assert "retrieval" not in report  # the unedited model retrieves nothing


def test_model_identity_hashes_the_weights(tmp_path):
    from lte.core.models import model_identity

    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "model.safetensors").write_bytes(b"weights-a")
    first = model_identity(str(tmp_path))
    assert first["path"] == str(tmp_path.resolve()) and len(first["sha256"]) == 16
    (tmp_path / "model.safetensors").write_bytes(b"weights-b")
    assert model_identity(str(tmp_path))["sha256"] != first["sha256"]


class FixedRetrieval(OracleContextEditor):
    """Passes the gold edit to every prompt that names 'Tower 0', nothing to the others."""

    name = "fixed"

    def passed_edits(self, queries):
        return [[e.id for e in q.case_edits] if "Tower 0" in q.prompt or "land 0" in q.prompt else []
                for q in queries]


def test_retrieval_precision_and_recall_are_reported_for_retrieving_editors(tiny):
    cfg = EvalConfig(mode="batch", max_new_tokens=2, fluency_cases=0, progress=False)
    report = evaluate(FixedRetrieval(tiny), make_cases(2), UneditedEditor(tiny), cfg)
    retrieval = report["retrieval"]
    # Case 0: rewrite and paraphrase get their edit (2 true passes), its locality probe gets one too (false pass);
    # case 1 gets nothing: recall 2 of 4, precision 2 of 3.
    assert retrieval["recall"] == 0.5 and retrieval["precision"] == round(2 / 3, 4)
    assert retrieval["facets"]["reliability"]["rate"] == 0.5
    if "locality" in retrieval["facets"]:
        assert retrieval["facets"]["locality"]["rate"] <= 0.5
    assert "retrieval: precision" in format_table(report)


class PrefersGoa(UneditedEditor):
    """Scores 'Goa' above every other answer on every prompt: an edit that bled into its neighbours."""

    name = "prefers-goa"

    def score(self, queries, targets):
        from lte.core.scoring import TargetScore

        return [TargetScore((-1.0 if t == "Goa" else -5.0,), (t == "Goa",)) for t in targets]


def neighbour_case():
    edit = Edit(subject="Tower 0", prompt="Tower 0 is located in", target_new="Goa", target_true="Paris")
    return EditCase.from_edits("0", [edit], paraphrases=[Probe("Where is Tower 0?", ("Goa",))],
                               locality=[Probe("Tower 9 is located in", ("Paris",)), Probe("Who wrote it?", ("Ann",))])


def test_papers_metrics_compare_the_new_and_the_true_object_in_both_directions(tiny):
    from lte.core.harness import case_items

    items = case_items(neighbour_case(), 0, {(0, 0): " Paris", (0, 1): " Ann"})
    rivals = {(item.facet, item.query.prompt): (item.rivals, item.gold) for item in items}
    assert rivals["reliability", "Tower 0 is located in"] == (("Goa", "Paris"), None)  # efficacy score
    assert rivals["generalization", "Where is Tower 0?"] == (("Goa", "Paris"), None)  # paraphrase score
    assert rivals["locality", "Tower 9 is located in"] == (("Paris", "Goa"), "Paris")  # neighbourhood score
    assert rivals["locality", "Who wrote it?"] == (None, "Ann")  # no neighbourhood pair, but a dataset answer
    cfg = EvalConfig(mode="batch", max_new_tokens=2, fluency_cases=0, progress=False, general=False)
    metrics = evaluate(PrefersGoa(tiny), [neighbour_case()], UneditedEditor(tiny), cfg)["metrics"]
    assert metrics["reliability"]["prob_win"] == 1.0 and metrics["generalization"]["prob_win"] == 1.0
    locality = metrics["locality"]
    assert locality["prob_win"] == 0.0  # 'Goa' beat 'Paris' on the neighbour: the edit leaked
    assert "answer_token_acc" in locality and "general" not in metrics
