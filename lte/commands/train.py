"""`lte train ke`: train KnowledgeEditor's hypernetwork for the current model."""

from __future__ import annotations

from pathlib import Path

from lte.models import load_model


def register(commands) -> None:
    parser = commands.add_parser("train", help="train a learned editor (lte train ke)",
                                 description="Train an editor that must learn before it can edit.")
    sub = parser.add_subparsers(title="editors", metavar="EDITOR")
    ke = sub.add_parser("ke", help="KnowledgeEditor hypernetwork",
                        description="Train KnowledgeEditor on training-split edit cases; resumable. Without --data "
                        "it trains on counterfactual edits sampled from lte's shipped tables.")
    ke.add_argument("--data", nargs="+", default=[], metavar="FILE", help="training datasets (training splits only)")
    ke.add_argument("--out", help="checkpoint path (default HOME/ke/<model>/ke.pt)")
    ke.add_argument("--steps", type=int, help="training edits (default: KETrainConfig.steps, 250)")
    ke.add_argument("--dev", type=int, default=20, help="held-out cases for the curve (default 20)")
    ke.add_argument("--seed", type=int, default=0)
    ke.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="a KETrainConfig field, e.g. --set lambda_lr=0.1 --set margin=0.05 (see "
                         "baselines/ke_training.py for each default and why); repeatable")
    ke.set_defaults(handler=run_ke)
    parser.set_defaults(handler=lambda args, settings: parser.print_help() or 2)


def run_ke(args, settings) -> int:
    import random

    from baselines.ke_training import KETrainConfig, train_ke
    from baselines.knowledge_editor import default_checkpoint
    from lte.align.data import table_cases
    from lte.config import build_config, parse_pairs
    from lte.datasets import load_cases

    overrides = {"dev_cases": args.dev, "seed": args.seed, **parse_pairs(args.set)}
    if args.steps:
        overrides["steps"] = args.steps
    cfg = build_config(KETrainConfig, overrides, "lte train ke")  # refused before the model loads
    loaded = load_model(settings.model, settings.home)
    cases = [c for path in args.data for c in load_cases(path)] or table_cases(1200, random.Random(args.seed))
    random.Random(cfg.seed).shuffle(cases)
    dev, train = cases[: cfg.dev_cases], cases[cfg.dev_cases:]
    out = Path(args.out) if args.out else default_checkpoint(settings.home, loaded.spec)
    checkpoint = train_ke(loaded, train, dev, out, cfg=cfg)
    for point in checkpoint.curve:
        print(f"step {point['step']:>5}: edit success {point['edit_success']:.3f}, retain {point['retain']:.3f}, "
              f"lambda {point['lambda']}")
    print(f"checkpoint: {out}")
    return 0
