"""Choose ROME's layer for a model: the bench grid run once per candidate layer (`--set rome.layer=L`) on N
CounterFact *training* cases in single mode, then reliability, generalization, locality and seconds per edit.
Cells are cached under OUT/cells like any `lte bench` cell, so an interrupted sweep continues.

    python benchmarks/rome_layers.py --layers 2 4 6 8 10 --n 10 [--out rome-layers]
"""

from __future__ import annotations

import argparse
from pathlib import Path

from lte.bench.grid import BenchConfig, grid, run_bench
from lte.core.catalog import shared_file
from lte.core.settings import Settings

TRAIN = "counterfact_easyedit/counterfact-train.json"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None)
    parser.add_argument("--layers", type=int, nargs="+", default=[2, 4, 6, 8, 10])
    parser.add_argument("--n", type=int, default=10)
    parser.add_argument("--out", default="rome-layers", help="bench output directory (cells cached there)")
    args = parser.parse_args()
    settings = Settings.from_env(model=args.model)
    dataset = f"counterfact-train={shared_file(TRAIN, settings)}"
    print(f"ROME layer sweep on {args.n} CounterFact training cases ({settings.model})")
    print(f"{'layer':>5} {'rel prob_win':>12} {'rel gen':>8} {'gen prob_win':>12} {'gen gen':>8} {'loc gen':>8} "
          f"{'s/edit':>7}")
    for layer in args.layers:
        cfg = BenchConfig(editors=["rome"], datasets=[dataset], modes=["single"], ns=[args.n], out=Path(args.out),
                          options={"rome": {"layer": layer}})
        results = run_bench(cfg, settings, progress=False, command=f"benchmarks/rome_layers.py (layer {layer})")
        report = results[next(cell for cell, _ in grid(cfg, settings)).key]
        if "metrics" not in report:
            print(f"{layer:>5} {report.get('skipped') or report.get('failed')}", flush=True)
            continue
        m = report["metrics"]
        print(f"{layer:>5} {m['reliability']['prob_win']:>12.2f} {m['reliability']['gen_acc']:>8.2f} "
              f"{m['generalization']['prob_win']:>12.2f} {m['generalization']['gen_acc']:>8.2f} "
              f"{m['locality']['gen_acc']:>8.2f} {report['timing']['edit_s']:>7.1f}", flush=True)


if __name__ == "__main__":
    main()
