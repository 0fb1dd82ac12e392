"""Retrieval for lte: a sentence embedder and the Chroma-backed edit store."""

from retrieval.embedder import Embedder
from retrieval.store import EditStore, Hit

__all__ = ["Embedder", "EditStore", "Hit"]
