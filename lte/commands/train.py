"""`lte train ke|mend`: train a learned editor's network for the current model (one loop, baselines/training.py)."""

from __future__ import annotations

from pathlib import Path

from lte.core.catalog import DATA_HELP
from lte.core.models import load_model


def register(commands) -> None:
    parser = commands.add_parser("train", help="train a learned editor (lte train ke|mend)",
                                 description="Train an editor that must learn before it can edit.")
    sub = parser.add_subparsers(title="editors", metavar="EDITOR")
    from lte.registry import learned_editors

    for name, spec in learned_editors().items():
        help_text = spec.paper
        method = sub.add_parser(name, help=help_text,
                                description=f"Train the {help_text} on training-split edit cases; resumable (re-run "
                                "the same command). Without --data it trains on counterfactual edits sampled from "
                                "lte's shipped tables.")
        method.add_argument("--data", nargs="+", default=[], metavar="FILE",
                            help=DATA_HELP)
        method.add_argument("--out", help=f"checkpoint path (default HOME/{name}/<model>/{name}.pt)")
        method.add_argument("--steps", type=int, help="training edits (default: TrainConfig.steps, 250)")
        method.add_argument("--dev", type=int, default=20, help="held-out cases for the curve (default 20)")
        method.add_argument("--seed", type=int, default=0)
        method.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                            help="a TrainConfig field, e.g. --set lambda_lr=0.1 --set margin=0.05 (see "
                                 "baselines/training.py for each default and why); repeatable")
        method.set_defaults(handler=run, method_name=name)
    parser.set_defaults(handler=lambda args, settings: parser.print_help() or 2)


def run(args, settings) -> int:
    import random

    from baselines.learned import default_checkpoint
    from baselines.training import TrainConfig, train_learned
    from lte.core.catalog import data_files
    from lte.core.config import build_config, parse_pairs
    from lte.core.datasets import load_cases
    from lte.core.tables import table_cases
    from lte.registry import spec_for

    method = spec_for(args.method_name).learned_method()
    overrides = {**method.train_defaults, "dev_cases": args.dev, "seed": args.seed, **parse_pairs(args.set)}
    if args.steps:
        overrides["steps"] = args.steps
    cfg = build_config(TrainConfig, overrides, f"lte train {method.name}")  # refused before the model loads
    loaded = load_model(settings.model, settings.home, **settings.load_options)
    files = data_files(args.data, settings)
    cases = [c for path in files for c in load_cases(path)] or table_cases(1200, random.Random(args.seed))
    random.Random(cfg.seed).shuffle(cases)
    dev, train = cases[: cfg.dev_cases], cases[cfg.dev_cases:]
    out = Path(args.out) if args.out else default_checkpoint(settings.home, loaded.spec, method.name)
    checkpoint = train_learned(method, loaded, train, dev, out, cfg=cfg)
    for point in checkpoint.curve:
        print(f"step {point['step']:>5}: edit success {point['edit_success']:.3f}, retain {point['retain']:.3f}, "
              f"lambda {point['lambda']}")
    print(f"checkpoint: {out}")
    return 0
