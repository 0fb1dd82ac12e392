"""The general-ability probe: an editor that leaves unrelated prompts alone keeps agreement 1 and the unedited
perplexity; one that changes every prompt loses both; prompts about an edited subject are not probed."""

import pytest

from lte.core import general
from lte.core.editor import OracleContextEditor, UneditedEditor
from lte.core.general import general_reference, passages, probe_prompts, score_general, unrelated
from lte.core.harness import EvalConfig, evaluate
from lte.core.schema import Edit, EditCase


class FactEverywhere(OracleContextEditor):
    """Writes one unrelated fact into every prompt: what an editor that touches everything does."""

    name = "fact-everywhere"

    def facts_for(self, queries):
        return [["The Space Needle is located in Goa. Every answer is Goa."] for _ in queries]


def test_the_shipped_probe_is_ordinary_prompts_and_a_passage():
    prompts = probe_prompts()
    assert len(prompts) == len(set(prompts)) >= 190
    assert len(passages()) == 12 and all(rest for _, rest in passages())


def test_prompts_naming_an_edited_subject_are_left_out():
    prompts = ["What is the capital of France?", "Who painted the Mona Lisa?", "Where do the French live?"]
    assert unrelated(prompts, ["france", "Mona"]) == ["Where do the French live?"]
    assert unrelated(prompts, []) == prompts


@pytest.fixture
def cloze_probe(monkeypatch):
    """The tiny random model answers chat questions with blank lines only; it continues clozes with words."""
    prompts = [f"The capital of land {i} is" for i in range(6)] + ["What is the capital of France is"]
    monkeypatch.setattr(general, "probe_prompts", lambda: prompts)


def test_unedited_model_agrees_with_itself_and_an_editor_that_touches_everything_does_not(tiny, cloze_probe):
    reference = general_reference(UneditedEditor(tiny), max_new_tokens=4)
    assert reference.answers and reference.perplexity > 1
    same = score_general(UneditedEditor(tiny), reference, [], max_new_tokens=4)
    assert same["agreement"] == 1.0 and same["token_acc"] == 1.0
    assert same["perplexity"] == same["perplexity_unedited"] == reference.perplexity
    damaged = score_general(FactEverywhere(tiny), reference, [], max_new_tokens=4)
    assert damaged["perplexity"] != reference.perplexity  # the tiny model repeats one word either way
    assert damaged["n"] == same["n"] == len(reference.answers)


def test_batch_runs_end_with_the_probe_and_leave_out_the_edited_subjects(tiny, cloze_probe):
    reference = general_reference(UneditedEditor(tiny), max_new_tokens=3)
    edit = Edit(subject="France", prompt="The capital of France is", target_new="Goa", target_true="Paris")
    cfg = EvalConfig(mode="batch", max_new_tokens=3, fluency_cases=0, progress=False)
    report = evaluate(UneditedEditor(tiny), [EditCase.from_edits("0", [edit])], UneditedEditor(tiny), cfg,
                      general=reference)
    general = report["metrics"]["general"]
    about_france = [p for p in reference.answers if "France" in p]
    assert about_france and general["n"] == len(reference.answers) - len(about_france)
    assert general["agreement"] == 1.0
