"""Retrieval for lte: a sentence embedder, the Chroma-backed edit store, and the scope model that decides which
retrieved edits answer a question."""

from retrieval.embedder import Embedder
from retrieval.scope import ScopeModel, train_scope
from retrieval.store import EditStore, Hit

__all__ = ["Embedder", "EditStore", "Hit", "ScopeModel", "train_scope"]
