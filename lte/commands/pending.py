"""Subcommands whose implementation has not landed yet: they say so instead of failing obscurely."""

from __future__ import annotations

PENDING = {
    "bench": "compare every editor on every dataset and write RESULTS.md",
}


def register(commands) -> None:
    for name, help_text in PENDING.items():
        parser = commands.add_parser(name, help=f"{help_text} (not implemented yet)", add_help=True)
        parser.add_argument("rest", nargs="*", help="ignored")
        parser.set_defaults(handler=_not_implemented(name))


def _not_implemented(name: str):
    def run(args, settings) -> int:
        from lte.cli import CommandError

        raise CommandError(f"'lte {name}' is not implemented yet in this version")

    return run
