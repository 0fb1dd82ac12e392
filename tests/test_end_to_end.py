"""End to end on the real default model (marked slow: ~2-3 minutes in all)."""

import json

import pytest

from lte.cli import main

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def default_model():
    from lte.core.models import load_model

    return load_model()


def test_oracle_context_beats_the_unedited_model_on_counterfact(default_model):
    from lte.core.datasets import load_cases
    from lte.core.editor import OracleContextEditor, UneditedEditor
    from lte.core.harness import EvalConfig, evaluate
    from tests.conftest import shared_file

    cases = load_cases(shared_file("counterfact_easyedit/counterfact-val.json"), limit=12)
    cfg = EvalConfig(mode="batch", fluency_cases=0, progress=False)
    reference = UneditedEditor(default_model)
    none = evaluate(UneditedEditor(default_model), cases, reference, cfg)["metrics"]
    context = evaluate(OracleContextEditor(default_model), cases, reference, cfg)["metrics"]
    assert context["reliability"]["gen_acc"] >= none["reliability"]["gen_acc"] + 0.5
    assert none["locality"]["gen_acc"] == 1.0


def test_rome_moves_the_default_model_towards_the_new_target(default_model, isolated_home):
    from baselines.rome import ROMEConfig, ROMEEditor
    from lte.core.editor import Query
    from lte.core.schema import Edit

    edit = Edit(subject="Danielle Darrieux", prompt="The mother tongue of Danielle Darrieux is",
                target_new="English", target_true="French")
    editor = ROMEEditor(default_model, ROMEConfig(cov_tokens=1500), home=isolated_home)
    query = Query(edit.prompt)
    before = editor.score([query, query], ["English", "French"])
    editor.apply([edit])
    after = editor.score([query, query], ["English", "French"])
    editor.restore()
    assert after[0].mean_logprob > before[0].mean_logprob
    assert after[0].mean_logprob > after[1].mean_logprob  # the new target now beats the old one


def test_edit_then_ask_with_the_cli(tmp_path, capsys):
    """The default model is not aligned here (alignment takes ~25 min), and unaligned it often keeps a strong prior
    (the Eiffel Tower stays in Paris) even with the edit in its prompt: the edit is about an entity it has no prior
    for, and a paraphrase is checked for retrieval only."""
    edits = tmp_path / "edits.jsonl"
    edits.write_text(json.dumps({"subject": "The Quintaro Bridge", "prompt": "The Quintaro Bridge is located in",
                                 "target_new": "Lima"}) + "\n")
    store = str(tmp_path / "store")
    assert main(["--store", store, "edit", "add", str(edits)]) == 0
    capsys.readouterr()
    assert main(["--store", store, "ask", "In which city can you walk across the Quintaro Bridge?", "--json"]) == 0
    paraphrase = json.loads(capsys.readouterr().out)
    assert paraphrase["edits"] and "Lima" in paraphrase["edits"][0]["statement"]
    assert main(["--store", store, "ask", "The Quintaro Bridge is located in", "--json"]) == 0
    answer = json.loads(capsys.readouterr().out)
    assert "lima" in answer["answer"].lower()
    assert main(["--store", store, "ask", "What is the capital of Japan?", "--json"]) == 0
    unrelated = json.loads(capsys.readouterr().out)
    assert unrelated["edits"] == [] and "tokyo" in unrelated["answer"].lower()
