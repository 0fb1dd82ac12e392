"""The records lte works with: an `Edit` (one new fact) and an `EditCase` (an edit plus the prompts that test it).

Both validate on construction from dicts and raise `SchemaError` naming where the bad value came from
(file, line or record, and field), so a user can fix the input without guessing.
"""

from __future__ import annotations

import hashlib
import json
import re
import unicodedata
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

from lte.core.errors import SchemaError

# The four facets every editor is scored on (lte/core/harness.py); defined here, once, because cases carry their probes.
FACETS = ("reliability", "generalization", "locality", "portability")


def _fail(where: str, field_name: str, problem: str) -> SchemaError:
    location = f"{where}: " if where else ""
    return SchemaError(f"{location}field '{field_name}': {problem}")


def _text(record: Mapping[str, Any], key: str, where: str, required: bool = True) -> str | None:
    value = record.get(key)
    if value is None or (isinstance(value, str) and not value.strip()):
        if required:
            raise _fail(where, key, "is required and must be a non-empty string")
        return None
    if not isinstance(value, str):
        raise _fail(where, key, f"must be a string, got {type(value).__name__}")
    return value.strip()


def _texts(record: Mapping[str, Any], key: str, where: str) -> tuple[str, ...]:
    value = record.get(key) or ()
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
        raise _fail(where, key, "must be a string or a list of strings")
    return tuple(v.strip() for v in value if v.strip())


def relation_template(subject: str, prompt: str) -> str:
    """The prompt with its subject replaced by '{}', e.g. '{} is located in': the relation an edit changes."""
    pattern = re.compile(re.escape(subject), re.IGNORECASE)
    return pattern.sub("{}", prompt, count=1) if pattern.search(prompt) else prompt


# Most characters per edit field, and most paraphrases: an edit's text goes into every prompt it matches, so one
# record must not be able to fill the context. Sized above the longest public records (UnKE's long-form answers
# ~1,000 characters, WikiBio prompts ~700).
LIMITS = {"subject": 300, "prompt": 1000, "target_new": 2000, "target_true": 2000, "statement": 4000,
          "relation": 1000, "paraphrase": 1000, "source": 300, "id": 200, "metadata": 10_000}
MAX_PARAPHRASES = 20
TEXT_FIELDS = ("subject", "prompt", "target_new", "target_true", "statement", "relation", "source", "id")


def nfc(text: str) -> str:
    """One spelling per text: 'Zoë' typed with a combining diaeresis (NFD) and precomposed (NFC) are one subject."""
    return unicodedata.normalize("NFC", text)


@dataclass(frozen=True)
class Edit:
    """One new fact: after the edit, `prompt` should be answered with `target_new`.

    subject: the entity whose fact changes ("The Space Needle").
    prompt: a cloze ("The Space Needle is located in") or question ("Where is the Space Needle?") naming the subject.
    target_new: the new answer ("Goa"). target_true: the answer it replaces, when known.
    statement: the fact as one sentence; derived from prompt and target when not given.
    relation: what supersedes what: a newer edit with the same subject and relation replaces this one for retrieval.
        Derived from the prompt with the subject blanked out ('{} is located in') when not given.
    paraphrases: other phrasings of the prompt (indexed for retrieval).
    id: stable content hash of subject, prompt and target_new unless given, so re-importing a file is idempotent.
    Text is normalised to Unicode NFC; lengths are bounded by LIMITS and MAX_PARAPHRASES; a subject must contain a
    letter or digit (the relevance gate checks that the question names it).
    """

    subject: str
    prompt: str
    target_new: str
    target_true: str | None = None
    statement: str = ""
    relation: str = ""
    paraphrases: tuple[str, ...] = ()
    source: str | None = None
    created_at: str = ""
    metadata: Mapping[str, Any] = field(default_factory=dict)
    id: str = ""

    def __post_init__(self) -> None:
        where = f"edit {self.id}" if self.id else ""  # from_dict adds the file and line
        for name in ("subject", "prompt", "target_new"):
            value = getattr(self, name)
            if not isinstance(value, str) or not value.strip():
                raise _fail(where, name, "is required and must be a non-empty string")
        # Frozen dataclass: normalised text and derived defaults are set through object.__setattr__.
        for name in TEXT_FIELDS:
            if isinstance(getattr(self, name), str):
                object.__setattr__(self, name, nfc(getattr(self, name)))
        object.__setattr__(self, "paraphrases", tuple(nfc(p) for p in self.paraphrases))
        self._check_limits(where)
        if not self.statement:
            object.__setattr__(self, "statement", default_statement(self.prompt, self.target_new))
        if not self.relation:
            object.__setattr__(self, "relation", relation_template(self.subject, self.prompt))
        if not self.id:
            object.__setattr__(self, "id", content_id(self.subject, self.prompt, self.target_new))
        if not self.created_at:
            object.__setattr__(self, "created_at", datetime.now(UTC).isoformat(timespec="seconds"))

    def _check_limits(self, where: str) -> None:
        if not re.search(r"\w", self.subject):
            raise _fail(where, "subject", "must contain a letter or digit")
        for name in TEXT_FIELDS:
            value = getattr(self, name)
            if isinstance(value, str) and len(value) > LIMITS[name]:
                raise _fail(where, name, f"is {len(value)} characters; the limit is {LIMITS[name]}")
        if len(json.dumps(dict(self.metadata), ensure_ascii=False, default=str)) > LIMITS["metadata"]:
            raise _fail(where, "metadata", f"is over {LIMITS['metadata']} characters as JSON")
        if len(self.paraphrases) > MAX_PARAPHRASES:
            raise _fail(where, "paraphrases", f"has {len(self.paraphrases)} entries; the limit is {MAX_PARAPHRASES}")
        for i, text in enumerate(self.paraphrases):
            if len(text) > LIMITS["paraphrase"]:
                raise _fail(where, f"paraphrases[{i}]", f"is {len(text)} characters; the limit is "
                            f"{LIMITS['paraphrase']}")

    def same_content(self, other: Edit) -> bool:
        """Whether two edits say the same thing (ids aside): a stored id may only come back with its own content."""
        names = ("subject", "prompt", "target_new", "target_true", "statement", "relation", "paraphrases")
        return all(getattr(self, name) == getattr(other, name) for name in names)

    @property
    def supersede_key(self) -> str:
        """Edits sharing this key describe the same (subject, relation) slot; the newest one is current."""
        return f"{self.subject.strip().lower()}|{self.relation.strip().lower()}"

    @classmethod
    def from_dict(cls, record: Mapping[str, Any], where: str = "") -> Edit:
        if not isinstance(record, Mapping):
            raise SchemaError(f"{where}: expected a JSON object, got {type(record).__name__}")
        metadata = record.get("metadata") or {}
        if not isinstance(metadata, Mapping):
            raise _fail(where, "metadata", "must be an object")
        prompt = _text(record, "prompt", where)
        try:
            return cls(
                subject=_text(record, "subject", where),
                prompt=prompt,
                target_new=_text(record, "target_new", where),
                target_true=_text(record, "target_true", where, required=False),
                statement=_text(record, "statement", where, required=False) or "",
                relation=_text(record, "relation", where, required=False) or "",
                paraphrases=_texts(record, "paraphrases", where),
                source=_text(record, "source", where, required=False),
                created_at=_text(record, "created_at", where, required=False) or "",
                metadata=dict(metadata),
                id=_text(record, "id", where, required=False) or "",
            )
        except SchemaError as error:  # a check of the constructed edit: name where the record came from
            raise error if not where or str(error).startswith(where) else SchemaError(f"{where}: {error}") from None

    def to_dict(self) -> dict[str, Any]:
        record = asdict(self)
        record["paraphrases"] = list(self.paraphrases)
        record["metadata"] = dict(self.metadata)
        return record


def default_statement(prompt: str, target: str) -> str:
    """'The Space Needle is located in' + 'Goa' → 'The Space Needle is located in Goa.' (questions: 'Q? A.')."""
    return f"{prompt.strip()} {target.strip()}."


def content_id(subject: str, prompt: str, target_new: str) -> str:
    canonical = json.dumps([subject.strip(), prompt.strip(), target_new.strip()], ensure_ascii=False)
    return hashlib.sha1(canonical.encode("utf-8")).hexdigest()[:16]


@dataclass(frozen=True)
class Probe:
    """A prompt that tests an edit, with the answers that count as right (first = primary). `kind` names the
    dataset's sub-facet, e.g. 'Reasoning' or 'Subject_Aliasing'."""

    prompt: str
    answers: tuple[str, ...] = ()
    kind: str = ""

    @property
    def answer(self) -> str | None:
        return self.answers[0] if self.answers else None

    @classmethod
    def from_dict(cls, record: Mapping[str, Any], where: str = "") -> Probe:
        if isinstance(record, str):
            return cls(prompt=record)
        if not isinstance(record, Mapping):
            raise SchemaError(f"{where}: a probe must be a string or an object with 'prompt'")
        answers = record.get("answers", record.get("answer", ()))
        return cls(prompt=_text(record, "prompt", where), answers=flatten_answers(answers),
                   kind=str(record.get("kind") or ""))


def flatten_answers(value: Any) -> tuple[str, ...]:
    """Datasets give answers as a string, a list of strings or a list of alias lists; all become alternatives."""
    if value is None:
        return ()
    if isinstance(value, str):
        return (value.strip(),) if value.strip() else ()
    if isinstance(value, Mapping) and "str" in value:
        return flatten_answers(value["str"])
    if isinstance(value, Iterable):
        answers: list[str] = []
        for item in value:
            answers.extend(a for a in flatten_answers(item) if a not in answers)
        return tuple(answers)
    raise SchemaError(f"answer must be a string or list of strings, got {type(value).__name__}")


@dataclass(frozen=True)
class EditCase:
    """An evaluation case: the edit(s) to apply and the probes of each facet.

    rewrite → reliability, paraphrases → generalization, locality → locality (scored against the base model's
    own answer, so `answers` there are informational), portability → multi-hop / reasoning.
    """

    case_id: str
    edits: tuple[Edit, ...]
    rewrite: tuple[Probe, ...]
    paraphrases: tuple[Probe, ...] = ()
    locality: tuple[Probe, ...] = ()
    portability: tuple[Probe, ...] = ()

    def __post_init__(self) -> None:
        if not self.edits:
            raise SchemaError(f"case {self.case_id}: has no edit")

    @property
    def edit(self) -> Edit:
        return self.edits[0]

    def probes(self, facet: str) -> tuple[Probe, ...]:
        return {"reliability": self.rewrite, "generalization": self.paraphrases,
                "locality": self.locality, "portability": self.portability}[facet]

    @classmethod
    def from_edits(cls, case_id: str, edits: Iterable[Edit], **probes: Iterable[Probe]) -> EditCase:
        edits = tuple(edits)
        rewrite = tuple(Probe(e.prompt, (e.target_new,)) for e in edits)
        return cls(case_id=str(case_id), edits=edits, rewrite=rewrite,
                   **{name: tuple(items) for name, items in probes.items()})

    def to_dict(self) -> dict[str, Any]:
        def probe_list(probes: tuple[Probe, ...]) -> list[dict[str, Any]]:
            return [{"prompt": p.prompt, "answers": list(p.answers), "kind": p.kind} for p in probes]

        return {"case_id": self.case_id, "edits": [e.to_dict() for e in self.edits],
                "rewrite": probe_list(self.rewrite), "paraphrases": probe_list(self.paraphrases),
                "locality": probe_list(self.locality), "portability": probe_list(self.portability)}
