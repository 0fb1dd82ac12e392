"""Metric definitions shared by every editor: answer matching, n-gram entropy, and facet tallies."""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field


def normalize(text: str) -> str:
    """Lower-case, collapse whitespace, drop punctuation at either end: 'gen_acc' matching ignores case, spacing
    and a trailing full stop ('Christianity.' matches 'Christianity')."""
    return re.sub(r"\s+", " ", text.lower()).strip().strip(".,;:!?\"'").strip()


def reference_answer(generation: str) -> str | None:
    """An unedited model's answer as the reference other answers are held to: its first line, as the model produced
    it (leading space kept, it is scored token for token); None when it has no words (empty, or only punctuation
    such as ':'), since no generation could ever match it."""
    line = generation.split("\n")[0].rstrip()
    return line if normalize(line) else None


def contains_answer(generation: str, answers: Iterable[str]) -> bool:
    """True when any acceptable answer appears in the generation as whole words (both normalised): 'Goa' matches
    'in Goa, India' but not 'Goat'."""
    text = normalize(generation)
    return any(normalize(a) and re.search(rf"(?<!\w){re.escape(normalize(a))}(?!\w)", text) for a in answers)


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
    """Accumulates one facet's per-probe results; `summary` averages them. prob_win: where the probe names two
    answers to compare (the papers' efficacy, paraphrase and neighbourhood scores); answer_token_acc: token accuracy
    of the dataset's own answer to a locality prompt (MEMIT's ZsRE specificity)."""

    token_acc: list[float] = field(default_factory=list)
    gen_acc: list[float] = field(default_factory=list)
    prob_win: list[float] = field(default_factory=list)
    answer_token_acc: list[float] = field(default_factory=list)

    def add(self, token_acc: float, gen_acc: bool, prob_win: bool | None = None,
            answer_token_acc: float | None = None) -> None:
        self.token_acc.append(token_acc)
        self.gen_acc.append(float(gen_acc))
        if prob_win is not None:
            self.prob_win.append(float(prob_win))
        if answer_token_acc is not None:
            self.answer_token_acc.append(answer_token_acc)

    def summary(self) -> dict[str, float | int]:
        result: dict[str, float | int] = {"token_acc": mean(self.token_acc), "gen_acc": mean(self.gen_acc)}
        if self.prob_win:
            result["prob_win"] = mean(self.prob_win)
        if self.answer_token_acc:
            result["answer_token_acc"] = mean(self.answer_token_acc)
        result["n"] = len(self.token_acc)
        return result


def mean(values: Sequence[float]) -> float:
    """The average to four decimals (0.0 for none), as every report writes it."""
    return round(sum(values) / len(values), 4) if values else 0.0


IN_SCOPE = ("reliability", "generalization")


@dataclass
class RetrievalTally:
    """What a retrieving editor put into each prompt against what belonged there: probes of reliability,
    generalization and portability should receive their case's edit, locality probes no edit at all.
    precision: of the prompts that received any edit, the share that received the right one (a locality probe that
    received one is a false pass); recall: of the reliability and generalization probes, the share whose edit passed."""

    right: dict[str, list[bool]] = field(default_factory=dict)
    true_passes: int = 0
    false_passes: int = 0

    @property
    def seen(self) -> bool:
        return bool(self.right)

    def add(self, facet: str, gold: set[str], passed: Sequence[str]) -> None:
        hit = bool(gold & set(passed)) and facet != "locality"
        self.right.setdefault(facet, []).append(not passed if facet == "locality" else hit)
        if passed:
            self.true_passes += hit
            self.false_passes += not hit

    def summary(self) -> dict:
        in_scope = [ok for facet in IN_SCOPE for ok in self.right.get(facet, [])]
        return {"precision": mean([1.0] * self.true_passes + [0.0] * self.false_passes),
                "recall": mean([float(ok) for ok in in_scope]),
                "facets": {facet: {"rate": mean([float(ok) for ok in oks]), "n": len(oks)}
                           for facet, oks in self.right.items()}}
