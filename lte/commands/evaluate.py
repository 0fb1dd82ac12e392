"""`lte eval`: score one editor on a dataset with the shared harness."""

from __future__ import annotations

import json
import shlex
import time
from pathlib import Path

from lte.core import files
from lte.core.catalog import KNOWN, dataset_path
from lte.core.config import changed_options, parse_pairs
from lte.core.datasets import load_cases, load_edits
from lte.core.errors import ConfigError
from lte.core.harness import MODES, EvalConfig, evaluate, format_table
from lte.core.models import load_model
from lte.registry import EDITORS, base_model_of, build_editor, editor_config


def register(commands) -> None:
    editors = "\n".join(f"  {name:<14} {spec.description}" for name, spec in EDITORS.items())
    parser = commands.add_parser("eval", help="evaluate an editor on a dataset",
                                 description="Apply a dataset's edits with an editor and score reliability, "
                                 "generalization, locality and portability (token_acc, gen_acc, prob_win), "
                                 f"fluency and timing.\n\neditors:\n{editors}",
                                 formatter_class=__import__("argparse").RawDescriptionHelpFormatter)
    parser.add_argument("--editor", required=True, choices=list(EDITORS), metavar="NAME")
    parser.add_argument("--dataset", required=True,
                        help=f"dataset file (any format lte reads), a known name ({', '.join(KNOWN)}: read from "
                        "the datasets folder, see --datasets-dir) or a hub name")
    parser.add_argument("--limit", type=int, help="first N cases (after --skip)")
    parser.add_argument("--skip", type=int, default=0, metavar="N",
                        help="leave out the first N cases (e.g. the ones a gate was calibrated on)")
    parser.add_argument("--mode", choices=MODES, default="single", help=" | ".join(MODES))
    parser.add_argument("--edit-batch", type=int, metavar="B",
                        help="sequential-batch: the edits of B cases per apply call, one call after another")
    parser.add_argument("--score-sample", type=int, metavar="K",
                        help="apply the edits of every case but score a seeded sample of K cases (mass editing)")
    parser.add_argument("--extra-edits", nargs="+", default=[], metavar="FILE",
                        help="edits (any format lte reads) applied before the dataset's and never scored, e.g. "
                        "to score 500 cases in a store of 10,000 edits; needs --mode batch or sequential")
    parser.add_argument("--seed", type=int, default=EvalConfig.seed, help="seed of the scored sample")
    parser.add_argument("--out", help="write the report as JSON here")
    parser.add_argument("--batch-size", type=int, default=16, help="prompts per forward pass")
    parser.add_argument("--max-new-tokens", type=int, default=EvalConfig.max_new_tokens)
    parser.add_argument("--fluency-cases", type=int, default=EvalConfig.fluency_cases)
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="an option of the editor's config, checked before the model loads, e.g. --set k=5 "
                        "--set scope=DIR or gate=FILE (lte), --set layer=6 (rome, grace), --set checkpoint=FILE (ke); "
                        "repeatable")
    parser.add_argument("--no-general", action="store_true",
                        help="skip the general-ability probe that batch and sequential runs end with (195 prompts "
                        "and a fixed passage scored with every edit applied, against the unedited model)")
    parser.add_argument("--no-progress", action="store_true")
    parser.set_defaults(handler=run)


def run(args, settings) -> int:
    cfg = EvalConfig(mode=args.mode, limit=args.limit, max_new_tokens=args.max_new_tokens,
                     fluency_cases=args.fluency_cases, score_sample=args.score_sample, seed=args.seed,
                     progress=not args.no_progress, edit_batch=args.edit_batch, general=not args.no_general)
    if args.extra_edits and args.mode == "single":
        raise ConfigError("--extra-edits needs --mode batch or sequential (single mode restores after every case)")
    options = editor_config(args.editor, parse_pairs(args.set))  # a wrong --set fails before anything loads
    label, path = dataset_path(args.dataset, settings)
    cases = load_cases(str(path))[args.skip:][: args.limit]
    extra = [edit for path in args.extra_edits for edit in load_edits(path)]
    loaded = load_model(settings.model, settings.home, **settings.load_options)
    editor = build_editor(args.editor, settings, loaded, options, args.batch_size)
    reference_model = base_model_of(loaded, settings)
    reference = build_editor("none", settings, reference_model, batch_size=args.batch_size)
    start = time.time()
    report = evaluate(editor, cases, reference, cfg, dataset=label + (f" (from case {args.skip})" if args.skip else ""),
                      extra_edits=extra)
    report.update(wall_s=round(time.time() - start, 1), command=shlex.join(["lte"] + getattr(args, "argv", [])),
                  options=changed_options(options))
    print(format_table(report))
    if args.out:
        files.write_text(Path(args.out), settings.portable(json.dumps(report, indent=2)))
    return 0
