"""`lte bench`: run the shared harness for every (editor, dataset, mode, n) cell, cache each cell, and write
results.json, a markdown table, PNG plots and RESULTS.md.

A cell is skipped, and marked so, when its editor cannot run (e.g. no trained KE checkpoint) or when the time it
would take, extrapolated from the same editor's smaller cells, exceeds the per-cell budget.
"""

from __future__ import annotations

import json
import os
import platform
import shlex
import time
import traceback
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Sequence

from lte.datasets import load_cases
from lte.editors import build_editor
from lte.harness import HARNESS_VERSION, EvalConfig, evaluate, locality_references
from lte.models import LoadedModel, load_model
from lte.schema import FACETS
from lte.settings import Settings

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "datasets"
DATASETS = {
    "counterfact": SHARED / "counterfact_easyedit" / "counterfact-edit.json",
    "zsre": SHARED / "knowedit" / "ZsRE-test-all.json",
    "mquake": SHARED / "mquake" / "AKEW-MQuAKE-CF-354.json",
    "wiki_counterfact": SHARED / "knowedit" / "wiki_counterfact_train_cf.json",
    "wiki_recent": SHARED / "knowedit" / "wiki_recent_train.json",
}
QUICK_DATASETS = ["counterfact", "zsre", "mquake"]  # the default grid; the others by name
EDITORS = ["none", "context", "lte", "lte-unaligned", "rome", "grace", "ke"]


@dataclass
class BenchConfig:
    """editors, datasets (name=path or a known name), modes, ns: the grid. budget_s: most seconds per cell.
    score_sample: apply all n cases' edits, score a seeded sample of this many (None: score all).
    quick: the small preset (n=10, sequential) that runs in minutes."""

    editors: list[str] = field(default_factory=lambda: list(EDITORS))
    datasets: list[str] = field(default_factory=lambda: list(QUICK_DATASETS))
    modes: list[str] = field(default_factory=lambda: ["sequential"])
    ns: list[int] = field(default_factory=lambda: [10, 100, 1000, 10000])
    budget_s: float = 2700.0
    score_sample: int | None = None
    out: Path = Path("bench-out")
    seed: int = 0


QUICK = dict(ns=[10], modes=["sequential"])


@dataclass(frozen=True)
class Cell:
    editor: str
    dataset: str
    mode: str
    n: int
    scored: int | None = None  # a sample of the n cases is scored (all when None)

    @property
    def key(self) -> str:
        return f"{self.editor}__{self.dataset}__{self.mode}__{self.n}" + (f"__s{self.scored}" if self.scored else "")


def dataset_path(name: str) -> tuple[str, Path]:
    if "=" in name:
        label, path = name.split("=", 1)
        return label, Path(path)
    return name, DATASETS.get(name, Path(name))


def estimate_seconds(cell: Cell, done: dict[str, dict]) -> float | None:
    """Seconds a cell would take, extrapolated linearly from the largest finished cell of the same editor."""
    same = [r for r in done.values() if r.get("editor") == cell.editor and "wall_s" in r]
    if not same:
        return None
    largest = max(same, key=lambda r: r["n_cases"])
    return largest["wall_s"] * cell.n / max(largest["n_cases"], 1)


def run_cell(cell: Cell, settings: Settings, loaded: LoadedModel, cases, progress: bool,
             shared_references: dict) -> dict:
    """One cell. The base model's locality references depend only on (dataset, n), so the first cell that needs
    them computes them and later editors reuse them (same references for every editor, by construction)."""
    start = time.time()
    editor = build_editor(cell.editor, settings, loaded)
    reference_model = loaded if loaded.base_spec == loaded.spec else load_model(loaded.base_spec, settings.home)
    reference = build_editor("none", settings, reference_model)
    cfg = EvalConfig(mode=cell.mode, progress=progress, score_sample=cell.scored)
    key = (cell.dataset, cell.n, cell.scored)
    if key not in shared_references:
        shared_references[key] = locality_references(reference, cases[: cell.n], cfg)
    report = evaluate(editor, cases[: cell.n], reference, cfg, dataset=cell.dataset,
                      references=shared_references[key])
    report["wall_s"] = round(time.time() - start, 1)
    return report


def grid(cfg: BenchConfig):
    """Every (cell, its dataset's cases) of the grid, datasets loaded once each; n is capped at the dataset size."""
    for label, path in map(dataset_path, cfg.datasets):
        cases = load_cases(path)
        for editor in cfg.editors:
            for mode in cfg.modes:
                for n in sorted({min(n, len(cases)) for n in cfg.ns}):
                    scored = cfg.score_sample if cfg.score_sample and cfg.score_sample < n else None
                    yield Cell(editor, label, mode, n, scored), cases


def run_bench(cfg: BenchConfig, settings: Settings, progress: bool = True, command: str = "") -> dict[str, dict]:
    """Run every missing cell of the grid; measured cells already in OUT/cells (from this or an earlier command)
    are kept, skipped ones are tried again (a KE checkpoint may exist now, the budget may be larger).
    Each new cell records `command`, so a report built from several runs says which run made which cell."""
    cells_dir = cfg.out / "cells"
    cells_dir.mkdir(parents=True, exist_ok=True)
    loaded = load_model(settings.model, settings.home)
    results = cached_cells(cfg.out)
    shared_references: dict = {}
    for cell, cases in grid(cfg):
        if "metrics" in results.get(cell.key, {}):
            continue  # cached: an interrupted bench continues where it stopped
        results[cell.key] = attempt(cell, cfg, settings, loaded, cases, results, progress, shared_references)
        results[cell.key]["command"] = command
        (cells_dir / f"{cell.key}.json").write_text(json.dumps(results[cell.key], indent=1))
    return results


def plan(cfg: BenchConfig) -> list[tuple[Cell, str, float]]:
    """What a run of the grid would do, cell by cell, with the seconds each would take: cached cells cost nothing;
    others are extrapolated from the same editor's largest finished cell (nan when there is none yet)."""
    done = cached_cells(cfg.out)
    rows = []
    for cell, _ in grid(cfg):
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
    """Cells under OUT/cells: skipped ones, and measured ones from this version of the harness (older ones are
    left out, so they are run again)."""
    return {key: cell for key, cell in all_cells(out).items() if is_current(cell)}


def all_cells(out: Path) -> dict[str, dict]:
    """Every cell under OUT/cells, older harness versions included: the reports show them with their version
    until a run replaces them (a run of the grid re-runs the cells it covers)."""
    return {p.stem: json.loads(p.read_text()) for p in sorted((Path(out) / "cells").glob("*.json"))}


def is_current(cell: dict) -> bool:
    """Skipped cells carry no metrics, so they stay valid; measured ones must come from this harness."""
    return "metrics" not in cell or cell.get("harness_version") == HARNESS_VERSION


def attempt(cell: Cell, cfg: BenchConfig, settings: Settings, loaded: LoadedModel, cases, done: dict,
            progress: bool, shared_references: dict) -> dict:
    base = {"editor": cell.editor, "dataset": cell.dataset, "mode": cell.mode, "n_cases": cell.n,
            "scored_cases": cell.scored or cell.n}
    estimate = estimate_seconds(cell, done)
    if estimate is not None and estimate > cfg.budget_s:
        return {**base, "skipped": f"estimated {estimate:.0f} s > budget {cfg.budget_s:.0f} s"}
    try:
        return run_cell(cell, settings, loaded, cases, progress, shared_references)
    except (FileNotFoundError, ValueError) as error:  # e.g. no KE checkpoint, a subject the prompt lacks
        return {**base, "skipped": str(error).splitlines()[0]}
    except Exception as error:  # noqa: BLE001 - one broken cell must not lose the others
        return {**base, "skipped": f"failed: {error!r}", "trace": traceback.format_exc()[-2000:]}


# ---------------------------------------------------------------- reporting

def quality_table(results: dict[str, dict]) -> str:
    lines = ["| editor | dataset | mode | n | reliability | generalization | locality | portability | fluency | harness |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in sorted(results.values(), key=lambda r: (r["dataset"], r["n_cases"], EDITORS.index(r["editor"])
                                                     if r["editor"] in EDITORS else 99)):
        if "skipped" in r:
            lines.append(f"| {r['editor']} | {r['dataset']} | {r['mode']} | {n_label(r)} | "
                         f"skipped: {r['skipped']} | | | | | |")
            continue
        metrics = r["metrics"]
        cells = [facet_cell(metrics.get(f)) for f in FACETS]
        fluency = f"{metrics['fluency']['ngram_entropy']:.2f}" if "fluency" in metrics else "–"
        lines.append(f"| {r['editor']} | {r['dataset']} | {r['mode']} | {n_label(r)} | " + " | ".join(cells)
                     + f" | {fluency} | {r.get('harness_version', 1)} |")
    return "\n".join(lines)


def n_label(r: dict) -> str:
    """'1000' or '1000 (500 scored)', plus extra stored edits when a cell had any."""
    scored = r.get("scored_cases", r["n_cases"])
    label = f"{r['n_cases']}" + (f" ({scored} scored)" if scored < r["n_cases"] else "")
    return label + (f" +{r['extra_edits']} stored" if r.get("extra_edits") else "")


def facet_cell(m: dict | None) -> str:
    """'gen_acc / token_acc (prob_win)' for one facet."""
    if not m:
        return "–"
    win = f" ({m['prob_win']:.2f})" if "prob_win" in m else ""
    return f"{m['gen_acc']:.2f} / {m['token_acc']:.2f}{win}"


def speed_table(results: dict[str, dict]) -> str:
    lines = ["| editor | dataset | n | s per edit | s per query | peak RSS MB | wall s | after the edits |",
             "|---|---|---|---|---|---|---|---|"]
    for r in sorted(results.values(), key=lambda r: (r["editor"], r["dataset"], r["n_cases"])):
        if "timing" in r:
            t = r["timing"]
            lines.append(f"| {r['editor']} | {r['dataset']} | {n_label(r)} | {t['edit_s']:.4f} | "
                         f"{t['query_s']:.4f} | {t['peak_rss_mb']:.0f} | {r.get('wall_s', 0):.0f} | "
                         + ", ".join(f"{k} {v}" for k, v in r.get("editor_stats", {}).items()) + " |")
    return "\n".join(lines)


def plot(results: dict[str, dict], out: Path) -> list[Path]:
    """Per dataset: gen_acc per facet per editor at each n two or more editors were run at (editors are only
    compared at equal n), and reliability against n."""
    import matplotlib

    matplotlib.use("Agg")
    done = [r for r in results.values() if "metrics" in r]
    paths = []
    for dataset in sorted({r["dataset"] for r in done}):
        rows = [r for r in done if r["dataset"] == dataset]
        editors = sorted({r["editor"] for r in rows}, key=lambda e: EDITORS.index(e) if e in EDITORS else 99)
        for size in sorted({n_label(r) for r in rows}, key=lambda label: int(label.split()[0])):
            same_n = [r for r in rows if n_label(r) == size]
            if len({r["editor"] for r in same_n}) > 1:
                tag = size.split()[0] + (f"-s{same_n[0]['scored_cases']}" if "scored" in size else "")
                paths.append(_plot_facets(same_n, [e for e in editors if any(r["editor"] == e for r in same_n)],
                                          out / f"quality-{dataset}-n{tag}.png", f"{dataset}, n = {size}"))
        paths.append(_plot_scale(rows, editors, out / f"scale-{dataset}.png", dataset))
    return paths


def _plot_facets(rows: list[dict], editors: list[str], path: Path, dataset: str) -> Path:
    import matplotlib.pyplot as plt

    largest = {e: max((r for r in rows if r["editor"] == e), key=lambda r: r.get("harness_version", 1))
               for e in editors}  # one cell per editor at this n; the newest harness where two exist
    fig, ax = plt.subplots(figsize=(9, 4))
    width = 0.8 / max(len(editors), 1)
    for i, editor in enumerate(editors):
        values = [largest[editor]["metrics"].get(f, {}).get("gen_acc", 0) for f in FACETS]
        ax.bar([x + i * width for x in range(len(FACETS))], values, width, label=editor)
    ax.set_xticks([x + width * (len(editors) - 1) / 2 for x in range(len(FACETS))], FACETS)
    ax.set_ylabel("gen_acc")
    ax.set_title(f"{dataset}: quality per facet")
    return _save(fig, ax, path)


def _plot_scale(rows: list[dict], editors: list[str], path: Path, dataset: str) -> Path:
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for editor in editors:
        series = sorted((r["n_cases"], r["metrics"]["reliability"]["gen_acc"]) for r in rows
                        if r["editor"] == editor and "reliability" in r["metrics"])
        if series:
            ax.plot(*zip(*series), marker="o", label=editor)
    ax.set_xscale("log")
    ax.set_xlabel("edits applied / stored")
    ax.set_ylabel("reliability gen_acc")
    ax.set_title(f"{dataset}: reliability vs number of edits")
    return _save(fig, ax, path)


def _save(fig, ax, path: Path) -> Path:
    import matplotlib.pyplot as plt

    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def write_reports(results: dict[str, dict], cfg: BenchConfig, settings: Settings, command: Sequence[str],
                  notes: str = "", results_md: Path | None = None) -> None:
    (cfg.out / "results.json").write_text(json.dumps(results, indent=1))
    tables = (f"## Quality (gen_acc / token_acc, prob_win in brackets)\n\n{quality_table(results)}\n\n"
              f"## Speed\n\n{speed_table(results)}\n")
    (cfg.out / "results.md").write_text(tables)
    plots = plot(results, cfg.out)
    header = (f"# Results\n\n{provenance(results, shlex.join(command))}\n\n"
              f"- model: `{settings.model}` (for `lte`; the other editors use its base model)\n"
              f"- machine: {platform.machine()}, {platform.processor() or 'cpu'}, {_cpu_count()} cores, "
              f"Python {platform.python_version()}\n"
              f"- date: {datetime.now(timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}\n\n")
    target = results_md or cfg.out / "RESULTS.md"
    figures = "".join(f"![{p.stem}]({os.path.relpath(p, target.parent)})\n" for p in plots)
    target.write_text(header + (f"## Reading\n\n{notes.strip()}\n\n" if notes.strip() else "") + tables
                      + ("\n## Plots\n\n" + figures if plots else ""))


def provenance(results: dict[str, dict], command: str) -> str:
    """Which commands produced the cells: one line when a single run made them all."""
    made_by = list(dict.fromkeys(r.get("command") or command for r in results.values())) or [command]
    if made_by == [command]:
        return f"Produced by `{command}`"
    lines = "\n".join(f"    {c}" for c in made_by)
    return (f"Produced by these commands, run one after another with the same `--out` (each cell records the "
            f"command that made it; the last one wrote this file):\n\n{lines}")


def _cpu_count() -> int:
    return os.cpu_count() or 0
