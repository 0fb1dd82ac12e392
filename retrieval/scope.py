"""The scope model: a cross-encoder that reads a question and a candidate edit together and says whether the edit
answers the question.

Search finds candidates by meaning (a nearest-neighbour query over the edits' keys); the scope model decides which
of them enter the prompt: none, one or several. A bi-encoder cosine cannot tell "The name of the founder of X is"
from "The name of the country of X is" (both name X and share the frame); a cross-encoder attends across the two
texts and can. The idea is SERAC's scope classifier (Mitchell et al., 2022) and KEDAS's filter (2025).

The model is a sentence-transformers `CrossEncoder` with one logit, initialised from the bundled all-MiniLM-L6-v2
embedder (a 6-layer BERT that ships offline and already encodes these texts for search: 22 M parameters, a few ms
per pair on two CPU cores), trained with binary cross-entropy on pairs from `retrieval.scope_data`. The edit side of
a pair is the edit's prompt: the relation it changes and the subject it is about; its answer says nothing about
scope. A folder holds the model, its ONNX export (`model.<identity>.onnx`) and `scope.json` (threshold, backend,
what it was trained on).

On the CPU the model is scored by ONNX Runtime (`retrieval.onnx_encoder`): the same probabilities in less than half
PyTorch's time, which is most of a question's search cost (results/scope-latency.txt). `"backend": "torch"` in
`scope.json`, or `backend="torch"`, scores with PyTorch; a folder without the export gets one on first use.
"""

from __future__ import annotations

import hashlib
import json
import logging
import random
import shutil
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from lte.core import files
from lte.core.errors import InputFileError, need
from retrieval.embedder import resolve_embedder
from retrieval.gate import subject_pattern
from retrieval.onnx_encoder import onnx_classifier
from retrieval.scope_data import ScopePair, mix

log = logging.getLogger(__name__)

META_FILE = "scope.json"
BACKENDS = ("onnx", "torch")
SCOPE_DIR = "scope"  # the scope model `lte align` trains inside the aligned model's folder
INPUTS = ("plain", "subject_marked")  # what a scope model reads (ScopeInfo.inputs)
SUBJECT_MARK = "[MASK]"  # one token of the encoder's vocabulary that no question or edit contains


def scope_beside(model_spec: str) -> ScopeModel | None:
    """The scope model inside a model folder (`lte align` output), if it has one."""
    path = Path(model_spec).expanduser() / SCOPE_DIR
    return ScopeModel(path) if (path / META_FILE).is_file() else None


@dataclass
class ScopeConfig:
    """base: the encoder the cross-encoder starts from (default the bundled embedder; any BERT-style path or name).
    epochs / batch_size / learning_rate / warmup_ratio: one pass over ~43,000 pairs at batch 32 with the usual
    fine-tuning rate for a small BERT (2e-5 to 5e-5; the higher end, as there is one epoch). max_length: tokens per
    pair (question + edit prompt; the longest training pairs are ~60). threshold: p(in scope) an edit needs to enter
    the prompt (0.5 with positives weighted to balance the classes). balance: weight positives by negatives/positives
    in the loss (the pairs are ~40 % positive). max_steps: stop early (tests, trials); 0 = the whole epoch count.
    mark_subject: read pairs as `marked_pair` writes them (the edit's subject replaced by one marker token in both
    texts, its name after the edit prompt), so that the relation is compared word for word whenever the question
    names the edit's subject, however long the name; off by default: it routes ZsRE better and wiki_counterfact
    worse than plain texts (results/scope-subject-marked.txt)."""

    base: str | None = None
    epochs: int = 1
    batch_size: int = 32
    learning_rate: float = 5e-5
    warmup_ratio: float = 0.1
    max_length: int = 96
    threshold: float = 0.5
    balance: bool = True
    max_steps: int = 0
    seed: int = 0
    mark_subject: bool = False


@dataclass
class ScopeInfo:
    """What `scope.json` records: the threshold in use, what scores the model on the CPU (onnx or torch; on a GPU
    always torch), what it reads (INPUTS: plain texts, or subject-marked ones; folders that record none read plain
    texts) and how the model was made."""

    threshold: float = 0.5
    backend: str = "onnx"
    inputs: str = "plain"
    base: str = ""
    pairs: int = 0
    mix: dict[str, int] = field(default_factory=dict)
    train_seconds: float = 0.0
    fine_tuned_from: str = ""


class ScopeModel:
    """p(the edit answers the question) for (question, edit prompt) pairs; an edit passes at p ≥ threshold."""

    def __init__(self, path: str | Path, device: str = "cpu", backend: str | None = None):
        """backend: onnx or torch on the CPU; default the one `scope.json` records (onnx where it records none)."""
        path = Path(path).expanduser()
        if not (path / META_FILE).is_file():
            raise InputFileError(f"lte: {path}: not a scope model (no {META_FILE}; train one with `lte scope train`)")
        import torch
        from sentence_transformers import CrossEncoder

        self.path = path
        self.info = ScopeInfo(**json.loads((path / META_FILE).read_text()))
        self.backend = backend or self.info.backend
        if self.backend not in BACKENDS:
            raise InputFileError(f"lte: {path / META_FILE}: backend {self.backend!r} is not one of "
                                 f"{', '.join(BACKENDS)}")
        if self.info.inputs not in INPUTS:
            raise InputFileError(f"lte: {path / META_FILE}: inputs {self.info.inputs!r} is not one of "
                                 f"{', '.join(INPUTS)}")
        self.model = CrossEncoder(str(path), num_labels=1, device=device)
        self.onnx = None
        if self.backend == "onnx" and device == "cpu":
            self.onnx = onnx_classifier(path / f"model.{self.identity}.onnx", classifier_of(self.model),
                                        self.model.tokenizer, self.model.max_length, torch.get_num_threads())
        self.backend = "onnx" if self.onnx is not None else "torch"

    @property
    def threshold(self) -> float:
        return self.info.threshold

    @property
    def identity(self) -> str:
        """A short hash of the weights: two folders with the same weights decide alike."""
        digest = hashlib.sha256()
        for weights in sorted(self.path.glob("*.safetensors")):
            digest.update(weights.read_bytes())
        return digest.hexdigest()[:16]

    def probabilities(self, pairs: Sequence[tuple[str, str]], subjects: Sequence[str] | None = None,
                      batch_size: int = 64) -> np.ndarray:
        """p(in scope) for (question, edit prompt) pairs; subjects: each pair's edit subject, which a
        subject-marked model needs."""
        if not pairs:
            return np.zeros(0)
        if self.info.inputs == "subject_marked":
            if subjects is None or len(subjects) != len(pairs):
                raise ValueError(f"{self.path}: this scope model reads the edit's subject: pass one subject per pair")
            pairs = [marked_pair(q, e, s) for (q, e), s in zip(pairs, subjects)]
        if self.onnx is not None:
            return 1.0 / (1.0 + np.exp(-self.onnx.logits(pairs, batch_size).astype(np.float64)))
        import torch

        scores = self.model.predict(list(pairs), batch_size=batch_size, show_progress_bar=False,
                                    activation_fn=torch.nn.Sigmoid(), convert_to_numpy=True)
        return np.asarray(scores, dtype=np.float64).reshape(-1)

    def accuracy(self, pairs: Sequence[ScopePair]) -> float:
        """Share of labelled pairs decided right at the threshold."""
        p = self.probabilities([(x.question, x.edit_prompt) for x in pairs], [x.subject for x in pairs])
        return float(np.mean((p >= self.threshold) == np.array([x.label for x in pairs]))) if pairs else 0.0

    def describe(self) -> str:
        return (f"scope model {self.path} (cross-encoder on {self.backend}, threshold {self.threshold:.2f}, "
                f"{self.info.pairs} pairs)")


def load_decider(path: str | Path, backend: str | None = None):
    """What decides scope from a path: a scope model folder (ScopeModel, scored by `backend` or the one its
    scope.json records), else a relevance gate's JSON file (Gate)."""
    from retrieval.gate import Gate

    path = Path(path).expanduser()
    return ScopeModel(path, backend=backend) if (path / META_FILE).is_file() else Gate.load(path)


def marked_pair(question: str, edit_prompt: str, subject: str) -> tuple[str, str]:
    """(question, edit prompt) as a subject-marked scope model reads them: wherever either text names the edit's
    subject (whole words, any case), one marker token stands for it, and the subject's name follows the edit prompt.
    When the question names the subject, the model compares relations word for word ("[MASK] follows" against
    "The name of the country which [MASK] is associated with is") instead of finding a long shared name in both;
    when it names someone else, or the subject under an alias, the model compares that name with the one after
    the edit."""
    name = subject.strip()
    if not name:
        return question, edit_prompt
    pattern = subject_pattern(name)
    return pattern.sub(SUBJECT_MARK, question), f"{pattern.sub(SUBJECT_MARK, edit_prompt)} | {name}"


def classifier_of(model):
    """The transformers sequence-classification module inside a sentence-transformers CrossEncoder."""
    return next(m for m in model.modules() if type(m).__name__.endswith("ForSequenceClassification"))


def train_scope(pairs: Sequence[ScopePair], out: str | Path, cfg: ScopeConfig | None = None,
                progress: bool = True, start_from: str | Path | None = None) -> ScopeModel:
    """Train a scope model on `pairs` and write it to `out` (whole or not at all: it is built in a sibling folder and
    moved into place). start_from: an existing scope model to fine-tune (`lte edit calibrate`), else cfg.base."""
    cfg = cfg or ScopeConfig()
    need("datasets", "training the scope model")
    if not pairs:
        raise InputFileError("lte: no training pairs for the scope model")
    out = Path(out).expanduser()
    inputs = ScopeModel(start_from).info.inputs if start_from else ("subject_marked" if cfg.mark_subject else "plain")
    with files.atomic_path(out, directory=True) as staging:
        start = time.time()
        model = fit_cross_encoder(pairs, cfg, staging / "checkpoints", progress, start_from, inputs)
        model.save_pretrained(str(staging))
        shutil.rmtree(staging / "checkpoints", ignore_errors=True)
        info = ScopeInfo(threshold=cfg.threshold, inputs=inputs,
                         base=str(start_from or cfg.base or "all-minilm-l6-v2"),
                         pairs=len(pairs), mix=mix(pairs), train_seconds=round(time.time() - start, 1),
                         fine_tuned_from=str(start_from or ""))
        files.write_json(staging / META_FILE, asdict(info))
    return ScopeModel(out)  # on the CPU this exports the ONNX graph beside the weights


def fit_cross_encoder(pairs: Sequence[ScopePair], cfg: ScopeConfig, scratch: Path, progress: bool,
                      start_from: str | Path | None, inputs: str):
    """One CrossEncoderTrainer run with binary cross-entropy on the pairs as `inputs` reads them; returns the
    trained CrossEncoder."""
    import torch
    from datasets import Dataset
    from sentence_transformers import CrossEncoder
    from sentence_transformers.cross_encoder import CrossEncoderTrainer, CrossEncoderTrainingArguments
    from sentence_transformers.cross_encoder.losses import BinaryCrossEntropyLoss

    random.seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    source = str(start_from) if start_from else resolve_embedder(cfg.base)
    model = CrossEncoder(source, num_labels=1, max_length=cfg.max_length, device="cpu" if not
                         torch.cuda.is_available() else None)
    positives = sum(p.label for p in pairs)
    weight = (len(pairs) - positives) / max(positives, 1) if cfg.balance else 1.0
    loss = BinaryCrossEntropyLoss(model, pos_weight=torch.tensor(weight))
    texts = [marked_pair(p.question, p.edit_prompt, p.subject) if inputs == "subject_marked"
             else (p.question, p.edit_prompt) for p in pairs]
    rows = Dataset.from_dict({"question": [q for q, _ in texts], "edit": [e for _, e in texts],
                              "label": [float(p.label) for p in pairs]})
    args = CrossEncoderTrainingArguments(
        output_dir=str(scratch), num_train_epochs=cfg.epochs, max_steps=cfg.max_steps or -1,
        per_device_train_batch_size=cfg.batch_size, learning_rate=cfg.learning_rate, warmup_steps=cfg.warmup_ratio,
        seed=cfg.seed, save_strategy="no", report_to="none", logging_steps=100, disable_tqdm=not progress,
        dataloader_num_workers=0)
    CrossEncoderTrainer(model=model, args=args, train_dataset=rows, loss=loss).train()
    return model


