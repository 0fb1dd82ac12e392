"""The evaluation harness: the same prompts, metrics and timing for every editor, through the `Editor` interface only.

Facets: reliability (the edit's own prompt), generalization (paraphrases), locality (unrelated prompts, scored as
agreement with the *unedited base model's* greedy answer), portability (multi-hop / reasoning prompts).
Protocols: token_acc (teacher-forced target-token accuracy), gen_acc (greedy generation contains an answer) and,
where a true object is known, prob_win (the papers' probability comparison: on edit and paraphrase prompts the new
target's mean log-prob beats the old one's, ROME's and MEMIT's efficacy and paraphrase scores; on CounterFact's
neighbourhood prompts the old one beats the new, their neighbourhood score). Locality prompts with a dataset answer
also get answer_token_acc (MEMIT's ZsRE specificity). After batch and sequential runs, the general-ability probe
(`lte.core.general`) says what the edits cost the model elsewhere.
"""

from __future__ import annotations

import random
import resource
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from tqdm.auto import tqdm

from lte.core.config import config_dict
from lte.core.editor import Editor, Query
from lte.core.errors import ConfigError
from lte.core.general import GeneralReference, general_reference, score_general
from lte.core.metrics import (
    FacetTally,
    RetrievalTally,
    contains_answer,
    ngram_entropy,
    reference_answer,
)
from lte.core.models import model_identity
from lte.core.schema import FACETS, Edit, EditCase, Probe
from lte.core.scoring import TargetScore

MODES = ("single", "batch", "sequential", "sequential-batch")
# Bumped whenever a change alters what a metric measures, so cached results from older harnesses are not mixed
# with new ones. 2: locality references without words are dropped. 3: gen_acc matches whole words only ('Goa' no
# longer matches 'Goat'); reports carry the model's identity, extra edits, the scored sample and retrieval figures.
HARNESS_VERSION = 3


@dataclass
class EvalConfig:
    """mode: single (apply one case's edits, score, restore), batch (apply all, score all), sequential (apply one
    after another, score all at the end; reliability right after each edit is reported separately),
    sequential-batch (the edits of `edit_batch` cases per apply call, one call after another; reliability right
    after each call reported separately; sequential is this with one case per call).
    limit: first N cases (deterministic order). max_new_tokens: greedy answer length for gen_acc.
    fluency_cases / fluency_tokens: how many rewrite prompts get a long generation for n-gram entropy.
    score_sample: apply every case's edits but score only this many cases, drawn with `seed` (mass editing at a
    cost this CPU can afford: 10,000 stored, 500 scored). None scores them all.
    general: run the general-ability probe after batch and sequential runs (`lte.core.general`; single mode
    restores after every case, so there is nothing accumulated to probe).
    """

    mode: str = "single"
    limit: int | None = None
    max_new_tokens: int = 12
    fluency_cases: int = 20
    fluency_tokens: int = 48
    score_sample: int | None = None
    seed: int = 0
    progress: bool = True
    edit_batch: int | None = None
    general: bool = True

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ConfigError(f"mode '{self.mode}': choose one of {', '.join(MODES)}")
        if (self.mode == "sequential-batch") != (self.edit_batch is not None):
            raise ConfigError("an edit batch size (--edit-batch B) goes with --mode sequential-batch, and only there")
        if self.edit_batch is not None and self.edit_batch < 1:
            raise ConfigError(f"edit_batch {self.edit_batch}: must be at least 1")
        if self.score_sample is not None and self.score_sample < 1:
            raise ConfigError(f"score_sample {self.score_sample}: must be at least 1")

    def scored(self, n_cases: int) -> list[int]:
        """Indices of the cases to score, in order: all of them, or a seeded sample of `score_sample`."""
        if not self.score_sample or self.score_sample >= n_cases:
            return list(range(n_cases))
        return sorted(random.Random(self.seed).sample(range(n_cases), self.score_sample))


@dataclass(frozen=True)
class Item:
    """One probe ready to score: the query, the target to teacher-force, answers for gen_acc; `rivals`, for
    prob_win, the answer that should win and the one it should beat; `gold`, for answer_token_acc, the dataset's own
    answer to a locality prompt."""

    facet: str
    query: Query
    target: str
    answers: tuple[str, ...]
    rivals: tuple[str, str] | None = None
    gold: str | None = None


@dataclass
class Clock:
    edit_s: float = 0.0
    query_s: float = 0.0
    edits: int = 0
    queries: int = 0

    def summary(self) -> dict[str, float]:
        peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return {"edit_s": round(self.edit_s / max(self.edits, 1), 4),
                "query_s": round(self.query_s / max(self.queries, 1), 4),
                "peak_rss_mb": round(peak_kb / 1024, 1)}


@dataclass
class Tallies:
    facets: dict[str, FacetTally] = field(default_factory=lambda: {f: FacetTally() for f in FACETS})
    entropies: list[float] = field(default_factory=list)
    retrieval: RetrievalTally = field(default_factory=RetrievalTally)

    def summary(self) -> dict[str, dict]:
        metrics = {f: t.summary() for f, t in self.facets.items() if t.token_acc}
        if self.entropies:
            metrics["fluency"] = {"ngram_entropy": round(sum(self.entropies) / len(self.entropies), 4),
                                  "n": len(self.entropies)}
        return metrics

    def retrieval_report(self) -> dict[str, dict]:
        """{"retrieval": ...} for editors that retrieve edits (see `Editor.passed_edits`), else nothing."""
        return {"retrieval": self.retrieval.summary()} if self.retrieval.seen else {}


# ---------------------------------------------------------------- building probes

def locality_references(reference: Editor, cases: Sequence[EditCase], cfg: EvalConfig,
                        indices: Sequence[int] | None = None) -> dict[tuple[int, int], str]:
    """The unedited base model's own greedy answer to every locality prompt of the cases at `indices` (default: the
    cases `cfg` scores), keyed by (case, probe). Answers with
    no words (empty, or only punctuation such as ':') are dropped: gen_acc matching ignores punctuation, so no
    generation could ever match them and they would count as failures for every editor, the unedited one too."""
    indices = cfg.scored(len(cases)) if indices is None else indices
    keys = [(c, p) for c in indices for p in range(len(cases[c].locality))]
    queries = [Query(cases[c].locality[p].prompt) for c, p in keys]
    answers = [reference_answer(a) for a in (reference.generate(queries, cfg.max_new_tokens) if queries else [])]
    return {key: text for key, text in zip(keys, answers) if text is not None}


def case_items(case: EditCase, index: int, references: dict[tuple[int, int], str]) -> list[Item]:
    def query(prompt: str) -> Query:
        return Query(prompt, case.edits)

    def new_over_true(target: str, edit: Edit | None) -> tuple[str, str] | None:
        return (target, edit.target_true) if edit is not None and edit.target_true else None

    single = case.edit if len(case.edits) == 1 else None
    items = []
    for probe, edit in zip(case.rewrite, case.edits):
        items.append(Item("reliability", query(probe.prompt), probe.answers[0], probe.answers,
                          new_over_true(probe.answers[0], edit)))
    for probe in case.paraphrases:
        items.append(Item("generalization", query(probe.prompt), probe.answers[0], probe.answers,
                          new_over_true(probe.answers[0], single)))
    for p, probe in enumerate(case.locality):
        if (index, p) in references:
            answer = references[(index, p)]
            items.append(Item("locality", query(probe.prompt), answer, (answer,), neighbourhood(probe, single),
                              probe.answer))
    items += [Item("portability", query(p.prompt), p.answers[0], p.answers) for p in case.portability if p.answers]
    return items


def neighbourhood(probe: Probe, edit: Edit | None) -> tuple[str, str] | None:
    """(true, new) for a CounterFact neighbourhood prompt: another subject with the edit's relation and old object,
    whose answer should stay the old object (ROME's and MEMIT's neighbourhood score). None for other locality
    prompts (ZsRE's unrelated questions have no such pair)."""
    if edit is None or not edit.target_true or probe.answer != edit.target_true:
        return None
    return (edit.target_true, edit.target_new)


# ---------------------------------------------------------------- scoring

def score_items(editor: Editor, items: Sequence[Item], cfg: EvalConfig, tallies: Tallies, clock: Clock) -> None:
    """Score a set of probes in as few batched calls as possible and add them to the tallies."""
    if not items:
        return
    start = time.perf_counter()
    queries = [item.query for item in items]
    target_scores = editor.score(queries, [item.target for item in items])
    other = other_scores(editor, items, target_scores)
    generations = editor.generate(queries, cfg.max_new_tokens)
    clock.query_s += time.perf_counter() - start
    clock.queries += len(items)
    passed = editor.passed_edits(queries)
    for item, ids in zip(items, passed or []):
        tallies.retrieval.add(item.facet, {edit.id for edit in item.query.case_edits}, ids)
    for i, (item, score, generation) in enumerate(zip(items, target_scores, generations)):
        win = other[i, item.rivals[0]].mean_logprob > other[i, item.rivals[1]].mean_logprob if item.rivals else None
        gold = other[i, item.gold].token_acc if item.gold else None
        tallies.facets[item.facet].add(score.token_acc, contains_answer(generation, item.answers), win, gold)


def other_scores(editor: Editor, items: Sequence[Item],
                 target_scores: Sequence[TargetScore]) -> dict[tuple[int, str], TargetScore]:
    """The scores of every item's rivals and gold answer, keyed by (item, answer): the target's own score is
    reused, the rest are scored in one call."""
    known = {(i, item.target): score for i, (item, score) in enumerate(zip(items, target_scores))}
    wanted = list(dict.fromkeys((i, text) for i, item in enumerate(items)
                                for text in (*(item.rivals or ()), *((item.gold,) if item.gold else ()))
                                if (i, text) not in known))
    scored = editor.score([items[i].query for i, _ in wanted], [text for _, text in wanted]) if wanted else []
    return known | dict(zip(wanted, scored))


FLUENCY_PROMPT = "What do you know about {}?"


def score_fluency(editor: Editor, cases: Sequence[EditCase], cfg: EvalConfig, tallies: Tallies) -> None:
    """Long free answers about each edited subject; n-gram entropy falls when editing makes text degenerate."""
    queries = [Query(FLUENCY_PROMPT.format(case.edit.subject), case.edits) for case in cases]
    for text in editor.generate(queries, cfg.fluency_tokens) if queries else []:
        tallies.entropies.append(ngram_entropy(text))


def timed_apply(editor: Editor, edits: Sequence[Edit], clock: Clock) -> None:
    start = time.perf_counter()
    editor.apply(edits)
    clock.edit_s += time.perf_counter() - start
    clock.edits += len(edits)


# ---------------------------------------------------------------- modes

def run_single(editor: Editor, cases: Sequence[EditCase], refs: dict, cfg: EvalConfig, clock: Clock,
               extra: Sequence[Edit], general: GeneralReference | None = None) -> dict:
    """One case at a time, restored after each: nothing accumulates, so the general probe does not run."""
    if extra:
        raise ConfigError("extra edits need --mode batch or sequential: single mode restores after every case")
    tallies = Tallies()
    for count, index in enumerate(tqdm(cfg.scored(len(cases)), desc="single", disable=not cfg.progress)):
        timed_apply(editor, cases[index].edits, clock)
        score_items(editor, case_items(cases[index], index, refs), cfg, tallies, clock)
        if count < cfg.fluency_cases:
            score_fluency(editor, [cases[index]], cfg, tallies)
        editor.restore()
    return {"metrics": tallies.summary(), **tallies.retrieval_report()}


def run_batch(editor: Editor, cases: Sequence[EditCase], refs: dict, cfg: EvalConfig, clock: Clock,
              extra: Sequence[Edit], general: GeneralReference | None = None) -> dict:
    edits = list(extra) + [edit for case in cases for edit in case.edits]
    timed_apply(editor, edits, clock)
    tallies = _score_all(editor, cases, refs, cfg, clock, desc="batch: scoring")
    metrics = tallies.summary() | probe_general(editor, general, edits, cfg)
    stats = editor.stats()
    editor.restore()
    return {"metrics": metrics, **tallies.retrieval_report(), "editor_stats": stats}


def run_sequential(editor: Editor, cases: Sequence[EditCase], refs: dict, cfg: EvalConfig, clock: Clock,
                   extra: Sequence[Edit], general: GeneralReference | None = None) -> dict:
    """Extra edits go in first, in one call; then the edits of `edit_batch` cases (one in sequential mode) per
    call, one call after another, the reliability of each call's scored cases checked right after it."""
    if extra:
        timed_apply(editor, extra, clock)
    immediate, scored, size = Tallies(), set(cfg.scored(len(cases))), cfg.edit_batch or 1
    for start in tqdm(range(0, len(cases), size), desc=f"{cfg.mode}: editing", disable=not cfg.progress):
        batch = range(start, min(start + size, len(cases)))
        timed_apply(editor, [edit for i in batch for edit in cases[i].edits], clock)
        rewrite = [item for i in batch if i in scored for item in case_items(cases[i], i, refs)
                   if item.facet == "reliability"]
        score_items(editor, rewrite, cfg, immediate, Clock())
    tallies = _score_all(editor, cases, refs, cfg, clock, desc=f"{cfg.mode}: scoring")
    metrics = tallies.summary() | probe_general(editor, general, [*extra, *(e for c in cases for e in c.edits)], cfg)
    stats = editor.stats()
    editor.restore()
    return {"metrics": metrics, "metrics_immediate": immediate.summary(),
            **tallies.retrieval_report(), "editor_stats": stats}


def probe_general(editor: Editor, general: GeneralReference | None, edits: Sequence[Edit], cfg: EvalConfig) -> dict:
    """{"general": ...}: the general-ability probe with every edit applied, prompts about an edited subject left
    out; nothing when the probe is off."""
    if general is None:
        return {}
    return {"general": score_general(editor, general, [edit.subject for edit in edits], cfg.max_new_tokens)}


def _score_all(editor: Editor, cases: Sequence[EditCase], refs: dict, cfg: EvalConfig, clock: Clock,
               desc: str, chunk: int = 32) -> Tallies:
    tallies, scored = Tallies(), cfg.scored(len(cases))
    for start in tqdm(range(0, len(scored), chunk), desc=desc, disable=not cfg.progress):
        items = [item for i in scored[start:start + chunk] for item in case_items(cases[i], i, refs)]
        score_items(editor, items, cfg, tallies, clock)
    score_fluency(editor, [cases[i] for i in scored[: cfg.fluency_cases]], cfg, tallies)
    return tallies


RUNNERS: dict[str, Callable[..., dict]] = {"single": run_single, "batch": run_batch, "sequential": run_sequential,
                                           "sequential-batch": run_sequential}


def evaluate(editor: Editor, cases: Sequence[EditCase], reference: Editor, cfg: EvalConfig,
             dataset: str = "", references: dict[tuple[int, int], str] | None = None,
             extra_edits: Sequence[Edit] = (), general: GeneralReference | None = None) -> dict:
    """Run one evaluation and return the report (see docs/evaluation.md for its JSON shape). `references`:
    locality references already computed by `locality_references` for these cases, `general` the unedited model on
    the general probe (`general_reference`; a bench shares both between editors). `extra_edits` are applied before
    the cases' edits and never scored (a large store around the scored cases)."""
    torch.manual_seed(cfg.seed)
    cases = list(cases[: cfg.limit] if cfg.limit else cases)
    refs = references if references is not None else locality_references(reference, cases, cfg)
    if cfg.general and cfg.mode != "single" and general is None:
        general = general_reference(reference, cfg.max_new_tokens)
    clock = Clock()
    result = RUNNERS[cfg.mode](editor, cases, refs, cfg, clock, extra_edits, general if cfg.general else None)
    return {"editor": editor.name, "editor_config": config_dict(editor.config), "model": editor.model_name,
            "model_identity": model_identity(editor.model_name), "placement": editor.placement,
            "dataset": dataset, "mode": cfg.mode, **({"edit_batch": cfg.edit_batch} if cfg.edit_batch else {}),
            "n_cases": len(cases), "scored_cases": len(cfg.scored(len(cases))),
            "extra_edits": len(extra_edits), **result, "timing": clock.summary(), "harness_version": HARNESS_VERSION}


def format_table(report: dict) -> str:
    """A plain-text table of a report's metrics."""
    scored = report.get("scored_cases", report["n_cases"])
    sample = f", {scored} scored" if scored < report["n_cases"] else ""
    extra = f", {report['extra_edits']} extra edits stored" if report.get("extra_edits") else ""
    mode = report["mode"] + (f" of {report['edit_batch']}" if report.get("edit_batch") else "")
    header = f"{report['editor']} on {report['dataset']} ({mode}, {report['n_cases']} cases{sample}{extra})"
    lines = [header, f"{'facet':<16}{'token_acc':>10}{'gen_acc':>10}{'prob_win':>10}{'n':>7}"]
    for facet in FACETS:
        m = report["metrics"].get(facet)
        if m:
            win = f"{m['prob_win']:.3f}" if "prob_win" in m else "-"
            lines.append(f"{facet:<16}{m['token_acc']:>10.3f}{m['gen_acc']:>10.3f}{win:>10}{m['n']:>7}")
    if "fluency" in report["metrics"]:
        lines.append(f"{'fluency':<16}{report['metrics']['fluency']['ngram_entropy']:>10.3f}")
    if "general" in report["metrics"]:
        g = report["metrics"]["general"]
        asked = (f"agreement {g['agreement']:.3f} (token_acc {g['token_acc']:.3f}, n {g['n']})" if g["n"]
                 else "no prompt")
        lines.append(f"general probe: {asked}, perplexity {g['perplexity']:.2f} "
                     f"(unedited {g['perplexity_unedited']:.2f})")
    for facet, m in report.get("metrics_immediate", {}).items():
        lines.append(f"{facet + ' (at edit)':<16}{m['token_acc']:>10.3f}{m['gen_acc']:>10.3f}")
    if "retrieval" in report:
        r = report["retrieval"]
        lines.append(f"retrieval: precision {r['precision']:.3f}, recall {r['recall']:.3f}; "
                     + ", ".join(f"{facet} {'no edit' if facet == 'locality' else 'gold'} passed {v['rate']:.3f}"
                                 for facet, v in r["facets"].items()))
    t = report["timing"]
    lines.append(f"timing: {t['edit_s']:.4f} s/edit, {t['query_s']:.4f} s/query, peak {t['peak_rss_mb']:.0f} MB")
    return "\n".join(lines)
