"""Build the alignment set: chat conversations teaching the model to use relevant updated facts and ignore others.

Kinds of rows, all rendered with `lte.core.prompting` (the template inference uses):
- in_scope: 1–3 facts, one of which answers the request (at a random position) → the new answer. The request is the
  edit's own prompt or one of many paraphrases (clozes and questions); table facts are worded as a statement, a
  completed cloze or a question and answer, the shapes `Edit.statement` takes for real datasets;
- out_of_scope: facts that do not answer the request → the base model's own answer without facts (self-distilled,
  so behaviour does not shift). Four sorts, in fixed shares (`OUT_OF_SCOPE_SORTS`): the **same subject asked about
  another relation** (what the relevance gate cannot tell by the subject), another subject asked about the **same
  relation**, the edit's own question with the fact about a **similar-sounding subject** ("Lionel Messina" for
  "Lionel Messi"), and unrelated distractors only;
- no_facts: some out-of-scope requests again with no fact block at all, as inference sends them when the relevance
  gate passes nothing → the same self-distilled answer (keeps the aligned model's unconditional answers the base's);
- linguistic: facts + a general instruction → the base model's own response;
- describe: facts including one about the subject + an open request about the subject ("Tell me about X.") → the
  new fact stated, then the base model's own free answer to the request. Without these rows the aligned model learns
  that a fact in the prompt means a one-word answer, and its free text about edited subjects gets short and
  repetitive (the open requests are shipped in data/about.txt; the harness's fluency prompt is not among them).
Sources: counterfactual edits sampled from the shipped entity/relation tables, plus any dataset files given.
"""

from __future__ import annotations

import hashlib
import json
import random
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from lte_data import data_lines
from tqdm.auto import tqdm

from lte.core import files, prompting
from lte.core.datasets import load_cases
from lte.core.models import LoadedModel
from lte.core.schema import EditCase
from lte.core.scoring import ModelRunner
from lte.core.tables import SAME_SUBJECT_KINDS, similar_subject, table_cases


@dataclass
class AlignDataConfig:
    """in_scope / out_of_scope / linguistic / describe: number of rows of each kind (about 1,480 rows with the
    no-fact copies: one epoch at batch 8 is ~185 steps, ~6.7 s each for the default model on 2 CPU cores).
    max_facts: facts per context (1–3). prefix_share: share of in-scope cloze requests led by an unrelated sentence.
    no_facts_share: share of out-of-scope rows repeated without any fact block
    (few: inference sends fact-less prompts to the unedited model, so these only keep the aligned model usable alone).
    table_edits: counterfactual edits sampled from the shipped tables. distill_tokens / instruction_tokens: length of
    the base model's self-distilled answers."""

    in_scope: int = 700
    out_of_scope: int = 480
    linguistic: int = 60
    describe: int = 150
    max_facts: int = 3
    no_facts_share: float = 0.2
    prefix_share: float = 0.25
    table_edits: int = 600
    distill_tokens: int = 24
    instruction_tokens: int = 64
    seed: int = 0


@dataclass(frozen=True)
class Row:
    kind: str
    query: str
    facts: tuple[str, ...]
    answer: str | None = None  # None: filled in by the base model
    lead: str = ""  # put before the base model's answer (describe rows: the new fact)

    def conversation(self) -> dict:
        messages = prompting.chat_messages(self.query, self.facts, self.answer or "")
        return {"prompt": messages[:1], "completion": messages[1:], "kind": self.kind}


# ---------------------------------------------------------------- sources

# ---------------------------------------------------------------- rows

def facts_with(relevant: str | None, pool: Sequence[EditCase], cfg: AlignDataConfig, rng: random.Random) -> tuple:
    """1..max_facts statements: `relevant` (if any) at a random position among random distractors."""
    count = rng.randint(1, cfg.max_facts)
    facts: list[str] = []
    while len(facts) < count - (relevant is not None):
        statement = rng.choice(pool).edit.statement
        if statement != relevant and statement not in facts:
            facts.append(statement)
    if relevant is not None:
        facts.insert(rng.randint(0, len(facts)), relevant)
    return tuple(facts)


def in_scope_rows(cases: Sequence[EditCase], cfg: AlignDataConfig, rng: random.Random) -> list[Row]:
    """Cases are drawn source by source (the tables, then each dataset file, equally often), so a large training
    file does not crowd out the tables' many question forms. A share of cloze requests start with an unrelated
    sentence, as real prompts often do ('One person was hurt. Heath Brothers plays')."""
    sources = list(by_source(cases).values())
    rows = []
    for _ in range(cfg.in_scope):
        case = rng.choice(rng.choice(sources))
        request = rng.choice(case.rewrite + case.paraphrases).prompt
        if prompting.is_cloze(request) and rng.random() < cfg.prefix_share:
            request = f"{rng.choice(cases).edit.statement} {request}"
        rows.append(Row("in_scope", request, facts_with(case.edit.statement, cases, cfg, rng), case.edit.target_new))
    return rows


def by_source(cases: Sequence[EditCase]) -> dict[str, list[EditCase]]:
    groups: dict[str, list[EditCase]] = {}
    for case in cases:
        groups.setdefault(case.edit.source or "", []).append(case)
    return groups


OUT_OF_SCOPE_SORTS = (("other_relation", 0.3), ("other_subject", 0.3), ("similar_subject", 0.2),
                      ("distractors", 0.2))


def out_of_scope_rows(cases: Sequence[EditCase], cfg: AlignDataConfig, rng: random.Random) -> list[Row]:
    """Near misses: a fact close to the request is in the context, but it does not answer it."""
    same_subject = [c for c in cases if any(p.kind in SAME_SUBJECT_KINDS for p in c.locality)]
    other_subject = [c for c in cases if any(p.kind not in SAME_SUBJECT_KINDS for p in c.locality)]
    names = sorted({c.edit.subject for c in cases})
    rows = []
    for sort, share in OUT_OF_SCOPE_SORTS:
        for _ in range(round(cfg.out_of_scope * share)):
            if sort == "similar_subject":
                case = rng.choice(cases)
                probe = rng.choice(case.rewrite + case.paraphrases)
                twin = similar_subject(case.edit.subject, names, rng)
                relevant = re.sub(re.escape(case.edit.subject), twin, case.edit.statement, flags=re.IGNORECASE)
            else:
                pool = same_subject if sort == "other_relation" else other_subject
                case = rng.choice(pool or cases)
                wanted = [p for p in case.locality if (p.kind in SAME_SUBJECT_KINDS) == (sort == "other_relation")]
                probe = rng.choice(wanted or case.locality or case.rewrite)
                relevant = None if sort == "distractors" else case.edit.statement
            rows.append(Row("out_of_scope", probe.prompt, facts_with(relevant, cases, cfg, rng)))
    return rows


def linguistic_rows(cases: Sequence[EditCase], cfg: AlignDataConfig, rng: random.Random) -> list[Row]:
    pool = data_lines("instructions.txt")
    return [Row("linguistic", rng.choice(pool), facts_with(None, cases, cfg, rng)) for _ in range(cfg.linguistic)]


def describe_rows(cases: Sequence[EditCase], cfg: AlignDataConfig, rng: random.Random) -> list[Row]:
    requests = data_lines("about.txt")
    rows = []
    for _ in range(cfg.describe):
        case = rng.choice(cases)
        rows.append(Row("describe", rng.choice(requests).format(case.edit.subject),
                        facts_with(case.edit.statement, cases, cfg, rng), lead=case.edit.statement))
    return rows


def no_fact_rows(rows: Sequence[Row], share: float, rng: random.Random) -> list[Row]:
    """A share of the distilled out-of-scope rows again without any facts (their answers need no new generation:
    they were distilled without facts in the first place)."""
    out_of_scope = [row for row in rows if row.kind == "out_of_scope"]
    chosen = rng.sample(out_of_scope, int(len(out_of_scope) * share))
    return [Row("no_facts", row.query, (), row.answer) for row in chosen]


FREE_TEXT = ("linguistic", "describe")  # rows whose distilled answer is a longer free text


def distill(rows: list[Row], loaded: LoadedModel, cfg: AlignDataConfig, progress: bool = True) -> list[Row]:
    """Fill in unanswered rows with the base model's greedy answer to the request *without* any facts."""
    runner = ModelRunner(loaded.model, loaded.tokenizer, batch_size=16)
    pending = [i for i, row in enumerate(rows) if row.answer is None]
    filled = list(rows)
    for start in tqdm(range(0, len(pending), 64), desc="self-distilling answers", disable=not progress):
        chunk = pending[start:start + 64]
        for free, length in ((False, cfg.distill_tokens), (True, cfg.instruction_tokens)):
            group = [i for i in chunk if (rows[i].kind in FREE_TEXT) == free]
            prompts = [prompting.render(loaded.tokenizer, rows[i].query) for i in group]
            for i, text in zip(group, runner.generate(prompts, length) if group else []):
                answer = " ".join(part for part in (rows[i].lead, whole_sentences(text)) if part)
                filled[i] = Row(rows[i].kind, rows[i].query, rows[i].facts, answer)
    return [row for row in filled if row.answer]


SENTENCE_END = re.compile(r"[.!?][\"')]*(?=\s)")


def whole_sentences(text: str) -> str:
    """Trim a generation cut off by the token limit back to its last full sentence, so training never teaches
    the model to stop mid-sentence."""
    text = text.strip()
    if not text or text[-1] in ".!?\"')":
        return text
    ends = [m.end() for m in SENTENCE_END.finditer(text)]
    return text[: ends[-1]] if ends else text


def build_rows(loaded: LoadedModel, cfg: AlignDataConfig, data_files: Sequence[str | Path] = (),
               progress: bool = True) -> list[dict]:
    rng = random.Random(cfg.seed)
    cases = alignment_cases(cfg, data_files, rng)
    rows = (in_scope_rows(cases, cfg, rng) + out_of_scope_rows(cases, cfg, rng) + linguistic_rows(cases, cfg, rng)
            + describe_rows(cases, cfg, rng))
    rows = distill(rows, loaded, cfg, progress)
    rows += no_fact_rows(rows, cfg.no_facts_share, rng)
    rng.shuffle(rows)
    return [row.conversation() for row in rows]


def alignment_cases(cfg: AlignDataConfig, data_files: Sequence[str | Path] = (),
                    rng: random.Random | None = None) -> list[EditCase]:
    """The edits alignment learns from: sampled from the shipped tables, then those of any dataset files."""
    cases = table_cases(cfg.table_edits, rng or random.Random(cfg.seed))
    for path in data_files:
        cases += load_cases(path)
    return cases


def write_rows(rows: list[dict], path: Path) -> str:
    """Write JSONL atomically; returns the content hash recorded in the model's manifest."""
    text = "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)
    files.write_text(path, text)
    return content_hash(text)


def content_hash(text: str) -> str:
    """The alignment set's identity: the first 16 hex digits of its text's sha256."""
    return hashlib.sha256(text.encode()).hexdigest()[:16]
