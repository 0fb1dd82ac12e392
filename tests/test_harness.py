import json

import pytest

from lte.editor import OracleContextEditor, UneditedEditor
from lte.harness import EvalConfig, evaluate, format_table
from lte.schema import Edit, EditCase, Probe


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
    assert set(metrics) == {"reliability", "generalization", "locality", "fluency"}  # no portability probes
    assert metrics["reliability"]["n"] == 3 and "prob_win" in metrics["reliability"]
    # The unedited model agrees with itself: locality is exactly 1 in every protocol.
    assert metrics["locality"]["token_acc"] == 1.0 and metrics["locality"]["gen_acc"] == 1.0
    assert set(report["timing"]) == {"edit_s", "query_s", "peak_rss_mb"}
    assert ("metrics_immediate" in report) == (mode == "sequential")
    assert report.get("editor_stats", {}) == {}  # the unedited model has nothing to report
    assert "reliability" in format_table(report)


def test_oracle_puts_the_gold_edit_in_the_prompt(tiny):
    from lte.editor import Query

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
    from lte.harness import locality_references

    case = make_cases(1)[0]
    cases = [EditCase.from_edits("0", case.edits, locality=[Probe(f"Prompt {i}") for i in range(4)])]
    refs = locality_references(ScriptedReference([" Paris.\nMore", ":", " . ", ""]), cases, EvalConfig())
    # ':' can never be matched (matching strips punctuation), so it is not a probe for anyone.
    assert refs == {(0, 0): " Paris."}


def test_bad_mode_is_rejected():
    with pytest.raises(ValueError, match="mode 'parallel'"):
        EvalConfig(mode="parallel")
