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
    ke.set_defaults(handler=run_ke)
    parser.set_defaults(handler=lambda args, settings: parser.print_help() or 2)


def run_ke(args, settings) -> int:
    import random

    from baselines.ke_training import KETrainConfig, train_ke
    from baselines.knowledge_editor import default_checkpoint
    from lte.align.data import table_cases
    from lte.datasets import load_cases

    loaded = load_model(settings.model, settings.home)
    cases = [c for path in args.data for c in load_cases(path)] or table_cases(1200, random.Random(args.seed))
    random.Random(args.seed).shuffle(cases)
    dev, train = cases[: args.dev], cases[args.dev:]
    out = Path(args.out) if args.out else default_checkpoint(settings.home, loaded.spec)
    cfg = KETrainConfig(steps=args.steps or KETrainConfig.steps, dev_cases=args.dev, seed=args.seed)
    checkpoint = train_ke(loaded, train, dev, out, cfg=cfg)
    for point in checkpoint.curve:
        print(f"step {point['step']:>5}: edit success {point['edit_success']:.3f}, retain {point['retain']:.3f}, "
              f"lambda {point['lambda']}")
    print(f"checkpoint: {out}")
    return 0
