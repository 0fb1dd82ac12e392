"""Build the alignment set: chat conversations teaching the model to use relevant updated facts and ignore others.

Three kinds of rows, all rendered with `lte.prompting` (the template inference uses):
- in_scope: 1–3 facts, one of which answers the request (at a random position) → the new answer;
- out_of_scope: facts that do not answer the request (near neighbours: same relation other subject, or same subject
  other relation) → the base model's own answer without facts (self-distilled, so behaviour does not shift);
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
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from lte_data import data_lines, data_path
from tqdm.auto import tqdm

from lte import prompting
from lte.datasets import load_cases
from lte.models import LoadedModel
from lte.schema import Edit, EditCase, Probe
from lte.scoring import ModelRunner


@dataclass
class AlignDataConfig:
    """in_scope / out_of_scope / linguistic / describe: number of rows of each kind (about 1,200 rows with the
    no-fact copies: one epoch at batch 8 is ~150 steps, ~9.5 s each for the default model on 2 CPU cores). max_facts: facts per
    context (1–3). no_facts_share: share of out-of-scope rows repeated without any fact block.
    table_edits: counterfactual edits sampled from the shipped tables. distill_tokens / instruction_tokens: length of
    the base model's self-distilled answers."""

    in_scope: int = 550
    out_of_scope: int = 380
    linguistic: int = 70
    describe: int = 90
    max_facts: int = 3
    no_facts_share: float = 0.33
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

def table_cases(n: int, rng: random.Random) -> list[EditCase]:
    """Counterfactual edits from the shipped tables, each with question paraphrases and neighbour probes."""
    entities = json.loads(data_path("entities.json").read_text())
    relations = json.loads(data_path("relations.json").read_text())
    cases = []
    for i in range(n):
        relation = rng.choice(relations)
        subject, other = rng.sample(entities[relation["subject"]], 2)
        target = rng.choice([o for o in entities[relation["object"]] if o != subject])
        edit = Edit(subject=subject, prompt=relation["cloze"].format(subject), target_new=target,
                    statement=relation["statement"].format(subject, target), relation=relation["id"],
                    source="lte-tables")
        same_subject = [r for r in relations if r["subject"] == relation["subject"] and r["id"] != relation["id"]]
        neighbours = [relation["cloze"].format(other), rng.choice(relation["questions"]).format(other)]
        other_relations = rng.sample(same_subject, min(2, len(same_subject)))  # as many as other-subject probes
        neighbours += [rng.choice([r["cloze"]] + r["questions"]).format(subject) for r in other_relations]
        cases.append(EditCase.from_edits(
            f"table-{i}", [edit], paraphrases=[Probe(q.format(subject), (target,)) for q in relation["questions"]],
            locality=[Probe(q) for q in neighbours]))
    return cases


# ---------------------------------------------------------------- rows

def facts_with(relevant: str | None, pool: Sequence[EditCase], cfg: AlignDataConfig, rng: random.Random) -> tuple:
    """1..max_facts statements: `relevant` (if any) at a random position among random distractors."""
    count = rng.randint(1, cfg.max_facts)
    facts = [rng.choice(pool).edit.statement for _ in range(count - (relevant is not None))]
    if relevant is not None:
        facts.insert(rng.randint(0, len(facts)), relevant)
    return tuple(facts)


def in_scope_rows(cases: Sequence[EditCase], cfg: AlignDataConfig, rng: random.Random) -> list[Row]:
    rows = []
    for _ in range(cfg.in_scope):
        case = rng.choice(cases)
        probe = rng.choice(case.rewrite + case.paraphrases)
        rows.append(Row("in_scope", probe.prompt, facts_with(case.edit.statement, cases, cfg, rng),
                        case.edit.target_new))
    return rows


def out_of_scope_rows(cases: Sequence[EditCase], cfg: AlignDataConfig, rng: random.Random) -> list[Row]:
    """Near misses: the case's own fact is in the context but the request is about something else."""
    with_probes = [c for c in cases if c.locality]
    rows = []
    for i in range(cfg.out_of_scope):
        case = rng.choice(with_probes)
        probe = rng.choice(case.locality)
        relevant = case.edit.statement if i % 4 else None  # a quarter: only random distractors
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
    cases = table_cases(cfg.table_edits, rng)
    for path in data_files:
        cases += load_cases(path)
    rows = (in_scope_rows(cases, cfg, rng) + out_of_scope_rows(cases, cfg, rng) + linguistic_rows(cases, cfg, rng)
            + describe_rows(cases, cfg, rng))
    rows = distill(rows, loaded, cfg, progress)
    rows += no_fact_rows(rows, cfg.no_facts_share, rng)
    rng.shuffle(rows)
    return [row.conversation() for row in rows]


def write_rows(rows: list[dict], path: Path) -> str:
    """Write JSONL atomically; returns the content hash recorded in the model's manifest."""
    text = "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)
    return hashlib.sha256(text.encode()).hexdigest()[:16]
