"""The errors a user can fix. The CLI prints them as `lte: error: ...` (exit 2, `--debug` adds the trace); any
other exception is a bug and keeps its traceback. `lte bench` marks a cell *skipped* only for
`EditorUnavailableError` (the method cannot run here yet, e.g. no trained checkpoint) and *failed* for anything else.
"""

from __future__ import annotations


class LTEError(Exception):
    """Base class: something the user can fix, with a message that says what and where."""

    def __str__(self) -> str:  # KeyError would quote the message; every subclass prints it as written
        return str(self.args[0]) if self.args else ""


class InputError(LTEError, ValueError):
    """A bad input: a missing file, a wrong argument or combination of arguments, an unknown name."""


class InputFileError(InputError, FileNotFoundError):
    """An input file or directory that does not exist."""


class SchemaError(InputError):
    """A record that does not fit the schema; the message names the file, line (or record) and field."""


class ConfigError(InputError):
    """An editor or run option that does not exist, has the wrong type, or is fixed elsewhere (a checkpoint)."""


class NotFoundError(LTEError, KeyError):
    """A named thing (an edit id) that is not there."""


class ModelNotFoundError(LTEError, FileNotFoundError):
    """A model (or the embedder) that is not installed or not where the spec points."""


class EditorUnavailableError(LTEError):
    """The editor cannot run in this set-up yet (e.g. a learned editor with no trained checkpoint)."""


class CheckpointError(EditorUnavailableError, FileNotFoundError):
    """A learned editor's checkpoint is missing or was trained for another model; the message says how to train."""


class MissingExtraError(LTEError, ImportError):
    """A command that needs an optional part of lte that is not installed (`pip install 'lte[train]'`)."""


EXTRAS = {"trl": "train", "datasets": "train", "matplotlib": "bench"}  # module → the extra that installs it


def need(module: str, what: str):
    """Import an optional dependency, or say which extra installs it: serving needs none of them."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        extra = EXTRAS.get(module.split(".")[0], "train")
        raise MissingExtraError(f"{what} needs {module}, which a plain install leaves out: "
                                f"pip install 'lte[{extra}]'") from None
