"""lte: keep a language model's facts current with retrieved, in-context edits (Learning to Edit)."""

from lte.schema import Edit, EditCase, Probe, SchemaError

__all__ = ["Edit", "EditCase", "Probe", "SchemaError"]
__version__ = "0.1.0"
