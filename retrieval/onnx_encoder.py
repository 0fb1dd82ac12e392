"""A sequence-classification encoder run by ONNX Runtime: exported once from its PyTorch weights, then scored
without torch in the loop.

On this project's two-core CPU, ONNX Runtime scores six (question, edit) pairs of the scope model's cross-encoder in
12.5 ms where PyTorch takes 22.6 ms, changing none of its decisions on 1,357 probe pairs; int8 quantisation was
faster still but changed 5–8 % of them, so the graph stays in fp32 (results/scope-latency.txt,
benchmarks/scope_backends.py).
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from lte.core import files

log = logging.getLogger(__name__)


def export_onnx(module, tokenizer, path: Path) -> None:
    """Write `module` (a transformers model taking the tokenizer's inputs, returning logits) to `path` as an ONNX
    graph with the batch and token axes free; whole or not at all."""
    import torch

    names = list(tokenizer.model_input_names)
    example = tokenizer(["a question"], ["an edit prompt"], return_tensors="pt")
    batch, tokens = torch.export.Dim("batch"), torch.export.Dim("tokens")
    module.eval()
    log.info("lte: exporting %s (once, a few seconds)", path)
    exporter_log = logging.getLogger("torch.onnx")
    level = exporter_log.level
    exporter_log.setLevel(logging.ERROR)  # its notes (optional torchvision ops, axis names) are not the user's
    try:
        with files.atomic_path(path) as staging, torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(module, (), str(staging), kwargs={k: example[k] for k in names}, input_names=names,
                              output_names=["logits"], dynamic_shapes={k: {0: batch, 1: tokens} for k in names},
                              dynamo=True, external_data=False, verbose=False)
    finally:
        exporter_log.setLevel(level)


class OnnxClassifier:
    """Logits of text pairs from an exported graph, tokenized as the PyTorch model tokenizes them."""

    def __init__(self, path: Path, tokenizer, max_length: int | None, threads: int):
        import onnxruntime

        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = threads
        # Idle threads sleep rather than spin: a search runs PyTorch (the question's embedding) right before this,
        # and spinning threads of the two pools take each other's cores (search plus decision at 10,000 edits:
        # 36.7 ms spinning, 29.0 ms not; results/scope-latency.txt).
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        options.log_severity_level = 3  # warnings about unused initialisers are the exporter's, not the user's
        self.session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        self.inputs = [i.name for i in self.session.get_inputs()]
        self.tokenizer = tokenizer
        self.max_length = max_length

    def logits(self, pairs: Sequence[tuple[str, str]], batch_size: int = 64) -> np.ndarray:
        out = [self._batch(pairs[i:i + batch_size]) for i in range(0, len(pairs), batch_size)]
        return np.concatenate(out) if out else np.zeros(0)

    def _batch(self, pairs: Sequence[tuple[str, str]]) -> np.ndarray:
        encoded = self.tokenizer([a for a, _ in pairs], [b for _, b in pairs], padding=True, truncation=True,
                                 max_length=self.max_length, return_tensors="np")
        feed = {name: encoded[name].astype(np.int64) for name in self.inputs}
        return self.session.run(None, feed)[0].reshape(-1)


def onnx_classifier(path: Path, module, tokenizer, max_length: int | None, threads: int) -> OnnxClassifier | None:
    """The graph at `path` (name it by the weights' hash, so new weights get a new export), exported first where
    there is none; None (PyTorch then scores) where it cannot be made, say because the folder is read-only or the
    exporter refuses the model, with the reason logged."""
    try:
        if not path.is_file():
            export_onnx(module, tokenizer, path)
        return OnnxClassifier(path, tokenizer, max_length, threads)
    except Exception as error:  # any failure here only costs speed
        log.warning("lte: %s: no ONNX graph (%s: %s); scoring with PyTorch", path, type(error).__name__, error)
        return None
