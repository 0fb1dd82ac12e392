"""The grid behind `lte bench`: every (editor, dataset, mode, n) cell through the shared harness, each finished
cell cached as JSON under OUT/cells so an interrupted or extended bench continues.

A cell is *skipped* when its editor cannot run here (`EditorUnavailableError`, e.g. no trained KE checkpoint) or
when the time it would take, extrapolated from the same editor's smaller cells, exceeds the per-cell budget; it is
*failed*, with its traceback, for anything else. Both are tried again by the next run. Reports: `lte.bench.report`.
"""

from __future__ import annotations

import json
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lte.core import files
from lte.core.catalog import QUICK as QUICK_DATASETS
from lte.core.catalog import dataset_path
from lte.core.config import changed_options, options_tag
from lte.core.datasets import load_cases
from lte.core.errors import ConfigError, EditorUnavailableError
from lte.core.general import general_reference
from lte.core.harness import HARNESS_VERSION, EvalConfig, evaluate, locality_references
from lte.core.models import LoadedModel, load_model
from lte.core.settings import Settings
from lte.registry import base_model_of, build_editor, editor_config, editor_names


@dataclass
class BenchConfig:
    """editors, datasets (name=path or a known name), modes, ns: the grid (mode sequential-batch runs once per size
    in edit_batches). budget_s: most seconds per cell.
    score_sample: apply all n cases' edits, score a seeded sample of this many (None: score all).
    options: per editor, options over its config's defaults (`--set EDITOR.KEY=VALUE`); cells of an editor run
    with options are keyed and labelled with them, so they never mix with its default cells."""

    editors: list[str] = field(default_factory=editor_names)
    datasets: list[str] = field(default_factory=lambda: list(QUICK_DATASETS))
    modes: list[str] = field(default_factory=lambda: ["sequential"])
    ns: list[int] = field(default_factory=lambda: [10, 100, 1000, 10000])
    budget_s: float = 2700.0
    score_sample: int | None = None
    out: Path = Path("bench-out")
    options: dict[str, dict[str, Any]] = field(default_factory=dict)
    edit_batches: list[int] = field(default_factory=lambda: [100])  # sequential-batch cells: B cases per call

    def __post_init__(self) -> None:
        strays = sorted(set(self.options) - set(self.editors))
        if strays:
            raise ConfigError(f"--set for {', '.join(strays)}: not among the editors benched "
                              f"({', '.join(self.editors)})")
        self.configs = {name: editor_config(name, self.options.get(name)) for name in self.editors}


QUICK = dict(ns=[10], modes=["sequential"])


def split_editor_options(pairs: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """{'lte.k': 5, 'rome.layer': 6} → {'lte': {'k': 5}, 'rome': {'layer': 6}}."""
    options: dict[str, dict[str, Any]] = {}
    for key, value in pairs.items():
        editor, dot, name = key.partition(".")
        if not dot or not name:
            raise ConfigError(f"--set {key}=...: name the editor, as EDITOR.KEY=VALUE (e.g. lte.k=5)")
        options.setdefault(editor, {})[name] = value
    return options


@dataclass(frozen=True)
class Cell:
    editor: str
    dataset: str
    mode: str
    n: int
    scored: int | None = None  # a sample of the n cases is scored (all when None)
    tag: str = ""  # the editor's non-default options, as a short label
    edit_batch: int | None = None  # sequential-batch: cases per apply call

    @property
    def key(self) -> str:
        batch = f"__b{self.edit_batch}" if self.edit_batch else ""
        return (f"{self.editor}__{self.dataset}__{self.mode}__{self.n}{batch}"
                + (f"__s{self.scored}" if self.scored else "") + (f"__{self.tag}" if self.tag else ""))


def estimate_seconds(cell: Cell, done: dict[str, dict]) -> float | None:
    """Seconds a cell would take, from the largest finished cell of the same editor: its editing time (seconds per
    edit × edits) grows with the edits applied, the rest of its wall time (scoring, references, loading) with the
    cases scored, so a cell of 1,000 edits with 200 scored is not priced as 1,000 scored. Of the largest cells, the
    slowest at the editor's defaults (a sweep's cells may have reused cached targets): an estimate errs long."""
    same = [r for r in done.values() if r.get("editor") == cell.editor and "wall_s" in r]
    if not same:
        return None
    top = [r for r in same if r["n_cases"] == max(r["n_cases"] for r in same)]
    largest = max([r for r in top if not r.get("options")] or top, key=lambda r: r["wall_s"])
    edits = largest["n_cases"] + largest.get("extra_edits", 0)
    editing = largest.get("timing", {}).get("edit_s", 0.0) * edits
    rest = max(largest["wall_s"] - editing, 0.0)
    scored = largest.get("scored_cases", largest["n_cases"])
    return editing * cell.n / max(edits, 1) + rest * (cell.scored or cell.n) / max(scored, 1)


def run_cell(cell: Cell, cfg: BenchConfig, settings: Settings, loaded: LoadedModel, cases, progress: bool,
             shared_references: dict) -> dict:
    """One cell. The base model's locality references depend only on (dataset, n), and its answers to the general
    probe on nothing, so the first cell that needs them computes them and later editors reuse them (the same
    references for every editor, by construction)."""
    start = time.time()
    editor = build_editor(cell.editor, settings, loaded, cfg.configs[cell.editor])
    reference_model = base_model_of(loaded, settings)
    reference = build_editor("none", settings, reference_model)
    eval_cfg = EvalConfig(mode=cell.mode, progress=progress, score_sample=cell.scored, edit_batch=cell.edit_batch)
    key = (cell.dataset, cell.n, cell.scored)
    if key not in shared_references:
        shared_references[key] = locality_references(reference, cases[: cell.n], eval_cfg)
    if cell.mode != "single" and "general" not in shared_references:
        shared_references["general"] = general_reference(reference, eval_cfg.max_new_tokens)
    report = evaluate(editor, cases[: cell.n], reference, eval_cfg, dataset=cell.dataset,
                      references=shared_references[key], general=shared_references.get("general"))
    report["wall_s"] = round(time.time() - start, 1)
    return report


def grid(cfg: BenchConfig, settings: Settings):
    """Every (cell, its dataset's cases) of the grid, datasets loaded once each; n is capped at the dataset size."""
    for label, path in (dataset_path(name, settings) for name in cfg.datasets):
        cases = load_cases(path)
        for editor in cfg.editors:
            tag = options_tag(changed_options(cfg.configs[editor]))
            for mode in cfg.modes:
                for n in sorted({min(n, len(cases)) for n in cfg.ns}):
                    scored = cfg.score_sample if cfg.score_sample and cfg.score_sample < n else None
                    for size in cfg.edit_batches if mode == "sequential-batch" else [None]:
                        yield Cell(editor, label, mode, n, scored, tag, size), cases


def run_bench(cfg: BenchConfig, settings: Settings, progress: bool = True, command: str = "") -> dict[str, dict]:
    """Run every missing cell of the grid; measured cells already in OUT/cells (from this or an earlier command)
    are kept, skipped and failed ones are tried again (a KE checkpoint may exist now, the budget may be larger).
    Each new cell records `command`, so a report built from several runs says which run made which cell."""
    cells_dir = cfg.out / "cells"
    cells_dir.mkdir(parents=True, exist_ok=True)
    loaded = load_model(settings.model, settings.home, **settings.load_options)
    results = cached_cells(cfg.out)
    shared_references: dict = {}
    for cell, cases in grid(cfg, settings):
        if "metrics" in results.get(cell.key, {}):
            continue  # cached: an interrupted bench continues where it stopped
        results[cell.key] = attempt(cell, cfg, settings, loaded, cases, results, progress, shared_references)
        results[cell.key].update(command=command, options=changed_options(cfg.configs[cell.editor]))
        files.write_text(cells_dir / f"{cell.key}.json", settings.portable(json.dumps(results[cell.key], indent=1)))
    return results


def plan(cfg: BenchConfig, settings: Settings) -> list[tuple[Cell, str, float]]:
    """What a run of the grid would do, cell by cell, with the seconds each would take: cached cells cost nothing;
    others are extrapolated from the same editor's largest finished cell (nan when there is none yet)."""
    done = cached_cells(cfg.out)
    rows = []
    for cell, _ in grid(cfg, settings):
        if "metrics" in done.get(cell.key, {}):
            rows.append((cell, "cached", 0.0))
            continue
        estimate = estimate_seconds(cell, done)
        if estimate is None:
            rows.append((cell, "run (no estimate yet)", float("nan")))
        elif estimate > cfg.budget_s:
            rows.append((cell, "skip: over budget", estimate))
        else:
            rows.append((cell, "run", estimate))
    return rows


def cached_cells(out: Path) -> dict[str, dict]:
    """Cells under OUT/cells: skipped and failed ones, and measured ones from this version of the harness (older
    ones are left out, so they are run again)."""
    return {key: cell for key, cell in all_cells(out).items() if is_current(cell)}


def all_cells(out: Path) -> dict[str, dict]:
    """Every cell under OUT/cells, older harness versions included: the reports show them with their version
    until a run replaces them (a run of the grid re-runs the cells it covers)."""
    return {p.stem: json.loads(p.read_text()) for p in sorted((Path(out) / "cells").glob("*.json"))}


def is_current(cell: dict) -> bool:
    """Cells without metrics (skipped, failed) stay valid; measured ones must come from this harness."""
    return "metrics" not in cell or cell.get("harness_version") == HARNESS_VERSION


def attempt(cell: Cell, cfg: BenchConfig, settings: Settings, loaded: LoadedModel, cases, done: dict,
            progress: bool, shared_references: dict) -> dict:
    base = {"editor": cell.editor, "dataset": cell.dataset, "mode": cell.mode, "n_cases": cell.n,
            "scored_cases": cell.scored or cell.n, **({"edit_batch": cell.edit_batch} if cell.edit_batch else {})}
    estimate = estimate_seconds(cell, done)
    if estimate is not None and estimate > cfg.budget_s:
        return {**base, "skipped": f"estimated {estimate:.0f} s > budget {cfg.budget_s:.0f} s"}
    try:
        return run_cell(cell, cfg, settings, loaded, cases, progress, shared_references)
    except EditorUnavailableError as error:  # e.g. no KE checkpoint: the method cannot run here yet
        return {**base, "skipped": str(error).splitlines()[0]}
    except Exception as error:  # noqa: BLE001 - one broken cell must not lose the others; its trace is kept
        return {**base, "failed": f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}",
                "trace": traceback.format_exc()[-4000:]}
