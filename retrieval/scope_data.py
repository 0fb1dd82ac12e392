"""Training pairs for the scope model: (question, edit prompt, in scope?) generated from training material only.

An edit is in scope for a question when the edit's answer is the question's answer, or part of it. Positives:
- the edit's own prompt and its paraphrases (clozes and questions, as the training files and lte's tables give them);
- the relation asked in other words ("The name of the founder of X is", "X founder", "Who founded X?"), built
  from the relation nouns in data/relation_nouns.json;
- multi-hop questions that go through the edit ("The capital of the country of citizenship of X"), and questions
  about a relation that follows from the edited one (a place's official language, when its country changes; the
  `implies` lists of the relation nouns): their answer depends on the edit, so it must reach them (portability);
- the edit's own question about the subject under another spelling of its name: a middle name or initial added or
  dropped, a letter changed, 'Last, First' (aliases are the same entity);
- the edit's paraphrase as the stored prompt and its prompt as the question (the files give one paraphrase each).
Negatives, the hard ones first:
- the same subject asked about **another relation**: the tables' other relations, other training cases' relation
  templates filled with this subject, and other relation nouns ("The name of the country of X is" for an edit about
  X's founder). Only the scope model can turn these away: they name the subject and share the edit's phrasing;
- the same relation about **another subject** (CounterFact neighbours, the tables' other subjects);
- a **similar-sounding subject**: one word of the name swapped for another name's ("Lionel Bolt" for "Lionel
  Messi"), asked the edit's own question;
- **unrelated** questions (other cases' prompts, the training files' own unrelated probes);
- **open text** that asks about no entity at all: instructions ("Give three tips for ..."), everyday prose and
  requests to continue it (data/scope_open.txt, written for this and apart from the general-ability probe). Without
  them a few edits with generic subjects ("Thirteen Colonies") pass for open prompts (results/scope-general.txt).

Which other relation is really another one is known exactly for the tables and the relation nouns; for the
training files' templates it is guessed (a different template sharing no content word), so a few of those
negatives are in truth paraphrases. `scope_pairs` returns the pairs; `mix` counts them by kind.
"""

from __future__ import annotations

import json
import random
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache, partial

import numpy as np
from lte_data import data_path

from lte.core.datasets import load_cases
from lte.core.schema import EditCase, relation_template
from lte.core.tables import SAME_SUBJECT_KINDS, table_cases

POSITIVE_KINDS = ("prompt", "paraphrase", "relation_noun", "multi_hop", "dependent", "alias")
NEGATIVE_KINDS = ("other_relation", "other_subject", "similar_subject", "unrelated", "open")

# How a relation noun is asked about a subject, in the shapes knowledge-editing data uses: a named cloze, a plain
# cloze, a terse key phrase, and questions.
NOUN_FRAMES = ("The name of the {noun} of {s} is", "The {noun} of {s} is", "{s} {noun}",
               "What is the {noun} of {s}?", "{s}'s {noun} is")
# Two hops: the outer relation of what the inner relation of the subject is.
HOP_FRAMES = ("The name of the {outer} of the {inner} of {s} is", "What is the {outer} of the {inner} of {s}?",
              "The name of the {outer} of the {inner} {s} is associated with is")
INITIALS = "ABCDEFGHJKLMNPRSTW"
IMPLYING_SHARE = 0.15  # of relation-noun edits about a relation others follow from (3 of the 72 nouns)
STOPWORDS = frozenset("the of a an is are was were in on at to by for from with and or what which who whom whose "
                      "where when how does did do has have had be been its it this that as name".split())


@dataclass(frozen=True)
class ScopePair:
    """question: what is asked; edit_prompt: the stored edit's prompt; label: whether the edit answers the question;
    kind: which generator made it (POSITIVE_KINDS, NEGATIVE_KINDS); subject: the edit's subject (what a
    subject-marked scope model marks in both texts)."""

    question: str
    edit_prompt: str
    label: bool
    kind: str
    subject: str


@dataclass
class ScopeDataConfig:
    """cases_per_source: most training cases taken from each file (the largest file would otherwise decide alone;
    zsRE's training split has 1,000). table_edits / noun_edits: edits generated from lte's tables and from the
    relation nouns (the nouns teach which words name the relation, whatever the wording around them).
    other_relations: same-subject other-relation negatives per relation-noun edit (the hard kind, so the most of
    them); near_relations: of those, how many are drawn from the relations whose nouns are nearest the edit's by the
    embedder's cosine ("mother" for "father", "head of state" for "head of government"), the rest at random;
    template_negatives: per training-file case, other cases' relation templates filled with its subject
    (besides one relation noun and its own locality probes). open_text: open-text negatives, each an instruction
    or passage paired with a random edit. The defaults make ~45,000 pairs, one epoch of which
    trains in about 14 minutes on two CPU cores."""

    cases_per_source: int = 1500
    table_edits: int = 800
    noun_edits: int = 1500
    other_relations: int = 3
    near_relations: int = 0
    template_negatives: int = 1
    open_text: int = 2000
    seed: int = 0


@cache
def relation_nouns() -> tuple[dict, ...]:
    return tuple(json.loads(data_path("relation_nouns.json").read_text()))


def content_words(text: str) -> set[str]:
    return {w for w in re.findall(r"\w+", text.lower()) if w not in STOPWORDS}


def noun_question(noun: str, subject: str, rng: random.Random) -> str:
    return rng.choice(NOUN_FRAMES).format(noun=noun, s=subject)


def noun_forms(entry: dict) -> list[str]:
    return [entry["noun"], *entry.get("also", ())]


# ---------------------------------------------------------------- from training files

def case_pairs(case: EditCase, templates: Sequence[str], others: Sequence[EditCase], names: Sequence[str],
               cfg: ScopeDataConfig, rng: random.Random) -> list[ScopePair]:
    """Pairs for one training-file case: its own probes, plus other relations asked of its subject."""
    edit = case.edit
    pair = partial(ScopePair, subject=edit.subject)
    pairs = [pair(edit.prompt, edit.prompt, True, "prompt")]
    pairs += [pair(p.prompt, edit.prompt, True, "paraphrase") for p in case.paraphrases]
    pairs += [pair(edit.prompt, p.prompt, True, "paraphrase") for p in case.paraphrases[:1]]
    pairs += [pair(p.prompt, edit.prompt, False,
                   "other_relation" if p.kind in SAME_SUBJECT_KINDS else locality_kind(p.prompt, edit.subject))
              for p in case.locality]
    own = content_words(" ".join(relation_template(edit.subject, t)
                                 for t in (edit.prompt, *(p.prompt for p in case.paraphrases))))
    pairs += [pair(t.format(edit.subject), edit.prompt, False, "other_relation")
              for t in other_templates(templates, own, cfg.template_negatives, rng)]
    nouns = [e for e in relation_nouns() if not any(content_words(f) & own for f in noun_forms(e))]
    if nouns:
        pairs.append(pair(noun_question(rng.choice(nouns)["noun"], edit.subject, rng), edit.prompt, False,
                          "other_relation"))
    pairs += similar_and_unrelated(case, others, names, rng)
    return pairs


def locality_kind(prompt: str, subject: str) -> str:
    return "other_relation" if subject.lower() in prompt.lower() else "other_subject"


def other_templates(templates: Sequence[str], own: set[str], n: int, rng: random.Random) -> list[str]:
    """Up to n relation templates ('{} was born in') sharing no content word with the edit's own."""
    chosen: list[str] = []
    for _ in range(8 * n):
        if len(chosen) == n:
            break
        template = rng.choice(templates)
        if template not in chosen and not content_words(template) & own:
            chosen.append(template)
    return chosen


def similar_and_unrelated(case: EditCase, others: Sequence[EditCase], names: Sequence[str],
                          rng: random.Random) -> list[ScopePair]:
    """The edit's own question about a similar-sounding subject (no pass) and under an alias (pass), and another
    case's question (no pass)."""
    edit = case.edit
    pair = partial(ScopePair, subject=edit.subject)
    pairs = []
    question = rng.choice((case.rewrite[0], *case.paraphrases)).prompt
    if edit.subject in question:
        twin = other_entity(edit.subject, names, rng)
        if twin:
            pairs.append(pair(question.replace(edit.subject, twin), edit.prompt, False, "similar_subject"))
        if rng.random() < 0.5:
            pairs.append(pair(question.replace(edit.subject, alias(edit.subject, rng)), edit.prompt, True,
                              "alias"))
    other = rng.choice(others)
    if other.edit.subject.lower() != edit.subject.lower():
        pairs.append(pair(other.edit.prompt, edit.prompt, False, "unrelated"))
    return pairs


def other_entity(subject: str, names: Sequence[str], rng: random.Random) -> str | None:
    """Another entity with a name like `subject`'s: one word replaced by a capitalised word of another name ('Lionel
    Messi' → 'Lionel Bolt'); None for a one-word name (any change of it is either an alias or another name)."""
    words = subject.split()
    if len(words) < 2:
        return None
    for _ in range(10):
        donor = rng.choice(rng.choice(names).split())
        if donor[:1].isupper() and donor.lower() not in subject.lower() and len(donor) > 2:
            position = rng.randrange(len(words))
            return " ".join(words[:position] + [donor] + words[position + 1:])
    return None


def alias(subject: str, rng: random.Random) -> str:
    """Another spelling of the same name: an initial added after the first word, a middle word dropped, one letter
    of a long word changed, or 'Last, First'."""
    words = subject.split()
    choices = ["letter"] + (["initial", "reorder"] if len(words) >= 2 else []) + (["drop"] if len(words) >= 3 else [])
    how = rng.choice(choices)
    if how == "initial":
        return " ".join([words[0], f"{rng.choice(INITIALS)}."] + words[1:])
    if how == "drop":
        return " ".join(words[:1] + words[2:])
    if how == "reorder":
        return f"{words[-1]}, {' '.join(words[:-1])}"
    long = [i for i, w in enumerate(words) if len(w) >= 5 and w.isalpha()]
    if not long:
        return f"the {subject}"
    i = rng.choice(long)
    word = words[i]
    j = rng.randrange(1, len(word) - 1)
    vowels = "aeiou"
    swapped = rng.choice([v for v in vowels if v != word[j]]) if word[j] in vowels else word[j] + word[j]
    words[i] = word[:j] + swapped + word[j + 1:]
    return " ".join(words)


def templates_of(cases: Sequence[EditCase]) -> list[str]:
    """Distinct relation templates of the cases' prompts ('{} is located in'); prompts that do not name their
    subject give none."""
    found = (relation_template(c.edit.subject, c.edit.prompt) for c in cases)
    return sorted({t for t in found if "{}" in t and t.count("{") == 1 and len(t) > 4})


# ---------------------------------------------------------------- from lte's tables

def table_pairs(case: EditCase, nouns_by_table: dict[str, list[dict]], others: Sequence[EditCase],
                names: Sequence[str], rng: random.Random) -> list[ScopePair]:
    """A table case's own probes (paraphrases pass; other subjects and the subject's other relations do not), plus
    its relation in the relation nouns' words, and another relation noun of the same subject."""
    edit = case.edit
    pair = partial(ScopePair, subject=edit.subject)
    pairs = [pair(p.prompt, edit.prompt, True, "paraphrase") for p in (*case.rewrite, *case.paraphrases)]
    pairs += [pair(p.prompt, edit.prompt, False,
                   "other_relation" if p.kind in SAME_SUBJECT_KINDS else "other_subject")
              for p in case.locality]
    own = nouns_by_table.get(edit.relation, [])
    if own:
        pairs.append(pair(noun_question(rng.choice(noun_forms(rng.choice(own))), edit.subject, rng),
                          edit.prompt, True, "relation_noun"))
    implied = {noun for entry in own for noun in entry.get("implies", ())}
    if implied:
        pairs.append(pair(noun_question(rng.choice(sorted(implied)), edit.subject, rng), edit.prompt, True,
                          "dependent"))
    foreign = [e for e in relation_nouns() if e.get("table") != edit.relation and e["noun"] not in implied]
    pairs.append(pair(noun_question(rng.choice(foreign)["noun"], edit.subject, rng), edit.prompt, False,
                      "other_relation"))
    return pairs + similar_and_unrelated(case, others, names, rng)


# ---------------------------------------------------------------- from relation nouns

def noun_pairs(subject: str, others: Sequence[str], names: Sequence[str], cfg: ScopeDataConfig,
               rng: random.Random) -> list[ScopePair]:
    """An edit 'the <noun> of <subject>' asked in other frames, through a second hop, about a relation it implies
    and under an alias (pass); about other nouns, about another subject, about a similar-sounding one, and the
    reverse hop, which asks about something else (no pass)."""
    implying = [e for e in relation_nouns() if e.get("implies")]
    entry = rng.choice(implying if rng.random() < IMPLYING_SHARE else relation_nouns())
    implied = set(entry.get("implies", ()))
    rest = other_nouns(entry, implied, cfg, rng)
    prompt = noun_question(entry["noun"], subject, rng)
    pair = partial(ScopePair, subject=subject)
    outer = rest[-1]["noun"]
    pairs = [pair(noun_question(rng.choice(noun_forms(entry)), subject, rng), prompt, True, "relation_noun")
             for _ in range(2)]
    pairs.append(pair(rng.choice(HOP_FRAMES).format(outer=outer, inner=entry["noun"], s=subject), prompt,
                      True, "multi_hop"))
    if implied:
        pairs.append(pair(noun_question(rng.choice(sorted(implied)), subject, rng), prompt, True, "dependent"))
    if rng.random() < 0.5:
        pairs.append(pair(noun_question(entry["noun"], alias(subject, rng), rng), prompt, True, "alias"))
    pairs += [pair(noun_question(e["noun"], subject, rng), prompt, False, "other_relation")
              for e in rest[:-1]]
    if rng.random() < 0.3:
        pairs.append(pair(rng.choice(HOP_FRAMES).format(outer=entry["noun"], inner=outer, s=subject), prompt,
                          False, "other_relation"))
    other = rng.choice(others)
    if other.lower() != subject.lower():
        pairs.append(pair(noun_question(entry["noun"], other, rng), prompt, False, "other_subject"))
    twin = other_entity(subject, names, rng)
    if twin:
        pairs.append(pair(noun_question(entry["noun"], twin, rng), prompt, False, "similar_subject"))
    return [p for p in pairs if p.question != prompt or p.label]


NEAR_POOL = 6  # the nearest nouns a near negative is drawn from (of 72)


def other_nouns(entry: dict, implied: set[str], cfg: ScopeDataConfig, rng: random.Random) -> list[dict]:
    """1 + cfg.other_relations relation nouns other than the edit's and those it implies: cfg.near_relations of
    them among its NEAR_POOL nearest by meaning that share no word with it, the rest (and always the last, the
    second hop's) at random."""
    allowed = [e for e in relation_nouns() if e is not entry and e["noun"] not in implied]
    chosen: list[dict] = []
    if cfg.near_relations:
        own = content_words(entry["noun"])  # "country of origin" may still mean "country": not a near negative
        near = [e for e in nearest_nouns(entry["noun"]) if e in allowed and not content_words(e["noun"]) & own]
        near = near[:NEAR_POOL]
        chosen = rng.sample(near, min(cfg.near_relations, len(near), cfg.other_relations))
    chosen += rng.sample([e for e in allowed if e not in chosen], 1 + cfg.other_relations - len(chosen))
    return chosen


@cache
def nearest_nouns(noun: str) -> tuple[dict, ...]:
    """The other relation nouns, nearest to `noun` by the bundled embedder's cosine first."""
    entries = relation_nouns()
    vectors = noun_vectors()
    i = next(k for k, e in enumerate(entries) if e["noun"] == noun)
    order = np.argsort(-(vectors @ vectors[i]))
    return tuple(entries[k] for k in order if k != i)


@cache
def noun_vectors() -> np.ndarray:
    from retrieval.embedder import Embedder

    return Embedder().encode([e["noun"] for e in relation_nouns()])


# ---------------------------------------------------------------- open text

PASSAGE_FRAME = "Continue this passage: {}"


@cache
def open_lines() -> tuple[str, ...]:
    return tuple(line.strip() for line in data_path("scope_open.txt").read_text(encoding="utf-8").splitlines()
                 if line.strip())


def open_text(rng: random.Random) -> str:
    """An instruction or a passage of one or two sentences, as it is or framed as a request to continue it."""
    lines = open_lines()
    text = rng.choice(lines)
    if not text.endswith((".", "!")):  # an instruction or a question: as a user writes it
        return text
    if rng.random() < 0.5:
        text = f"{text} {rng.choice(lines)}"
    return PASSAGE_FRAME.format(text) if rng.random() < 0.5 else text


def open_pairs(edits: Sequence[tuple[str, str]], n: int, rng: random.Random) -> list[ScopePair]:
    """n open texts, each against a random edit (its prompt and subject): no edit is about them."""
    pairs = []
    for _ in range(n if edits else 0):
        text = open_text(rng)
        prompt, subject = rng.choice(edits)
        pairs.append(ScopePair(text, prompt, False, "open", subject))
    return pairs


# ---------------------------------------------------------------- all together

def scope_pairs(file_cases: Sequence[Sequence[EditCase]], table: Sequence[EditCase],
                cfg: ScopeDataConfig | None = None) -> list[ScopePair]:
    """Every pair, shuffled: each training file's cases (at most cfg.cases_per_source each), the table cases,
    cfg.noun_edits edits built from the relation nouns about subjects drawn from all of them, and cfg.open_text
    open texts against the edits of all of them."""
    cfg = cfg or ScopeDataConfig()
    rng = random.Random(cfg.seed)
    groups = [list(cases)[: cfg.cases_per_source] for cases in file_cases]
    everyone = [c for group in groups for c in group] + list(table)
    names = sorted({c.edit.subject for c in everyone})
    pairs: list[ScopePair] = []
    for group in groups:
        templates = templates_of(group)
        pairs += [p for case in group for p in case_pairs(case, templates, group, names, cfg, rng)]
    by_table: dict[str, list[dict]] = {}
    for entry in relation_nouns():
        if entry.get("table"):
            by_table.setdefault(entry["table"], []).append(entry)
    pairs += [p for case in table for p in table_pairs(case, by_table, table, names, rng)]
    if names:
        pairs += [p for _ in range(cfg.noun_edits) for p in noun_pairs(rng.choice(names), names, names, cfg, rng)]
    pairs += open_pairs(sorted({(p.edit_prompt, p.subject) for p in pairs}), cfg.open_text, rng)
    unique = list({(p.question, p.edit_prompt): p for p in pairs}.values())
    rng.shuffle(unique)
    return unique


def training_pairs(data_files: Sequence[str], cfg: ScopeDataConfig | None = None) -> list[ScopePair]:
    """The pairs `lte scope train` and `lte align` train on: the files' cases, cfg.table_edits table cases (drawn
    apart from the alignment set's) and the relation nouns."""
    cfg = cfg or ScopeDataConfig()
    table = table_cases(cfg.table_edits, random.Random(cfg.seed + 1)) if cfg.table_edits else []
    return scope_pairs([load_cases(path) for path in data_files], table, cfg)


def mix(pairs: Sequence[ScopePair]) -> dict[str, int]:
    """How many pairs of each kind, positives first."""
    counts = Counter(p.kind for p in pairs)
    return {kind: counts[kind] for kind in (*POSITIVE_KINDS, *NEGATIVE_KINDS) if counts[kind]}
