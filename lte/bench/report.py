"""Reports of `lte bench` cells: the quality and speed tables, PNG plots (editors compared only at equal n) and
RESULTS.md with where every figure came from."""

from __future__ import annotations

import json
import os
import platform
import shlex
from collections import Counter
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

from lte.bench.grid import BenchConfig
from lte.core import files
from lte.core.errors import need
from lte.core.schema import FACETS
from lte.core.settings import Settings
from lte.registry import editor_names

STUDY_FACETS = ("reliability", "generalization", "locality")  # the batch-size study's facets (and their average)


def mode_label(r: dict) -> str:
    return r["mode"] + (f" of {r['edit_batch']}" if r.get("edit_batch") else "")


def editor_label(r: dict) -> str:
    """The editor's name, with the options it ran with when they were not its defaults: 'lte [k=5]'."""
    options = r.get("options") or {}
    return r["editor"] + (f" [{', '.join(f'{k}={v}' for k, v in sorted(options.items()))}]" if options else "")


def editor_rank(label: str) -> tuple[int, str]:
    """Registry order first (none, context, lte, ...), then the label."""
    names = editor_names()
    base = label.split(" [")[0]
    return (names.index(base) if base in names else len(names), label)


def quality_table(results: dict[str, dict]) -> str:
    lines = ["| editor | dataset | mode | n | reliability | generalization | locality | portability | fluency "
             "| harness |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in sorted(results.values(), key=lambda r: (r["dataset"], r["n_cases"], editor_rank(editor_label(r)))):
        if "metrics" not in r:
            status = f"skipped: {r['skipped']}" if "skipped" in r else f"failed: {r.get('failed', '?')}"
            lines.append(f"| {editor_label(r)} | {r['dataset']} | {mode_label(r)} | {n_label(r)} | {status} "
                         "| | | | | |")
            continue
        metrics = r["metrics"]
        cells = [facet_cell(metrics.get(f)) for f in FACETS]
        fluency = f"{metrics['fluency']['ngram_entropy']:.2f}" if "fluency" in metrics else "–"
        lines.append(f"| {editor_label(r)} | {r['dataset']} | {mode_label(r)} | {n_label(r)} | " + " | ".join(cells)
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
    lines = ["| editor | dataset | mode | n | s per edit | s per query | peak RSS MB | wall s | after the edits |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in sorted(results.values(), key=lambda r: (editor_rank(editor_label(r)), r["dataset"], r["n_cases"])):
        if "timing" in r:
            t = r["timing"]
            lines.append(f"| {editor_label(r)} | {r['dataset']} | {mode_label(r)} | {n_label(r)} | {t['edit_s']:.4f} | "
                         f"{t['query_s']:.4f} | {t['peak_rss_mb']:.0f} | {r.get('wall_s', 0):.0f} | "
                         + ", ".join(f"{k} {v}" for k, v in r.get("editor_stats", {}).items()) + " |")
    return "\n".join(lines)


def batch_table(results: dict[str, dict]) -> str:
    """The batch-size study as numbers: per dataset and n where some editor ran at two edit batch sizes or more,
    each editor's gen_acc per facet, their average (reliability, generalization, locality) and the time per edit,
    by edits per apply call. Empty when no such study was run."""
    done = [r for r in results.values() if "metrics" in r and edit_batch_of(r) is not None]
    lines = []
    for dataset, n in sorted({(r["dataset"], r["n_cases"]) for r in done}):
        rows = [r for r in done if (r["dataset"], r["n_cases"]) == (dataset, n)]
        sizes = {}
        for r in rows:
            sizes.setdefault(editor_label(r), set()).add(edit_batch_of(r))
        if not any(len(s) > 1 for s in sizes.values()):
            continue
        if not lines:
            lines = ["| dataset | n | editor | edits per apply call | reliability | generalization | locality "
                     "| average | s per edit |", "|---|---|---|---|---|---|---|---|---|"]
        for r in sorted(rows, key=lambda r: (editor_rank(editor_label(r)), edit_batch_of(r))):
            values = [r["metrics"].get(f, {}).get("gen_acc") for f in STUDY_FACETS]
            average = f"{sum(values) / 3:.2f}" if None not in values else "–"
            lines.append(f"| {dataset} | {n_label(r)} | {editor_label(r)} | {edit_batch_of(r)} | "
                         + " | ".join("–" if v is None else f"{v:.2f}" for v in values)
                         + f" | {average} | {r['timing']['edit_s']:.2f} |")
    return "\n".join(lines)


def papers_table(results: dict[str, dict]) -> str:
    """The papers' own metrics, ×100 as they print them, for every cell that has them: ROME's and MEMIT's
    CounterFact efficacy, paraphrase and neighbourhood scores (prob_win on edit, paraphrase and neighbourhood
    prompts) and MEMIT's ZsRE efficacy, paraphrase and specificity (token accuracy of the new target on edit and
    paraphrase prompts, of the dataset's answer on locality prompts)."""
    lines = ["| editor | dataset | mode | n | ES | PS | NS | efficacy (tokens) | paraphrase (tokens) "
             "| specificity (tokens) |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in sorted(measured(results), key=lambda r: (r["dataset"], r["n_cases"], editor_rank(editor_label(r)))):
        m = r["metrics"]
        values = [m.get("reliability", {}).get("prob_win"), m.get("generalization", {}).get("prob_win"),
                  m.get("locality", {}).get("prob_win"), m.get("reliability", {}).get("token_acc"),
                  m.get("generalization", {}).get("token_acc"), m.get("locality", {}).get("answer_token_acc")]
        lines.append(f"| {editor_label(r)} | {r['dataset']} | {mode_label(r)} | {n_label(r)} | "
                     + " | ".join("–" if v is None else f"{100 * v:.1f}" for v in values) + " |")
    return "\n".join(lines)


def general_table(results: dict[str, dict]) -> str:
    """What each cell's edits cost the model elsewhere: the general probe's agreement with the unedited model and
    the passage's perplexity (unedited in brackets), by edits applied. Empty when no cell ran the probe."""
    rows = [r for r in measured(results) if "general" in r["metrics"]]
    lines = ["| editor | dataset | mode | edits applied | agreement | token_acc | prompts | perplexity (unedited) |",
             "|---|---|---|---|---|---|---|---|"]
    for r in sorted(rows, key=lambda r: (editor_rank(editor_label(r)), r["dataset"], edits_applied(r))):
        g = r["metrics"]["general"]
        shares = " | ".join(f"{g[k]:.3f}" if k in g else "–" for k in ("agreement", "token_acc"))
        lines.append(f"| {editor_label(r)} | {r['dataset']} | {mode_label(r)} | {edits_applied(r):,} | {shares} | "
                     f"{g['n']} | {g['perplexity']:.2f} ({g['perplexity_unedited']:.2f}) |")
    return "\n".join(lines) if rows else ""


def measured(results: dict[str, dict]) -> list[dict]:
    return [r for r in results.values() if "metrics" in r]


def edits_applied(r: dict) -> int:
    return r["n_cases"] + r.get("extra_edits", 0)


def plot(results: dict[str, dict], out: Path) -> list[Path]:
    """Per dataset: gen_acc per facet per editor at each n two or more editors were run at (editors are only
    compared at equal n), and reliability against n."""
    matplotlib = need("matplotlib", "lte bench's plots")
    matplotlib.use("Agg")
    done = [r for r in results.values() if "metrics" in r]
    paths = []
    for dataset in sorted({r["dataset"] for r in done}):
        rows = [r for r in done if r["dataset"] == dataset]
        editors = sorted({editor_label(r) for r in rows}, key=editor_rank)
        for size in sorted({n_label(r) for r in rows}, key=lambda label: int(label.split()[0])):
            same_n = [r for r in rows if n_label(r) == size]
            if len({editor_label(r) for r in same_n}) > 1:
                tag = size.split()[0] + (f"-s{same_n[0]['scored_cases']}" if "scored" in size else "")
                paths.append(_plot_facets(same_n, [e for e in editors if any(editor_label(r) == e for r in same_n)],
                                          out / f"quality-{dataset}-n{tag}.png", f"{dataset}, n = {size}"))
        paths.append(_plot_scale(rows, editors, out / f"scale-{dataset}.png", dataset))
        for n in sorted({r["n_cases"] for r in rows}):
            same_n = [r for r in rows if r["n_cases"] == n]
            if (path := _plot_batches(same_n, out / f"batches-{dataset}-n{n}.png", f"{dataset}, n = {n}")):
                paths.append(path)
        if (path := _plot_general(rows, out / f"general-{dataset}.png", dataset)):
            paths.append(path)
    return paths


def _plot_general(rows: list[dict], path: Path, dataset: str) -> Path | None:
    """Model damage: the general probe's agreement and the passage's perplexity against edits applied, one line per
    editor and mode, each starting from the unedited model at 0 edits; drawn when some line has two points."""
    import matplotlib.pyplot as plt

    series: dict[str, list[tuple[int, dict]]] = {}
    for r in rows:
        if "general" in r["metrics"]:
            label = f"{editor_label(r)}, {mode_label(r)}"
            series.setdefault(label, []).append((edits_applied(r), r["metrics"]["general"]))
    if not any(len(points) > 1 for points in series.values()) and len(series) < 2:
        return None
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.8))
    for label in sorted(series, key=editor_rank):
        points = sorted(series[label], key=lambda point: point[0])
        xs = [0] + [x for x, _ in points]
        agreed = [(x, g["agreement"]) for x, g in points if "agreement" in g]
        if agreed:
            axes[0].plot(*zip((0, 1.0), *agreed), marker="o", label=label)
        axes[1].plot(xs, [points[0][1]["perplexity_unedited"]] + [g["perplexity"] for _, g in points], marker="o",
                     label=label)
    for ax, name in zip(axes, ("agreement with the unedited model", "perplexity of the fixed passage")):
        ax.set_xscale("symlog", linthresh=10)
        ax.set_xlabel("edits applied")
        ax.set_title(name)
    axes[0].set_ylim(0, 1.05)
    fig.suptitle(f"{dataset}: general ability against the number of edits")
    return _save(fig, axes[-1], path)


def edit_batch_of(r: dict) -> int | None:
    """The edits per apply call of a cell: B for sequential-batch, n for batch, 1 for sequential; None for single."""
    return {"sequential-batch": r.get("edit_batch"), "batch": r["n_cases"], "sequential": 1}.get(r["mode"])


def _plot_batches(rows: list[dict], path: Path, title: str) -> Path | None:
    """The batch-size study: reliability, generalization and locality against edits per apply call (log axis),
    one line per editor; drawn when some editor was run at two batch sizes or more."""
    import matplotlib.pyplot as plt

    series: dict[str, list[tuple[int, dict]]] = {}
    for r in rows:
        if (size := edit_batch_of(r)) is not None:
            series.setdefault(editor_label(r), []).append((size, r["metrics"]))
    if not any(len({size for size, _ in points}) > 1 for points in series.values()):
        return None
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.6))
    for ax, facet in zip(axes, STUDY_FACETS):
        for editor in sorted(series, key=editor_rank):
            points = sorted((size, m[facet]["gen_acc"]) for size, m in series[editor] if facet in m)
            if points:
                ax.plot(*zip(*points), marker="o", label=editor)
        ax.set_xscale("log")
        ax.set_ylim(0, 1.05)
        ax.set_xlabel("edits per apply call")
        ax.set_title(facet)
    axes[0].set_ylabel("gen_acc")
    fig.suptitle(f"{title}: edit batch size")
    return _save(fig, axes[-1], path)


def _plot_facets(rows: list[dict], editors: list[str], path: Path, dataset: str) -> Path:
    import matplotlib.pyplot as plt

    largest = {e: max((r for r in rows if editor_label(r) == e), key=lambda r: r.get("harness_version", 1))
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
                        if editor_label(r) == editor and "reliability" in r["metrics"])
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


def placements(results: dict[str, dict]) -> str:
    """The devices and precisions the cells record, with their counts (cells that record none are counted as
    'not recorded'; their command says where they ran)."""
    counts = Counter(cell.get("placement") or "not recorded" for cell in results.values() if "metrics" in cell)
    return ", ".join(f"{where} ({n} cells)" for where, n in sorted(counts.items())) or "no cells"


HEADLINE = ("counterfact", 100)  # the comparison at equal n every editor that edits in batches was run at


def headline_table(results: dict[str, dict], dataset: str = HEADLINE[0], n: int = HEADLINE[1]) -> str:
    """LTE against the parameter editors on the same `n` cases, all scored: every batch and sequential-batch
    cell run with the editor's current defaults, ranked by the average of reliability, generalization and
    locality (gen_acc), with fluency and the time per edit."""
    rows = [r for r in results.values() if r.get("dataset") == dataset and r.get("n_cases") == n
            and "metrics" in r and r["mode"] in ("batch", "sequential-batch")
            and r.get("scored_cases", n) == n and at_defaults(r)]
    if not rows:
        return ""
    lines = ["| editor | edits applied as | reliability | generalization | locality | average | fluency "
             "| s per edit |", "|---|---|---|---|---|---|---|---|"]
    for r in sorted(rows, key=lambda r: -study_average(r)):
        values = [r["metrics"][f]["gen_acc"] for f in STUDY_FACETS]
        calls = "one call" if r["mode"] == "batch" else f"{r['n_cases'] // r['edit_batch']} calls of {r['edit_batch']}"
        lines.append(f"| {r['editor']} | {calls} | " + " | ".join(f"{v:.2f}" for v in values)
                     + f" | {study_average(r):.2f} | {r['metrics']['fluency']['ngram_entropy']:.2f} "
                     f"| {r['timing']['edit_s']:.3f} |")
    return "\n".join(lines)


def study_average(r: dict) -> float:
    return sum(r["metrics"][f]["gen_acc"] for f in STUDY_FACETS) / len(STUDY_FACETS)


def at_defaults(r: dict) -> bool:
    """Whether a cell ran with its editor's current defaults (a sweep's cells, and cells run before a default
    changed, did not): no option set, and every config field the cell recorded equal to today's default. A field
    the cell does not record was added later and is taken as its default (a new field keeps the old behaviour)."""
    from lte.core.config import changed_options, config_dict
    from lte.registry import editor_config

    try:
        if changed_options(editor_config(r["editor"], r.get("options") or {})):
            return False
        defaults = config_dict(editor_config(r["editor"]))
    except Exception:  # an option the editor no longer has: not its defaults
        return False
    recorded = r.get("editor_config") or {}
    return all(value == defaults[name] for name, value in recorded.items() if name in defaults)


def write_reports(results: dict[str, dict], cfg: BenchConfig, settings: Settings, command: Sequence[str],
                  notes: str = "", results_md: Path | None = None) -> None:
    """results.json and results.md in the bench folder; RESULTS.md: the headline, the reading (`notes`), every
    table, the plots, then where the cells came from."""
    files.write_text(cfg.out / "results.json", settings.portable(json.dumps(results, indent=1)))
    study, general = batch_table(results), general_table(results)
    tables = (f"### Quality (gen_acc / token_acc, prob_win in brackets)\n\n{quality_table(results)}\n\n"
              f"### The papers' metrics (×100)\n\n{papers_table(results)}\n\n"
              + (f"### General ability after the edits\n\n{general}\n\n" if general else "")
              + (f"### Edit batch size (gen_acc)\n\n{study}\n\n" if study else "")
              + f"### Speed\n\n{speed_table(results)}\n")
    files.write_text(cfg.out / "results.md", tables)
    plots = plot(results, cfg.out)
    target = results_md or cfg.out / "RESULTS.md"
    figures = "".join(f"![{p.stem}]({os.path.relpath(p, target.parent)})\n" for p in plots)
    headline = headline_table(results)
    text = ("# Results\n\n"
            + (f"## Headline: {HEADLINE[0]}, {HEADLINE[1]} edits, every editor at equal n\n\n{headline}\n\n"
               "gen_acc, every case scored; the average is that of reliability, generalization and locality; "
               "each row is a cell of the tables below (its command under Provenance), run with the editor's "
               "defaults.\n\n" if headline else "")
            + (f"{notes.strip()}\n\n" if notes.strip() else "")
            + f"## Every cell\n\n{tables}" + ("\n## Plots\n\n" + figures if plots else "")
            + f"\n## Provenance\n\n{provenance(results, shlex.join(command))}\n\n"
            f"- model: `{settings.model}` (for `lte`; the other editors use its base model)\n"
            f"- report written on: {platform.machine()}, {platform.processor() or 'cpu'}, {_cpu_count()} cores, "
            f"Python {platform.python_version()}\n"
            f"- models ran on: {placements(results)}\n"
            f"- date: {datetime.now(UTC).strftime('%Y-%m-%d %H:%M UTC')}\n")
    files.write_text(target, settings.portable(text))


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
