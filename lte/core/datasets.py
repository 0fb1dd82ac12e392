"""Read editing datasets in every common format into `EditCase`s, detecting the format from the records.

Formats: ROME CounterFact, EasyEdit CounterFact, KnowEdit (ZsRE, wiki_counterfact, wiki_recent, WikiBio), zsRE in
MEND's format, MQuAKE, and lte's own JSON/JSONL/CSV (flat edits, or cases as written by `EditCase.to_dict`).
A name that is not a local file is tried with `datasets.load_dataset` (needs the hub).
"""

from __future__ import annotations

import csv
import json
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lte.core.errors import InputFileError, SchemaError, need
from lte.core.schema import Edit, EditCase, Probe, flatten_answers

Record = Mapping[str, Any]


@dataclass(frozen=True)
class SourcedRecord:
    """A raw record and where it came from ('file.jsonl:12' or 'file.json: record 3') for error messages."""

    record: Any
    where: str


# ---------------------------------------------------------------- reading files

def read_records(path: str | Path) -> list[SourcedRecord]:
    """JSON (a list, or an object with a list under 'data'), JSONL, or CSV; every record tagged with its location."""
    path = Path(path)
    if not path.is_file():
        raise InputFileError(f"{path}: no such file")
    if path.suffix.lower() == ".csv":
        return list(_read_csv(path))
    text = path.read_text(encoding="utf-8")
    try:
        return _read_json_document(path, json.loads(text))
    except json.JSONDecodeError as error:
        if text.lstrip().startswith("["):
            raise SchemaError(f"{path}:{error.lineno}: invalid JSON: {error.msg}") from None
    return list(_read_jsonl(path, text))  # not one JSON document: one record per line


def _read_json_document(path: Path, document: Any) -> list[SourcedRecord]:
    if isinstance(document, Mapping) and isinstance(document.get("data"), list):
        document = document["data"]
    if isinstance(document, Mapping):
        return [SourcedRecord(document, f"{path}: record 0")]
    if not isinstance(document, list):
        raise SchemaError(f"{path}: expected a JSON list of records, got {type(document).__name__}")
    return [SourcedRecord(record, f"{path}: record {i}") for i, record in enumerate(document)]


def _read_jsonl(path: Path, text: str) -> Iterator[SourcedRecord]:
    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            yield SourcedRecord(json.loads(line), f"{path}:{lineno}")
        except json.JSONDecodeError as error:
            raise SchemaError(f"{path}:{lineno}: invalid JSON at column {error.colno}: {error.msg}") from None


def _read_csv(path: Path) -> Iterator[SourcedRecord]:
    with path.open(newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        for row in reader:
            record = {k.strip(): v for k, v in row.items() if k and v not in (None, "")}
            if "paraphrases" in record:
                record["paraphrases"] = [p for p in record["paraphrases"].split("|") if p.strip()]
            yield SourcedRecord(record, f"{path}:{reader.line_num}")


# ---------------------------------------------------------------- one converter per format

def _probes(items: Any, answers: Any = (), kind: str = "") -> list[Probe]:
    """Probe prompts given as strings (sharing `answers`) or as {prompt, ground_truth} dicts."""
    if isinstance(items, (str, Mapping)):
        items = [items]
    probes = []
    for item in items or ():
        if isinstance(item, Mapping):
            prompts = item.get("prompt")
            item_answers = flatten_answers(item.get("ground_truth", item.get("answers", item.get("answer"))))
        else:
            prompts, item_answers = item, flatten_answers(answers)
        for prompt in [prompts] if isinstance(prompts, str) else prompts or ():
            probes.append(Probe(prompt=prompt.strip(), answers=item_answers, kind=kind))
    return probes


def _first(value: Any) -> str | None:
    answers = flatten_answers(value)
    return answers[0] if answers else None


# A dataset's paraphrase prompts are test probes: they never go into `Edit.paraphrases`, which are retrieval keys.
# Storing them would let retrieval match the exact test wording and inflate generalization.

def from_rome_counterfact(r: Record, where: str) -> EditCase:
    rewrite = r["requested_rewrite"]
    subject = rewrite["subject"]
    edit = Edit(subject=subject, prompt=rewrite["prompt"].format(subject), target_new=_first(rewrite["target_new"]),
                target_true=_first(rewrite.get("target_true")), relation=rewrite.get("relation_id", ""),
                source="counterfact")
    return EditCase.from_edits(r.get("case_id", where), [edit],
                               paraphrases=_probes(r.get("paraphrase_prompts"), edit.target_new),
                               locality=_probes(r.get("neighborhood_prompts"), edit.target_true))


def from_easyedit_counterfact(r: Record, where: str) -> EditCase:
    edit = Edit(subject=r["subject"], prompt=r["prompt"], target_new=_first(r["target_new"]),
                target_true=_first(r.get("ground_truth")), source="counterfact")
    return EditCase.from_edits(r.get("case_id", where), [edit],
                               paraphrases=_probes(r.get("rephrase_prompt"), edit.target_new),
                               locality=_probes(r.get("locality_prompt"), r.get("locality_ground_truth")))


def from_knowedit(r: Record, where: str) -> EditCase:
    if "text" in r and "labels" in r:  # WikiBio: continue the passage with the corrected sentence
        edit = Edit(subject=r["concept"], prompt=r["text"], target_new=r["labels"], source="wikibio")
    else:
        edit = Edit(subject=r["subject"], prompt=r["prompt"], target_new=_first(r["target_new"]),
                    target_true=_first(r.get("ground_truth")), source="knowedit")
    return EditCase.from_edits(
        r.get("case_id", where), [edit],
        paraphrases=_probes(r.get("rephrase_prompt"), edit.target_new),
        locality=[p for kind, items in (r.get("locality") or {}).items() for p in _probes(items, kind=kind)],
        portability=[p for kind, items in (r.get("portability") or {}).items() for p in _probes(items, kind=kind)],
    )


def from_zsre_mend(r: Record, where: str) -> EditCase:
    edit = Edit(subject=r["subject"], prompt=r["src"], target_new=_first(r["alt"]),
                target_true=_first(r.get("answers") or r.get("pred")), source="zsre")
    return EditCase.from_edits(r.get("case_id", where), [edit],
                               paraphrases=_probes(r.get("rephrase"), edit.target_new),
                               locality=_probes(_nq_question(r.get("loc")), r.get("loc_ans")))


def _nq_question(loc: str | None) -> str | None:
    """MEND stores locality questions as 'nq question: who wrote ...'; ask them as questions."""
    if not loc:
        return None
    question = loc.removeprefix("nq question:").strip()
    return question if question.endswith("?") else f"{question}?"


def from_mquake(r: Record, where: str) -> EditCase:
    edits, paraphrases = [], []
    for rewrite in r["requested_rewrite"]:
        subject = rewrite["subject"]
        edit = Edit(subject=subject, prompt=rewrite["prompt"].format(subject), target_new=_first(rewrite["target_new"]),
                    target_true=_first(rewrite.get("target_true")), statement=rewrite.get("fact_new", ""),
                    relation=rewrite.get("relation_id", ""), source="mquake")
        edits.append(edit)
        paraphrases += _probes(rewrite.get("question"), edit.target_new)
    answers = flatten_answers([r.get("new_answer")] + list(r.get("new_answer_alias") or []))
    return EditCase.from_edits(r.get("case_id", where), edits, paraphrases=paraphrases,
                               portability=_probes(r.get("questions"), answers, kind="multi_hop"))


def from_lte(r: Record, where: str) -> EditCase:
    """lte's own format: a flat edit (with optional probe lists) or a case with an 'edits' list."""
    if "edits" in r:
        edits = [Edit.from_dict(e, f"{where} edits[{i}]") for i, e in enumerate(r["edits"])]
        paraphrases = _lte_probes(r, "paraphrases", where)
    else:
        edits = [Edit.from_dict(r, where)]
        paraphrases = [Probe(p, (edits[0].target_new,)) for p in edits[0].paraphrases]
    return EditCase.from_edits(r.get("case_id", edits[0].id), edits, paraphrases=paraphrases,
                               locality=_lte_probes(r, "locality", where),
                               portability=_lte_probes(r, "portability", where))


def _lte_probes(r: Record, key: str, where: str) -> list[Probe]:
    items = r.get(key) or []
    if not isinstance(items, list):
        raise SchemaError(f"{where}: field '{key}': must be a list of probes")
    return [Probe.from_dict(item, f"{where} {key}[{i}]") for i, item in enumerate(items)]


def from_unke(r: Record, where: str) -> EditCase:
    """UnKE: a question whose new answer is a paragraph; sub-questions probe details of it. No subject is given,
    so the question stands in for it."""
    question = r["question"]
    edit = Edit(subject=question, prompt=question, target_new=r["answer"], statement=r["answer"], source="unke")
    portability = [Probe(q, flatten_answers(a), kind="sub_question")
                   for q, a in zip(r.get("sub_question") or (), r.get("sub_answer") or ())]
    return EditCase.from_edits(r.get("id", where), [edit], portability=portability,
                               paraphrases=_probes(r.get("para_question"), edit.target_new))


def from_known_facts(r: Record, where: str) -> EditCase:
    """ROME's known facts: no edit at all, the 'new' target is the true one. A pool of ordinary factual prompts."""
    edit = Edit(subject=r["subject"], prompt=r["prompt"], target_new=r["attribute"], target_true=r["attribute"],
                relation=r.get("relation_id", ""), source="rome_knowns")
    return EditCase.from_edits(r.get("known_id", where), [edit])


# ---------------------------------------------------------------- detection

@dataclass(frozen=True)
class Format:
    name: str
    matches: Callable[[Record], bool]
    convert: Callable[[Record, str], EditCase]


FORMATS: tuple[Format, ...] = (
    Format("mquake", lambda r: isinstance(r.get("requested_rewrite"), list), from_mquake),
    Format("rome_counterfact", lambda r: isinstance(r.get("requested_rewrite"), Mapping), from_rome_counterfact),
    Format("zsre_mend", lambda r: "src" in r and "alt" in r, from_zsre_mend),
    Format("knowedit", lambda r: isinstance(r.get("locality"), Mapping) or isinstance(r.get("portability"), Mapping)
           or {"text", "labels", "concept"} <= r.keys(), from_knowedit),
    Format("easyedit_counterfact", lambda r: "rephrase_prompt" in r or "locality_prompt" in r,
           from_easyedit_counterfact),
    Format("unke", lambda r: {"question", "answer", "sub_question"} <= r.keys(), from_unke),
    Format("rome_knowns", lambda r: {"known_id", "attribute", "subject"} <= r.keys(), from_known_facts),
    Format("lte", lambda r: "edits" in r or {"prompt", "target_new"} <= r.keys(), from_lte),
)


def detect_format(record: Any, where: str = "") -> Format:
    if not isinstance(record, Mapping):
        raise SchemaError(f"{where}: expected a JSON object, got {type(record).__name__}")
    for fmt in FORMATS:
        if fmt.matches(record):
            return fmt
    names = ", ".join(f.name for f in FORMATS)
    raise SchemaError(f"{where}: unrecognised record (keys: {sorted(record)}); known formats: {names}")


def to_cases(records: Sequence[SourcedRecord], strict: bool = True) -> list[EditCase]:
    """Convert every record; the format is detected from the first and must hold for all.

    strict: the first invalid record raises (nothing is returned). Otherwise invalid records are skipped with a
    warning naming each one: public datasets carry a few (zsRE's train split has an edit with an empty target)."""
    if not records:
        return []
    fmt = detect_format(records[0].record, records[0].where)
    cases, skipped = [], []
    for item in records:
        try:
            cases.append(_convert(fmt, item))
        except SchemaError as error:
            if strict:
                raise
            skipped.append(str(error))
    if skipped:
        warnings.warn(f"skipped {len(skipped)} invalid record(s): " + "; ".join(skipped[:5]), stacklevel=2)
    return cases


def _convert(fmt: Format, item: SourcedRecord) -> EditCase:
    if not isinstance(item.record, Mapping):
        raise SchemaError(f"{item.where}: expected a JSON object, got {type(item.record).__name__}")
    try:
        return fmt.convert(item.record, item.where)
    except SchemaError as error:
        if str(error).startswith(item.where):
            raise
        raise SchemaError(f"{item.where}: {error}") from None
    except (KeyError, TypeError, AttributeError, ValueError) as error:
        problem = f"missing field {error}" if isinstance(error, KeyError) else str(error)
        raise SchemaError(f"{item.where}: not a valid {fmt.name} record: {problem}") from None


def load_cases(source: str | Path, limit: int | None = None, split: str = "train",
               strict: bool = False) -> list[EditCase]:
    """Cases from a local file, or from the hub via `datasets.load_dataset(source, split=split)`."""
    cases = to_cases(_records(source, split), strict=strict)
    return cases[:limit] if limit else cases


def _records(source: str | Path, split: str = "train") -> list[SourcedRecord]:
    path = Path(source)
    return read_records(path) if path.exists() else _hub_records(str(source), split)


def load_edits(source: str | Path) -> list[Edit]:
    """Every edit a file holds, whatever its format (edits are taken from the cases). Strict: one bad record
    rejects the whole file, so nothing half-read is ever stored."""
    return [edit for edit, _ in located_edits(source)]


def located_edits(source: str | Path) -> list[tuple[Edit, str]]:
    """`load_edits` with where each edit came from ('file:line'), for errors found later (a reused id)."""
    records = _records(source)
    cases = to_cases(records, strict=True)  # strict: one case per record, in order
    return [(edit, item.where) for item, case in zip(records, cases) for edit in case.edits]


def _hub_records(name: str, split: str) -> list[SourcedRecord]:
    datasets = need("datasets", f"{name}: no such file; reading it from the hub")
    try:
        rows = datasets.load_dataset(name, split=split)
    except Exception as error:  # the hub raises many types; all mean "not loadable here"
        raise InputFileError(f"{name}: no such file, and datasets.load_dataset failed: {error}") from None
    return [SourcedRecord(dict(row), f"{name}[{split}]: record {i}") for i, row in enumerate(rows)]
