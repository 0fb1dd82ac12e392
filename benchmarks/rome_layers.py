"""Choose ROME's layer for a model: edit N CounterFact *training* cases at each candidate layer (single mode,
the shared harness) and print reliability, generalization, locality and seconds per edit.

    python benchmarks/rome_layers.py --layers 2 4 6 8 10 --n 10
"""

from __future__ import annotations

import argparse
from pathlib import Path

from baselines.rome import ROMEConfig, ROMEEditor
from lte.datasets import load_cases
from lte.editor import UneditedEditor
from lte.harness import EvalConfig, evaluate
from lte.models import load_model
from lte.settings import Settings

TRAIN = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "counterfact_easyedit" / "counterfact-train.json"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None)
    parser.add_argument("--layers", type=int, nargs="+", default=[2, 4, 6, 8, 10])
    parser.add_argument("--n", type=int, default=10)
    args = parser.parse_args()
    settings = Settings.from_env(model=args.model)
    loaded = load_model(settings.model, settings.home)
    cases = load_cases(TRAIN, limit=args.n)
    reference = UneditedEditor(loaded)
    cfg = EvalConfig(mode="single", fluency_cases=0, progress=False)
    print(f"ROME layer sweep on {args.n} CounterFact training cases ({settings.model})")
    print(f"{'layer':>5} {'rel prob_win':>12} {'rel gen':>8} {'gen prob_win':>12} {'gen gen':>8} {'loc gen':>8} "
          f"{'s/edit':>7}")
    for layer in args.layers:
        report = evaluate(ROMEEditor(loaded, ROMEConfig(layer=layer), settings.home), cases, reference, cfg)
        m = report["metrics"]
        print(f"{layer:>5} {m['reliability']['prob_win']:>12.2f} {m['reliability']['gen_acc']:>8.2f} "
              f"{m['generalization']['prob_win']:>12.2f} {m['generalization']['gen_acc']:>8.2f} "
              f"{m['locality']['gen_acc']:>8.2f} {report['timing']['edit_s']:>7.1f}", flush=True)


if __name__ == "__main__":
    main()
