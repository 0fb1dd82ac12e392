"""`docs/cli.md`: every command's `--help`, generated from the parsers so the reference cannot drift from the code.
Regenerate with `python -m lte.cli_reference > docs/cli.md` (a test checks it is current)."""

from __future__ import annotations

import argparse
import os

HEADER = """# CLI reference

Generated from `lte`'s own parsers by `python -m lte.cli_reference > docs/cli.md`; `lte COMMAND --help` prints
the same text. Global options go before the subcommand (`lte --model DIR ask ...`) and are also read from the
environment variables their help names. Errors you can fix (a bad file, line or field; an unknown option; a missing
model or checkpoint) print one line, `lte: error: ...`, and exit with status 2; anything else is a bug and shows its
traceback (`--debug` shows it for both).
"""
WIDTH = "100"  # argparse wraps to $COLUMNS; fixed so the file is the same on every terminal


def reference() -> str:
    from lte.cli import build_parser

    previous = os.environ.get("COLUMNS")
    os.environ["COLUMNS"] = WIDTH
    try:
        sections = [_section("lte", build_parser())]
        sections += [_section(name, parser) for name, parser in _subcommands(build_parser(), "lte")]
    finally:
        os.environ.pop("COLUMNS") if previous is None else os.environ.__setitem__("COLUMNS", previous)
    return HEADER + "".join(sections)


def _subcommands(parser: argparse.ArgumentParser, prefix: str):
    """(full name, parser) of every subcommand, depth first, in the order they are registered."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield f"{prefix} {name}", sub
                yield from _subcommands(sub, f"{prefix} {name}")


def _section(name: str, parser: argparse.ArgumentParser) -> str:
    return f"\n## `{name}`\n\n```text\n{parser.format_help().rstrip()}\n```\n"


if __name__ == "__main__":
    print(reference(), end="")
