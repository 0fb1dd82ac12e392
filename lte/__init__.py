"""lte: keep a language model's facts current with retrieved, in-context edits (Learning to Edit).

The public API, importable from here (the heavy ones load on first use):

    from lte import Edit, LTEConfig, LTEEditor, Settings, load_model
"""

from __future__ import annotations

from lte.core.errors import SchemaError
from lte.core.schema import Edit, EditCase, Probe
from lte.core.settings import Settings

__all__ = ["Edit", "EditCase", "Probe", "SchemaError", "Settings", "LTEConfig", "LTEEditor", "load_model"]
__version__ = "0.1.0"
_LAZY = {"LTEConfig": "lte.method.editor", "LTEEditor": "lte.method.editor", "load_model": "lte.core.models"}


def __getattr__(name: str):
    if name in _LAZY:  # torch and transformers load only when the model-facing API is used
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'lte' has no attribute {name!r}")
