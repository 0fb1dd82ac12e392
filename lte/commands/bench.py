"""`lte bench`: compare every editor on every dataset with the shared harness; resumable."""

from __future__ import annotations

import math
import shlex
from pathlib import Path

from lte.core.catalog import KNOWN
from lte.core.errors import InputFileError
from lte.core.harness import MODES
from lte.registry import editor_names


def register(commands) -> None:
    from lte.bench.grid import BenchConfig

    defaults = BenchConfig()
    parser = commands.add_parser(
        "bench", help="compare every editor on every dataset and write results and RESULTS.md",
        description="Run `lte eval` for every (editor, dataset, mode, n) cell. Each finished cell is cached under "
        "OUT/cells, so an interrupted bench continues. Writes OUT/results.json, OUT/results.md, PNG plots and "
        "a RESULTS.md (OUT/RESULTS.md unless --results-md). --model is the aligned model used by `lte`; the other "
        "editors use its base model.")
    parser.add_argument("--editors", nargs="+", default=defaults.editors, choices=editor_names(), metavar="EDITOR",
                        help=f"default: all ({', '.join(editor_names())})")
    parser.add_argument("--datasets", nargs="+", default=defaults.datasets, metavar="NAME|LABEL=PATH",
                        help=f"known: {', '.join(KNOWN)} (default: {', '.join(defaults.datasets)}); or "
                        "label=path for any dataset file")
    parser.add_argument("--set", action="append", default=[], metavar="EDITOR.KEY=VALUE",
                        help="an option of one editor's config, e.g. --set lte.scope=DIR --set rome.layer=6; cells "
                        "run with options are keyed and labelled with them; repeatable")
    parser.add_argument("--modes", nargs="+", default=defaults.modes, choices=MODES)
    parser.add_argument("--edit-batches", nargs="+", type=int, default=defaults.edit_batches, metavar="B",
                        help="sequential-batch cells: B cases' edits per apply call, one cell per size "
                        f"(default {' '.join(map(str, defaults.edit_batches))})")
    parser.add_argument("--n", nargs="+", type=int, default=defaults.ns, dest="ns", help="cases per cell (scale axis)")
    parser.add_argument("--budget", type=float, default=defaults.budget_s, help="most seconds per cell")
    parser.add_argument("--score-sample", type=int, metavar="K",
                        help="apply all n cases' edits but score a seeded sample of K (cells keyed with __sK)")
    parser.add_argument("--out", default=str(defaults.out), help="output directory (default bench-out)")
    parser.add_argument("--quick", action="store_true", help="small preset: n=10, sequential (minutes)")
    parser.add_argument("--results-md", help="where to write RESULTS.md")
    parser.add_argument("--notes", help="markdown file with the reading of the results, put at the top")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars (for logs)")
    parser.add_argument("--report-only", action="store_true",
                        help="run nothing: write the reports from the cells already in OUT/cells")
    parser.add_argument("--plan", action="store_true",
                        help="run nothing: list each cell as cached, to run (with the seconds extrapolated from the "
                        "editor's finished cells) or over budget, and the total")
    parser.set_defaults(handler=run)


def run(args, settings) -> int:
    from lte.bench.grid import QUICK, BenchConfig, all_cells, run_bench, split_editor_options
    from lte.bench.report import write_reports
    from lte.core.config import parse_pairs

    cfg = BenchConfig(editors=args.editors, datasets=args.datasets, modes=args.modes, ns=args.ns,
                      budget_s=args.budget, score_sample=args.score_sample, out=Path(args.out),
                      options=split_editor_options(parse_pairs(args.set)), edit_batches=args.edit_batches)
    if args.quick:
        cfg.ns, cfg.modes = QUICK["ns"], QUICK["modes"]
    if args.plan:
        return print_plan(cfg, settings)
    if not args.report_only:
        run_bench(cfg, settings, progress=not args.no_progress, command=shlex.join(["lte"] + args.argv))
    results = all_cells(cfg.out)  # every cell on disk, older harness versions shown with theirs
    if not results:
        raise InputFileError(f"{cfg.out / 'cells'}: no cached cells to report (run lte bench first)")
    notes = Path(args.notes).read_text() if args.notes else ""
    write_reports(results, cfg, settings, ["lte"] + args.argv, notes,
                  Path(args.results_md) if args.results_md else None)
    print((cfg.out / "results.md").read_text())
    return 0


def print_plan(cfg, settings) -> int:
    from lte.bench.grid import plan

    rows = plan(cfg, settings)
    print(f"{'editor':<14}{'dataset':<14}{'mode':<11}{'n':>6}  {'action':<22}{'est. s':>9}")
    for cell, action, seconds in rows:
        print(f"{cell.editor:<14}{cell.dataset:<14}{cell.mode:<11}{cell.n:>6}  {action:<22}{seconds:>9.0f}")
    runs = [seconds for _, action, seconds in rows if action.startswith("run")]
    known = sum(seconds for seconds in runs if not math.isnan(seconds))  # nan: no estimate yet
    unknown = sum(1 for seconds in runs if math.isnan(seconds))
    print(f"\n{len(runs)} cells to run: about {known / 3600:.1f} h"
          + (f" plus {unknown} without an estimate" if unknown else "")
          + f"; {sum(1 for _, a, _ in rows if a.startswith('skip'))} over the {cfg.budget_s:.0f} s budget")
    return 0
