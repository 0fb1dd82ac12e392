"""One module per `lte` subcommand; each adds its parser with `register(commands)`."""

from lte.commands import align, ask, edit, evaluate, pending, train


def register_all(commands) -> None:
    for module in (align, ask, edit, evaluate, train, pending):
        module.register(commands)
