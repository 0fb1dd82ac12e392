"""The records lte works with: an `Edit` (one new fact) and an `EditCase` (an edit plus the prompts that test it).

An edit's fields are checked by one pydantic model, `EditRecord`, whether the edit comes from a file, an HTTP body or
code; a bad value raises `SchemaError` naming where it came from (file, line or record) and the field, so a user
can fix the input without guessing.
"""

from __future__ import annotations

import hashlib
import json
import re
import unicodedata
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, StringConstraints, ValidationError

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


def nfc(text: str) -> str:
    """One spelling per text: 'Zoë' typed with a combining diaeresis (NFD) and precomposed (NFC) are one subject."""
    return unicodedata.normalize("NFC", text)


def _blank_is_none(value: Any) -> Any:
    return None if value is None or (isinstance(value, str) and not value.strip()) else value


def _names_something(subject: str) -> str:
    if not re.search(r"\w", subject):
        raise ValueError("must contain a letter or digit")
    return subject


def _one_or_many(value: Any) -> Any:
    """A paraphrase may come as one string; none as null."""
    return () if value is None else (value,) if isinstance(value, str) else value


def _json_size(metadata: dict[str, Any]) -> dict[str, Any]:
    if len(json.dumps(metadata, ensure_ascii=False, default=str)) > LIMITS["metadata"]:
        raise ValueError(f"is over {LIMITS['metadata']} characters as JSON")
    return metadata


def _field_text(name: str, required: bool = True):
    """A text field: stripped, NFC, at most LIMITS[name] characters; optional ones take a blank as absent."""
    text = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=LIMITS[name]),
                     AfterValidator(nfc)]
    return text if required else Annotated[text | None, BeforeValidator(_blank_is_none)]


Paraphrase = Annotated[str, StringConstraints(strip_whitespace=True, max_length=LIMITS["paraphrase"]),
                       AfterValidator(nfc)]


class EditRecord(BaseModel):
    """An edit's fields as they arrive, checked in one place (see `Edit` for their meaning). Unknown keys are
    ignored, so dataset records with extra columns load."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    subject: Annotated[_field_text("subject"), AfterValidator(_names_something)]
    prompt: _field_text("prompt")
    target_new: _field_text("target_new")
    target_true: _field_text("target_true", required=False) = None
    statement: _field_text("statement", required=False) = None
    relation: _field_text("relation", required=False) = None
    paraphrases: Annotated[tuple[Paraphrase, ...], BeforeValidator(_one_or_many), Field(max_length=MAX_PARAPHRASES),
                           AfterValidator(lambda items: tuple(item for item in items if item))] = ()
    source: _field_text("source", required=False) = None
    created_at: str | None = None
    metadata: Annotated[dict[str, Any], BeforeValidator(lambda value: {} if value is None else value),
                        AfterValidator(_json_size)] = Field(default_factory=dict)
    id: _field_text("id", required=False) = None


REQUIRED = "is required and must be a non-empty string"
OPTIONAL = ("target_true", "source")  # absent is None; the other optional texts are derived when absent ("")


def schema_error(where: str, error: ValidationError) -> SchemaError:
    """The first problem of a pydantic error, in lte's words: `where: field 'statement': is 4100 characters; the
    limit is 4000`."""
    item = error.errors()[0]
    name = item["loc"][0] if item["loc"] else "record"
    index = item["loc"][1] if len(item["loc"]) > 1 and isinstance(item["loc"][1], int) else None
    value, kind, context = item.get("input"), item["type"], item.get("ctx", {})
    if name == "paraphrases" and (kind in ("tuple_type", "list_type") or kind == "string_type" and index is not None):
        return _fail(where, name, "must be a string or a list of strings")
    if kind == "missing" or kind == "string_too_short" or (kind == "string_type" and value is None):
        problem = REQUIRED
    elif kind == "string_type":
        problem = f"must be a string, got {type(value).__name__}"
    elif kind == "string_too_long":
        problem = f"is {len(value)} characters; the limit is {context['max_length']}"
    elif kind == "too_long":
        problem = f"has {len(value)} entries; the limit is {context['max_length']}"
    elif kind == "dict_type":
        problem = "must be an object"
    elif kind == "value_error":
        problem = str(context.get("error", item["msg"]))
    else:
        problem = item["msg"]
    return _fail(where, f"{name}[{index}]" if index is not None else str(name), problem)


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
        where = f"edit {self.id}" if isinstance(self.id, str) and self.id.strip() else ""  # from_dict adds the file
        try:
            record = EditRecord.model_validate({name: getattr(self, name) for name in EditRecord.model_fields})
        except ValidationError as error:
            raise schema_error(where, error) from None
        # Frozen dataclass: the checked, normalised values and derived defaults are set through object.__setattr__.
        for name, value in record:
            object.__setattr__(self, name, value if value is not None or name in OPTIONAL else "")
        if not self.statement:
            object.__setattr__(self, "statement", default_statement(self.prompt, self.target_new))
        if not self.relation:
            object.__setattr__(self, "relation", relation_template(self.subject, self.prompt))
        if not self.id:
            object.__setattr__(self, "id", content_id(self.subject, self.prompt, self.target_new))
        if not self.created_at:
            object.__setattr__(self, "created_at", datetime.now(UTC).isoformat(timespec="seconds"))

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
        try:
            checked = EditRecord.model_validate(record)
        except ValidationError as error:
            raise schema_error(where, error) from None
        return cls(**{name: value for name, value in checked if value is not None})

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
