"""Metric definitions shared by every editor: answer matching, n-gram entropy, and facet tallies."""

from __future__ import annotations

import math
import re
from collections import Counter
from dataclasses import dataclass, field
from typing import Iterable, Sequence


def normalize(text: str) -> str:
    """Lower-case, collapse whitespace, drop punctuation at either end: 'gen_acc' matching ignores case, spacing
    and a trailing full stop ('Christianity.' matches 'Christianity')."""
    return re.sub(r"\s+", " ", text.lower()).strip().strip(".,;:!?\"'").strip()


def contains_answer(generation: str, answers: Iterable[str]) -> bool:
    """True when any acceptable answer appears in the generation (both normalised)."""
    text = normalize(generation)
    return any(normalize(a) and normalize(a) in text for a in answers)


def ngram_entropy(text: str, ns: Sequence[int] = (2, 3), weights: Sequence[float] = (2 / 3, 4 / 3)) -> float:
    """Weighted mean of 2- and 3-gram entropies (bits) of a text's words, the fluency measure of ROME's
    CounterFact evaluation: repetitive, degenerate text scores low."""
    words = re.findall(r"\w+|[^\w\s]", text.lower())
    entropies = []
    for n, weight in zip(ns, weights):
        grams = Counter(tuple(words[i:i + n]) for i in range(len(words) - n + 1))
        total = sum(grams.values())
        entropy = -sum(c / total * math.log2(c / total) for c in grams.values()) if total else 0.0
        entropies.append(weight * entropy)
    return sum(entropies) / len(entropies)


@dataclass
class FacetTally:
    """Accumulates one facet's per-probe results; `summary` averages them."""

    token_acc: list[float] = field(default_factory=list)
    gen_acc: list[float] = field(default_factory=list)
    prob_win: list[float] = field(default_factory=list)

    def add(self, token_acc: float, gen_acc: bool, prob_win: bool | None = None) -> None:
        self.token_acc.append(token_acc)
        self.gen_acc.append(float(gen_acc))
        if prob_win is not None:
            self.prob_win.append(float(prob_win))

    def summary(self) -> dict[str, float | int]:
        result: dict[str, float | int] = {"token_acc": _mean(self.token_acc), "gen_acc": _mean(self.gen_acc)}
        if self.prob_win:
            result["prob_win"] = _mean(self.prob_win)
        result["n"] = len(self.token_acc)
        return result


def _mean(values: Sequence[float]) -> float:
    return round(sum(values) / len(values), 4) if values else 0.0
