"""The relevance gate: does a retrieved edit answer this question, or is it only near it?

Nearest-neighbour search always returns *something*; the gate decides whether it goes into the prompt. Three
signals per (question, candidate edit), combined by a logistic model fitted on labelled pairs:
- `cosine`: the best cosine similarity between the question and the edit's retrieval keys (what search ranks by);
- `subject`: the share of the edit subject's words that the question names (embeddings alone rate 'X is a native
  speaker of' close to an edit about another person's language);
- `relation`: cosine similarity between the question and the edit's prompt *with the subject masked out* in both
  ('The taxon rank of _ is' against 'Which family does _ belong to?'). A question about the edited subject but
  another relation names the subject and sits close to the edit as a whole; only this signal tells them apart.

A gate is fitted (`fit_gate`) on pairs from training data: an edit with its own prompts and paraphrases (pass) and
its neighbourhood prompts — other subjects, other relations of the same subject (no pass). The threshold on the
fitted probability is the one that maximises accuracy on those pairs. `lte align` fits one next to the aligned
model; `lte edit calibrate` fits one for a store and saves it there.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from lte.core import files
from lte.core.schema import Edit, EditCase

FEATURES = ("cosine", "subject", "relation")
MASK = "_"


@dataclass(frozen=True)
class Gate:
    """p(relevant) = sigmoid(weights · features + bias); an edit passes when p ≥ threshold."""

    weights: tuple[float, ...]
    bias: float
    threshold: float
    embedder: str = ""
    # How the gate does on the pairs it was fitted on (passes that were right, relevant pairs passed), for the record.
    fit_precision: float = 0.0
    fit_recall: float = 0.0
    fit_related: int = 0
    fit_unrelated: int = 0

    def probability(self, features: Sequence[float]) -> float:
        z = self.bias + sum(w * f for w, f in zip(self.weights, features))
        return 1.0 / (1.0 + math.exp(-z))

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> Gate:
        data = json.loads(text)
        data["weights"] = tuple(data["weights"])
        return cls(**data)

    def save(self, path: Path) -> None:
        files.write_text(path, self.to_json() + "\n")

    @classmethod
    def load(cls, path: Path) -> Gate:
        return cls.from_json(Path(path).read_text())


def rule_gate(threshold: float) -> Gate:
    """The unfitted rule as a logistic model: relevance = cosine − 0.3 × (1 − subject) against `threshold`;
    p ≥ 0.5 exactly when relevance ≥ threshold."""
    return Gate(weights=(20.0, 6.0, 0.0), bias=round(-6.0 - 20.0 * threshold, 6), threshold=0.5)


# Before any fitting: cosine, minus 0.3 per missing share of the subject, at 0.5 (picked on CounterFact paraphrase
# and neighbour prompts with all-MiniLM-L6-v2, benchmarks/edit_store.py). It ignores the relation.
UNFITTED = rule_gate(0.5)


def subject_pattern(subject: str) -> re.Pattern:
    """Where a text names the subject: as whole words, in any case."""
    return re.compile(rf"(?<!\w){re.escape(subject.strip())}(?!\w)", re.IGNORECASE)


def mask_subject(text: str, subject: str) -> str:
    """The text with the subject (or, failing that, each of its words) replaced by a placeholder."""
    pattern = subject_pattern(subject)
    if pattern.search(text):
        return pattern.sub(MASK, text)
    for word in sorted(subject_words(subject), key=len, reverse=True):
        text = re.sub(rf"(?<!\w){re.escape(word)}(?!\w)", MASK, text, flags=re.IGNORECASE)
    return re.sub(rf"{MASK}(\s+{MASK})+", MASK, text)


def subject_words(text: str) -> set[str]:
    return set(re.findall(r"\w+", text.lower()))


def subject_coverage(query: str, subject: str) -> float:
    """Share of the subject's words the query names; 0 for a subject without words (it cannot be confirmed, so it
    must not pass for free)."""
    words = subject_words(subject)
    return len(words & subject_words(query)) / len(words) if words else 0.0


def relation_texts(edit: Edit) -> list[str]:
    """The edit's prompts with its subject masked: what the edit is *about*, whoever it is about."""
    return list(dict.fromkeys(mask_subject(t, edit.subject) for t in (edit.prompt, *edit.paraphrases)))


def relation_similarity(queries: Sequence[str], edits: Sequence[Edit], embed) -> list[float]:
    """For each (query, edit) pair, the best cosine between the masked query and the edit's masked prompts.
    `embed(texts) -> normalised vectors`; every distinct text is embedded once."""
    return best_cosines([(mask_subject(q, e.subject), relation_texts(e)) for q, e in zip(queries, edits)], embed)


def pair_features(queries: Sequence[str], edits: Sequence[Edit], cosines: Sequence[float], embed) -> np.ndarray:
    relation = relation_similarity(queries, edits, embed)
    subject = [subject_coverage(q, e.subject) for q, e in zip(queries, edits)]
    return np.array([list(row) for row in zip(cosines, subject, relation)], dtype=np.float64).reshape(-1, 3)


def key_cosines(queries: Sequence[str], edits: Sequence[Edit], embed, keys_of) -> list[float]:
    """The cosine search would report: best over the edit's retrieval keys (`keys_of(edit) -> texts`)."""
    return best_cosines([(q, keys_of(e)) for q, e in zip(queries, edits)], embed)


def best_cosines(sides: Sequence[tuple[str, Sequence[str]]], embed) -> list[float]:
    """For each (text, candidates), the best cosine between the text and a candidate; each distinct text is
    embedded once."""
    texts = list(dict.fromkeys([q for q, _ in sides] + [t for _, ts in sides for t in ts]))
    vectors = dict(zip(texts, embed(texts))) if texts else {}
    return [max(float(np.dot(vectors[q], vectors[t])) for t in ts) for q, ts in sides]


# ---------------------------------------------------------------- fitting

def gate_pairs(cases: Sequence[EditCase]) -> list[tuple[str, Edit, bool]]:
    """Labelled (question, edit, relevant) pairs from cases: rewrite and paraphrase prompts pass; locality prompts
    (other subjects, and other relations of the same subject) do not."""
    pairs = []
    for case in cases:
        edit = case.edit
        pairs += [(p.prompt, edit, True) for p in case.rewrite[:1] + case.paraphrases]
        pairs += [(p.prompt, edit, False) for p in case.locality]
    return pairs


def fit_gate(pairs: Sequence[tuple[str, Edit, bool]], embed, keys_of, embedder: str = "", l2: float = 1e-3) -> Gate:
    """Logistic regression on the three features (full-batch Newton steps: four parameters need nothing more),
    then the probability threshold with the best accuracy on the same pairs."""
    queries, edits, labels = zip(*pairs)
    x = pair_features(queries, edits, key_cosines(queries, edits, embed, keys_of), embed)
    y = np.array(labels, dtype=np.float64)
    design = np.hstack([x, np.ones((len(x), 1))])
    theta = np.zeros(design.shape[1])
    for _ in range(50):
        p = 1.0 / (1.0 + np.exp(-design @ theta))
        gradient = design.T @ (p - y) + l2 * theta
        hessian = design.T @ (design * (p * (1 - p))[:, None]) + l2 * np.eye(len(theta))
        step = np.linalg.solve(hessian, gradient)
        theta -= step
        if np.abs(step).max() < 1e-8:
            break
    p = 1.0 / (1.0 + np.exp(-design @ theta))
    threshold = best_threshold(p, y)
    passed, related = p >= threshold, y > 0.5
    return Gate(tuple(round(float(w), 6) for w in theta[:-1]), round(float(theta[-1]), 6), threshold, embedder,
                round(float((passed & related).sum() / max(passed.sum(), 1)), 4),
                round(float((passed & related).sum() / max(related.sum(), 1)), 4),
                int(related.sum()), int((~related).sum()))


def best_threshold(p: np.ndarray, y: np.ndarray) -> float:
    """The cut with the highest accuracy (ties: the middle of the best run), between observed probabilities."""
    order = np.sort(np.unique(p))
    cuts = np.concatenate([[0.0], (order[:-1] + order[1:]) / 2, [1.0]]) if len(order) > 1 else np.array([0.5])
    accuracies = np.array([np.mean((p >= c) == (y > 0.5)) for c in cuts])
    best = np.flatnonzero(accuracies == accuracies.max())
    return round(float(cuts[best[len(best) // 2]]), 6)
