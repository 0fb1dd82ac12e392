"""`lte align`: fine-tune the model to apply in-context edits (LTE phase 1)."""

from __future__ import annotations

from pathlib import Path

from lte.core.catalog import DATA_HELP, data_files
from lte.core.models import load_model
from lte.method.align.data import AlignDataConfig
from lte.method.align.finetune import AlignConfig
from retrieval.scope import ScopeConfig


def register(commands) -> None:
    defaults, data = AlignConfig(), AlignDataConfig()
    parser = commands.add_parser(
        "align", help="fine-tune the model to apply updated facts given in its prompt",
        description="Build the alignment set (in-scope, out-of-scope, linguistic and describe conversations; the "
        "base model's own answers are self-distilled for all but in-scope) and fine-tune --model on it with TRL. "
        "The output directory is a model usable as --model/LTE_MODEL. Re-running resumes from the last checkpoint. "
        "The global --dtype sets the precision of the training passes (the weights stay float32); its default, "
        "auto, trains in bfloat16 where the hardware computes it natively (a CUDA GPU that supports it, a CPU with "
        "AVX512-BF16 or AMX: 1.55x faster than float32 on the 2-core CPU we measure on, quality within a few "
        "cases) and in float32 elsewhere; `lte --dtype float32 align` forces float32 (results/align-recipes.txt). "
        "The manifest records which one ran (trained_in). After the model, the scope model that decides which "
        "retrieved edits reach the prompt is trained on the same --data files (`lte scope train`; OUT/scope).")
    parser.add_argument("--out", help="output directory (default HOME/aligned/<model>)")
    parser.add_argument("--data", nargs="+", default=[], metavar="FILE",
                        help=DATA_HELP)
    parser.add_argument("--max-steps", type=int, default=defaults.max_steps, help="stop after N steps (-1: epochs)")
    parser.add_argument("--epochs", type=float, default=defaults.epochs)
    parser.add_argument("--batch-size", type=int, default=defaults.batch_size)
    parser.add_argument("--learning-rate", type=float, default=defaults.learning_rate)
    parser.add_argument("--lora", action="store_true", help="train a LoRA adapter instead of all weights")
    parser.add_argument("--in-scope", type=int, default=data.in_scope, help="in-scope rows")
    parser.add_argument("--out-of-scope", type=int, default=data.out_of_scope, help="out-of-scope rows")
    parser.add_argument("--linguistic", type=int, default=data.linguistic, help="instruction rows")
    parser.add_argument("--describe", type=int, default=data.describe,
                        help="open requests about an edited subject ('Tell me about X.')")
    parser.add_argument("--seed", type=int, default=defaults.seed)
    parser.add_argument("--no-scope", action="store_true",
                        help="skip training the scope model (OUT/scope; `lte scope train` trains one later)")
    parser.set_defaults(handler=run)


def run(args, settings) -> int:
    from lte.method.align.finetune import align

    name = Path(settings.model).name or "model"
    out = Path(args.out).expanduser() if args.out else settings.home / "aligned" / name
    args.data = data_files(args.data, settings)
    data = AlignDataConfig(in_scope=args.in_scope, out_of_scope=args.out_of_scope, linguistic=args.linguistic,
                           describe=args.describe, seed=args.seed)
    cfg = AlignConfig(out=out, data_files=args.data, max_steps=args.max_steps, epochs=args.epochs,
                      batch_size=args.batch_size, learning_rate=args.learning_rate, lora=args.lora,
                      seed=args.seed, data=data, precision=settings.dtype,
                      scope=None if args.no_scope else ScopeConfig(seed=args.seed))
    # float32 master weights on the chosen device; --dtype sets the mixed precision of the passes
    align(load_model(settings.model, settings.home, **(settings.load_options | {"dtype": "float32"})), cfg)
    print(f"aligned model written to {out}; use it with: lte --model {out} ask \"...\"")
    return 0
