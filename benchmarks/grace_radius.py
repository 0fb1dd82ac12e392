"""GRACE's deferral radius for a model: the distribution of nearest-neighbour distances between the keys of
different prompts (the layer's MLP input at the last prompt token), and the ε_init chosen from it.

    python benchmarks/grace_radius.py [--layer 24]
"""

from __future__ import annotations

import argparse

from baselines.grace import GRACEConfig, GRACEEditor, calibrate_radius
from lte.core.models import load_model
from lte.core.settings import Settings


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None)
    parser.add_argument("--layer", type=int, default=GRACEConfig.layer)
    parser.add_argument("--quantile", type=float, default=GRACEConfig.eps_quantile)
    args = parser.parse_args()
    settings = Settings.from_env(model=args.model)
    editor = GRACEEditor(load_model(settings.model, settings.home), GRACEConfig(layer=args.layer))
    summary = calibrate_radius(editor, args.quantile)
    editor.restore()
    print(f"layer {args.layer}: nearest-neighbour key distance over {summary['n']} prompts: "
          f"min {summary['nn_min']:.3f}, median {summary['nn_median']:.3f}, max {summary['nn_max']:.3f}; "
          f"eps_init = q{args.quantile:g} / 2 = {summary['eps_init']:.3f} (Euclidean)")


if __name__ == "__main__":
    main()
