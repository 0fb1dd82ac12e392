"""One module per `lte` subcommand; each adds its parser with `register(commands)`."""

from lte.commands import align, ask, bench, edit, evaluate, scope, serve, trace, train


def register_all(commands) -> None:
    for module in (align, ask, edit, evaluate, scope, serve, trace, train, bench):
        module.register(commands)
