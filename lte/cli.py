"""The `lte` command line. Global options (--model, --store, --home, ...) come before the subcommand and are also
read from LTE_MODEL, LTE_STORE, LTE_HOME, so every subcommand sees the same model and store.

Errors the user can fix (`lte.core.errors.LTEError`) print one line and exit 2; anything else is a bug and keeps its
traceback. `--debug` prints the traceback of user errors too."""

from __future__ import annotations

import argparse
import logging
import sys
import traceback

from lte.core.errors import LTEError
from lte.core.settings import DEFAULT_MODEL, Settings

EPILOG = """examples:
  lte ask "Where is the Space Needle?"
  lte edit add my_edits.jsonl            # JSONL/JSON/CSV or any dataset format lte reads
  lte --store ./edits edit search "Where is the Space Needle?"
  lte align --out ./aligned              # fine-tune the default model for in-context editing
  lte --model ./aligned eval --editor lte --dataset counterfact-edit.json --limit 100
"""


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    argv = sys.argv[1:] if argv is None else argv
    args = parser.parse_args(argv)
    args.argv = argv  # the command as typed, for reports that record how they were made
    if not getattr(args, "handler", None):
        parser.print_help()
        return 2
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(message)s")
    settings = Settings.from_env(home=args.home, model=args.model, store=args.store, chroma_url=args.chroma_url,
                                 records=args.records_url,
                                 collection=args.collection, datasets=args.datasets_dir, device=args.device,
                                 dtype=args.dtype, chat_template=args.chat_template)
    try:
        return args.handler(args, settings) or 0
    except LTEError as error:
        if args.debug:
            traceback.print_exc()
        print(f"lte: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("lte: interrupted", file=sys.stderr)
        return 130


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lte", description="Keep a language model's facts current: store edits, retrieve them into the prompt "
        "of a model aligned to apply them (Learning to Edit).", epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help=f"model: '{DEFAULT_MODEL}' (default, bundled), 'tiny-random', a directory "
                        "(e.g. from `lte align`), a .gguf file or a hub id [env LTE_MODEL]")
    parser.add_argument("--store", help="edit store directory [env LTE_STORE; default HOME/store]")
    parser.add_argument("--home", help="cache directory for models, statistics, checkpoints "
                        "[env LTE_HOME; default ~/.cache/lte]")
    parser.add_argument("--chroma-url", help="use a running Chroma server (http://host:port) instead of the "
                        "embedded store [env LTE_CHROMA_URL]")
    parser.add_argument("--records-url", help="database of edit records (SQLAlchemy URL): postgresql://user@host/db "
                        "for replicas on several machines [env LTE_RECORDS_URL; default the store's records.sqlite3, "
                        "or with --chroma-url HOME/records/HOST-PORT.sqlite3]")
    parser.add_argument("--collection", help="named edit set inside the store [env LTE_COLLECTION; default edits]")
    parser.add_argument("--datasets-dir", help="folder of the public datasets known by name (counterfact, zsre, ...) "
                        "[env LTE_DATASETS; default ./shared/datasets or ../shared/datasets]")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda", "mps"), help="where models run; auto: CUDA "
                        "when visible, else the CPU [env LTE_DEVICE; default auto]")
    parser.add_argument("--dtype", choices=("auto", "float32", "bfloat16", "float16"), help="weights' precision; "
                        "auto: bfloat16 on CUDA where supported, else float32 (editors' solves stay float64; "
                        "`lte align` keeps float32 weights and trains in mixed precision, auto there also meaning "
                        "bfloat16 on a CPU with native bfloat16 instructions) [env LTE_DTYPE]")
    parser.add_argument("--chat-template", metavar="FILE", help="Jinja chat template for a model that ships none "
                        "(e.g. a GGUF without one; lte's plain prompt format is used otherwise) "
                        "[env LTE_CHAT_TEMPLATE]")
    parser.add_argument("-v", "--verbose", action="store_true", help="log what is happening")
    parser.add_argument("--debug", action="store_true", help="print the traceback of errors too")
    commands = parser.add_subparsers(title="commands", metavar="COMMAND")
    from lte.commands import register_all

    register_all(commands)
    return parser


if __name__ == "__main__":
    sys.exit(main())
