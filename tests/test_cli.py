import json
import subprocess
import sys

import pytest

from lte.cli import main

EDITS = [{"subject": "The Space Needle", "prompt": "The Space Needle is located in", "target_new": "Goa"},
         {"subject": "The Eiffel Tower", "prompt": "The Eiffel Tower is located in", "target_new": "Rome"}]


def write_jsonl(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def test_help_lists_every_subcommand():
    result = subprocess.run([sys.executable, "-m", "lte.cli", "--help"], capture_output=True, text=True, check=True)
    for command in ("align", "ask", "edit", "eval", "serve", "bench"):
        assert command in result.stdout


def test_unknown_and_incomplete_subcommands_say_so(capsys):
    assert main(["edit"]) == 2
    assert "add" in capsys.readouterr().out  # the group's help, listing its actions
    with pytest.raises(SystemExit):
        main(["frobnicate"])
    assert "invalid choice: 'frobnicate'" in capsys.readouterr().err


def test_edit_add_count_search_rm_and_idempotence(tmp_path, capsys):
    store = str(tmp_path / "store")
    path = write_jsonl(tmp_path / "edits.jsonl", EDITS)
    assert main(["--store", store, "edit", "add", str(path)]) == 0
    assert main(["--store", store, "edit", "add", str(path)]) == 0
    assert "added 0, already stored 2" in capsys.readouterr().out
    main(["--store", store, "edit", "count"])
    assert capsys.readouterr().out.strip() == "2"
    main(["--store", store, "edit", "search", "Where is the Space Needle?"])
    deciding, first = capsys.readouterr().out.splitlines()[:2]
    assert deciding.startswith("deciding: relevance gate (fallback: no scope model") and "Goa" in first
    main(["--store", store, "edit", "list"])
    edit_id = capsys.readouterr().out.split()[0]
    assert main(["--store", store, "edit", "rm", edit_id]) == 0
    assert main(["--store", store, "edit", "show", edit_id]) == 2
    assert f"no edit with id {edit_id}" in capsys.readouterr().err


def test_store_comes_from_the_environment(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("LTE_STORE", str(tmp_path / "env-store"))
    main(["edit", "add", str(write_jsonl(tmp_path / "e.jsonl", EDITS[:1]))])
    capsys.readouterr()
    main(["--store", str(tmp_path / "env-store"), "edit", "count"])
    assert capsys.readouterr().out.strip() == "1"


def test_a_file_with_one_broken_line_is_refused_whole(tmp_path, capsys):
    store = str(tmp_path / "store")
    bad = write_jsonl(tmp_path / "bad.jsonl", EDITS + [{"subject": "X", "prompt": "X is in"}])
    assert main(["--store", store, "edit", "add", str(bad)]) == 2
    assert "bad.jsonl:3: field 'target_new'" in capsys.readouterr().err
    main(["--store", store, "edit", "count"])
    assert capsys.readouterr().out.strip() == "0"


def test_eval_writes_the_report(tmp_path, capsys):
    cases = [dict(e, paraphrases=[f"Where is {e['subject']}?"], locality=[{"prompt": "The capital of Peru is"}])
             for e in EDITS]
    data = write_jsonl(tmp_path / "cases.jsonl", cases)
    out = tmp_path / "report.json"
    assert main(["--model", "tiny-random", "eval", "--editor", "context", "--dataset", str(data), "--mode", "batch",
                 "--out", str(out), "--no-progress", "--fluency-cases", "1", "--max-new-tokens", "3"]) == 0
    report = json.loads(out.read_text())
    assert report["editor"] == "context" and report["n_cases"] == 2
    assert set(report["metrics"]) >= {"reliability", "generalization", "locality"}
    assert "reliability" in capsys.readouterr().out


def test_missing_model_is_a_clear_error(capsys, tmp_path):
    assert main(["--model", str(tmp_path / "nope.gguf"), "ask", "hi"]) == 2
    assert "no such file" in capsys.readouterr().err


@pytest.mark.parametrize("method", ["ke", "mend"])
def test_train_takes_config_fields_and_refuses_unknown_ones(tmp_path, capsys, method):
    out = tmp_path / f"{method}.pt"
    common = ["--model", "tiny-random", "--home", str(tmp_path / "home"), "train", method, "--out", str(out)]
    assert main(common + ["--set", "lambda_lrr=0.1"]) == 2
    assert "unknown option(s) lambda_lrr" in capsys.readouterr().err and not out.exists()
    assert main(common + ["--steps", "2", "--dev", "2", "--set", "eval_every=1", "--set", "unrelated=1"]) == 0
    assert [p["step"] for p in json.loads(out.with_suffix(".curve.json").read_text())] == [1, 2]


def test_eval_options_are_checked_before_anything_loads(tmp_path, capsys, monkeypatch):
    import lte.commands.evaluate as evaluate

    monkeypatch.setattr(evaluate, "load_model", lambda *a, **k: pytest.fail("the model was loaded"))
    data = str(write_jsonl(tmp_path / "cases.jsonl", EDITS))
    for options, message in ((["--set", "layer=six"], "rome: option 'layer': expected int, got 'six'"),
                             (["--set", "layr=6"], "rome: unknown option(s) layr; known: layer")):
        assert main(["eval", "--editor", "rome", "--dataset", data, *options]) == 2
        assert message in capsys.readouterr().err
    assert main(["eval", "--editor", "ke", "--dataset", data, "--set", "hidden=8"]) == 2
    assert "option 'hidden' cannot be set here: fixed by the trained checkpoint" in capsys.readouterr().err
    assert main(["eval", "--editor", "none", "--dataset", data, "--set", "k=5"]) == 2
    assert "it takes no options" in capsys.readouterr().err


def test_user_errors_are_one_line_unless_debug_and_bugs_keep_their_trace(tmp_path, capsys, monkeypatch):
    assert main(["edit", "show", "nope"]) == 2
    assert capsys.readouterr().err == "lte: error: no edit with id nope\n"
    assert main(["--debug", "edit", "show", "nope"]) == 2
    assert "Traceback" in capsys.readouterr().err
    import lte.commands.edit as edit

    monkeypatch.setattr(edit, "open_store", lambda settings: 1 / 0)  # a bug, not a user error
    with pytest.raises(ZeroDivisionError):
        main(["edit", "count"])


def test_known_dataset_names_are_read_from_the_datasets_folder(tmp_path, monkeypatch):
    from lte.core.catalog import KNOWN, dataset_path
    from lte.core.errors import InputError
    from lte.core.settings import Settings

    monkeypatch.setenv("LTE_DATASETS", str(tmp_path / "data"))
    assert dataset_path("zsre", Settings.from_env()) == ("zsre", tmp_path / "data" / KNOWN["zsre"])
    assert dataset_path("mine=x.json", Settings.from_env()) == ("mine", __import__("pathlib").Path("x.json"))
    monkeypatch.delenv("LTE_DATASETS")
    monkeypatch.chdir(tmp_path)  # no shared/datasets here or beside
    with pytest.raises(InputError, match="LTE_DATASETS or --datasets-dir"):
        dataset_path("zsre", Settings.from_env())


def test_training_files_resolve_by_name_file_name_or_path_and_say_where_to_get_them(tmp_path, monkeypatch):
    from lte.core.catalog import TRAINING, data_files
    from lte.core.errors import InputError
    from lte.core.settings import Settings

    folder = tmp_path / "data"
    for relative in TRAINING.values():
        (folder / relative).parent.mkdir(parents=True, exist_ok=True)
        (folder / relative).write_text("[]")
    own = write_jsonl(tmp_path / "mine.jsonl", EDITS)
    monkeypatch.setenv("LTE_DATASETS", str(folder))
    settings = Settings.from_env()
    assert data_files(["counterfact-train", "zsre_mend_train-1k.json", str(own), "owner/hub-set"], settings) == [
        str(folder / TRAINING["counterfact-train"]), str(folder / TRAINING["zsre-train"]), str(own), "owner/hub-set"]
    (folder / TRAINING["zsre-train"]).unlink()
    with pytest.raises(InputError, match="zsre_mend_train-1k.json was not found under the datasets folder.*curl"):
        data_files(["zsre-train"], settings)
    with pytest.raises(InputError, match="--data typo.json: no such file .*known names: counterfact-train"):
        data_files(["typo.json"], settings)
    assert main(["align", "--data", "typo.json"]) == 2  # refused before any model loads


def test_serving_beyond_loopback_without_a_key_is_refused(capsys, monkeypatch):
    import lte.commands.serve as serve

    monkeypatch.setattr(serve, "load_model", lambda *a, **k: pytest.fail("the model was loaded"))
    assert main(["serve", "--host", "0.0.0.0"]) == 2
    assert "--host 0.0.0.0 without --api-key" in capsys.readouterr().err


def test_the_cli_reference_is_generated_from_the_parsers_and_current():
    from pathlib import Path

    from lte.cli_reference import reference

    text = reference()
    assert "## `lte edit calibrate`" in text and "usage: lte align" in text
    current = (Path(__file__).resolve().parents[1] / "docs" / "cli.md").read_text()
    assert current == text, "docs/cli.md is stale: python -m lte.cli_reference > docs/cli.md"
