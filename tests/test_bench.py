import json

import pytest

import lte.bench.grid as bench
from lte.cli import main
from lte.core.errors import CheckpointError
from lte.core.settings import Settings


def write_cases(path, n=3):
    rows = [{"subject": f"Tower {i}", "prompt": f"Tower {i} is located in", "target_new": "Goa",
             "paraphrases": [f"Where is Tower {i}?"], "locality": [{"prompt": "The capital of Peru is"}]}
            for i in range(n)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_bench_writes_tables_plots_and_resumes_from_cache(tmp_path, monkeypatch, capsys):
    data = write_cases(tmp_path / "toy.jsonl")
    out = tmp_path / "bench"
    args = ["--model", "tiny-random", "bench", "--editors", "none", "context", "ke", "--datasets", f"toy={data}",
            "--n", "1", "2", "--out", str(out), "--results-md", str(tmp_path / "RESULTS.md")]
    assert main(args) == 0
    results = json.loads((out / "results.json").read_text())
    assert {r["editor"] for r in results.values()} == {"none", "context", "ke"}
    assert all("metrics" in r for r in results.values() if r["editor"] != "ke")
    assert "train ke" in results["ke__toy__sequential__1"]["skipped"]  # no checkpoint: marked, not fatal
    report = (tmp_path / "RESULTS.md").read_text()
    assert "Produced by `lte --model tiny-random bench" in report and "| context | toy |" in report
    assert "- models ran on: cpu float32 (4 cells)\n" in report  # the two ke cells were skipped (no checkpoint)
    assert "- report written on: " in report  # the machine that wrote it, not necessarily where cells ran
    # editors are compared at equal n: one facet plot per n that two editors share
    assert (out / "quality-toy-n1.png").is_file() and (out / "quality-toy-n2.png").is_file()
    assert (out / "scale-toy.png").is_file()
    capsys.readouterr()

    def no_rerun(cell, *args, **kwargs):
        if cell.editor != "ke":  # skipped cells are tried again (a checkpoint may exist by now)
            raise AssertionError("a cached cell was run again")
        raise CheckpointError("ke: still no checkpoint; train ke first")

    monkeypatch.setattr(bench, "run_cell", no_rerun)
    assert main(args) == 0  # every measured cell cached
    monkeypatch.undo()
    more = ["--model", "tiny-random", "bench", "--editors", "none", "--datasets", f"toy={data}", "--n", "3",
            "--out", str(out), "--results-md", str(tmp_path / "RESULTS.md")]
    assert main(more) == 0  # a second grid into the same --out: the report names both commands
    report = (tmp_path / "RESULTS.md").read_text()
    assert "run one after another" in report and "--editors none context ke" in report and "--n 3" in report
    monkeypatch.setattr(bench, "run_cell", no_rerun)
    (tmp_path / "RESULTS.md").unlink()
    assert main(args[:-2] + ["--n", "50", "--report-only", "--results-md", str(tmp_path / "RESULTS.md")]) == 0
    assert "| none | toy | sequential | 3 |" in (tmp_path / "RESULTS.md").read_text()  # nothing run, all reported
    capsys.readouterr()
    assert main(args[:-2] + ["--n", "1", "3", "30", "--plan"]) == 0  # n=30 is capped to the 3 cases: one cell
    plan = capsys.readouterr().out
    assert plan.count("none          toy") == 2 and "cached" in plan and "train ke" not in plan


def test_cells_over_budget_are_skipped_with_the_estimate():
    done = {"a": {"editor": "rome", "n_cases": 10, "wall_s": 100.0}}
    cell = bench.Cell("rome", "cf", "sequential", 1000)
    assert bench.estimate_seconds(cell, done) == 10000.0
    # editing grows with the edits, scoring with the cases scored: 10 s/edit × 1,000 + 50 s × 200/10 scored
    timed = {"a": {"editor": "memit", "n_cases": 10, "scored_cases": 10, "wall_s": 150.0, "timing": {"edit_s": 10.0}}}
    assert bench.estimate_seconds(bench.Cell("memit", "cf", "batch", 1000, scored=200), timed) == 10000.0 + 1000.0
    result = bench.attempt(cell, bench.BenchConfig(budget_s=600), None, None, [], done, progress=False,
                           shared_references={})
    assert result["skipped"].startswith("estimated 10000 s > budget 600 s")


def test_cells_from_an_older_harness_are_not_reused(tmp_path):
    cells = tmp_path / "cells"
    cells.mkdir()
    old = {"editor": "none", "n_cases": 1, "metrics": {}, "harness_version": bench.HARNESS_VERSION - 1}
    current = {**old, "harness_version": bench.HARNESS_VERSION}
    skipped = {"editor": "ke", "n_cases": 1, "skipped": "no checkpoint"}
    for name, cell in {"old": old, "current": current, "skipped": skipped}.items():
        (cells / f"{name}.json").write_text(json.dumps(cell))
    assert set(bench.cached_cells(tmp_path)) == {"current", "skipped"}


def test_locality_references_are_computed_once_per_dataset_and_n(tmp_path, monkeypatch):
    """Every editor of a bench is scored against the same base-model references, computed once."""
    calls = []
    original = bench.locality_references

    def counting(reference, cases, cfg):
        calls.append(len(cases))
        return original(reference, cases, cfg)

    monkeypatch.setattr(bench, "locality_references", counting)
    data = write_cases(tmp_path / "toy.jsonl")
    cfg = bench.BenchConfig(editors=["none", "context"], datasets=[f"toy={data}"], ns=[2], out=tmp_path / "b")
    results = bench.run_bench(cfg, Settings(model="tiny-random", home=tmp_path / "home"), progress=False)
    assert calls == [2] and all("metrics" in r for r in results.values())


def test_editor_options_key_and_label_cells_and_bugs_are_failed_not_skipped(tmp_path, monkeypatch):
    data = write_cases(tmp_path / "toy.jsonl", n=1)
    out = tmp_path / "b"
    args = ["--model", "tiny-random", "bench", "--editors", "lte", "--datasets", f"toy={data}", "--n", "1",
            "--modes", "batch", "--out", str(out), "--set", "lte.k=1", "--no-progress"]
    assert main(args) == 0
    [cell] = json.loads((out / "results.json").read_text()).values()
    assert cell["options"] == {"k": 1} and cell["editor_config"]["k"] == 1 and "metrics" in cell
    assert (out / "cells" / "lte__toy__batch__1__k=1.json").is_file()
    assert "| lte [k=1] | toy |" in (out / "RESULTS.md").read_text()
    assert main(args[:-3] + ["--set", "rome.layer=1"]) == 2  # options for an editor not benched are refused

    def broken(*args, **kwargs):
        raise RuntimeError("a bug in the editor")

    monkeypatch.setattr(bench, "run_cell", broken)
    assert main(args[:-3] + ["--no-progress"]) == 0  # the same cell without options: a new key, run (and broken)
    failed = json.loads((out / "cells" / "lte__toy__batch__1.json").read_text())
    assert failed["failed"] == "RuntimeError: a bug in the editor" and "Traceback" in failed["trace"]
    assert "skipped" not in failed


def test_sequential_batch_cells_are_keyed_by_their_edit_batch(tmp_path):
    from lte.core.errors import ConfigError
    from lte.core.harness import EvalConfig

    data = write_cases(tmp_path / "toy.jsonl", n=3)
    out = tmp_path / "b"
    assert main(["--model", "tiny-random", "bench", "--editors", "context", "--datasets", f"toy={data}", "--n", "3",
                 "--modes", "sequential-batch", "--edit-batches", "2", "3", "--out", str(out), "--no-progress"]) == 0
    for size in (2, 3):
        cell = json.loads((out / "cells" / f"context__toy__sequential-batch__3__b{size}.json").read_text())
        assert cell["edit_batch"] == size and cell["metrics_immediate"]["reliability"]["n"] == 3
    row = "| context | toy | sequential-batch of 2 | 3 |"
    assert (out / "RESULTS.md").read_text().count(row) == 4  # the quality, papers', general and speed tables
    with pytest.raises(ConfigError, match="sequential-batch"):
        EvalConfig(mode="batch", edit_batch=2)


def test_the_batch_size_study_is_plotted_when_an_editor_ran_at_two_batch_sizes(tmp_path):
    data = write_cases(tmp_path / "toy.jsonl", n=3)
    out = tmp_path / "b"
    assert main(["--model", "tiny-random", "bench", "--editors", "none", "context", "--datasets", f"toy={data}",
                 "--n", "3", "--modes", "batch", "sequential", "sequential-batch", "--edit-batches", "2",
                 "--out", str(out), "--no-progress"]) == 0
    text = (out / "RESULTS.md").read_text()
    assert (out / "batches-toy-n3.png").is_file() and "batches-toy-n3" in text
    assert "## Edit batch size" in text
    # every batch and sequential cell ends with the general probe; the report tables and plots it by edits applied
    assert "### General ability after the edits" in text and (out / "general-toy.png").is_file()
    assert "| none | toy | batch | 3 |" in text.split("### General ability", 1)[1]
    assert "### The papers' metrics" in text
    for size in (1, 2, 3):  # sequential, sequential-batch of 2, batch of all 3 (a random model: only locality holds)
        assert f"| toy | 3 | none | {size} | 0.00 | 0.00 | 1.00 | 0.33 | 0.00 |" in text
