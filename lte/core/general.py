"""The general-ability probe: what an editor cost the model beyond its edits (the lifelong-editing papers' curve of
general ability against the number of edits).

Two fixed measures no edit is about, shipped with the package and the same in every cell:
- agreement: 195 ordinary factual and instruction prompts (`data/general_probe.txt`) answered greedily and scored
  as locality is, against the unedited model's own answer (the answer contains it, whole words) and by token
  accuracy of that answer. Prompts that name a subject of an applied edit are left out, so the probe measures
  damage, not the edits themselves.
- perplexity of a fixed passage of ordinary prose (`data/general_text.txt`, 12 paragraphs): each paragraph's first
  sentence is the prompt, the rest is teacher-forced; perplexity is exp of the mean negative log-probability over
  all scored tokens.
An editor that leaves unrelated prompts alone scores agreement 1.0 and the unedited perplexity.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from lte_data import data_lines

from lte.core.editor import Editor, Query
from lte.core.metrics import contains_answer, mean, normalize, reference_answer

PASSAGE_PROMPT = "Continue this passage: {}"


@dataclass(frozen=True)
class GeneralReference:
    """The unedited model on the probe: its answer to each prompt (prompts whose answer has no words dropped, as
    for locality) and its perplexity on the passage."""

    answers: dict[str, str]
    perplexity: float


def probe_prompts() -> list[str]:
    return data_lines("general_probe.txt")


def passages() -> list[tuple[str, str]]:
    """(prompt, continuation) per paragraph of the fixed text: the first sentence asks, the rest is scored."""
    pairs = []
    for paragraph in data_lines("general_text.txt"):
        first, _, rest = paragraph.partition(". ")
        pairs.append((PASSAGE_PROMPT.format(first + "."), rest))
    return pairs


def perplexity(editor: Editor) -> float:
    prompts, texts = zip(*passages())
    scores = editor.score([Query(p) for p in prompts], list(texts))
    logprobs = [lp for score in scores for lp in score.logprobs]
    return round(math.exp(-sum(logprobs) / len(logprobs)), 4)


def general_reference(reference: Editor, max_new_tokens: int) -> GeneralReference:
    prompts = probe_prompts()
    answers = [reference_answer(a) for a in reference.generate([Query(p) for p in prompts], max_new_tokens)]
    return GeneralReference({p: a for p, a in zip(prompts, answers) if a is not None}, perplexity(reference))


def unrelated(prompts: Iterable[str], subjects: Iterable[str]) -> list[str]:
    """The prompts that name none of `subjects` (whole words, any case)."""
    names = {normalize(s) for s in subjects if normalize(s)}
    if not names:
        return list(prompts)
    pattern = re.compile(r"(?<!\w)(" + "|".join(map(re.escape, sorted(names, key=len, reverse=True))) + r")(?!\w)")
    return [p for p in prompts if not pattern.search(normalize(p))]


def score_general(editor: Editor, reference: GeneralReference, subjects: Sequence[str],
                  max_new_tokens: int) -> dict:
    """The probe on `editor` as it stands (its edits applied), against the unedited `reference`; agreement and
    token_acc are left out when no prompt is left to ask (a model whose answers have no words)."""
    prompts = unrelated(reference.answers, subjects)
    queries = [Query(p) for p in prompts]
    expected = [reference.answers[p] for p in prompts]
    generations = editor.generate(queries, max_new_tokens) if queries else []
    scores = editor.score(queries, expected) if queries else []
    agreement = [contains_answer(g, [e]) for g, e in zip(generations, expected)]
    measures = {"agreement": mean(agreement), "token_acc": mean([s.token_acc for s in scores])} if prompts else {}
    return measures | {"n": len(prompts), "perplexity": perplexity(editor), "perplexity_unedited": reference.perplexity}
