"""lte's own counterfactual facts: edits sampled from the shipped entity and relation tables (data/), each with
paraphrases (clozes and questions) and neighbour probes that ask about another subject or another relation of the
same subject. Alignment, gate and scope training, and the learned editors' training all draw on them."""

from __future__ import annotations

import json
import random
from collections.abc import Sequence

from lte_data import data_path

from lte.core.schema import Edit, EditCase, Probe, default_statement


def table_cases(n: int, rng: random.Random) -> list[EditCase]:
    """Counterfactual edits from the shipped tables, each with paraphrases (clozes and questions) and neighbour
    probes whose `kind` says whether they ask about another subject or about another relation of the same one."""
    entities = json.loads(data_path("entities.json").read_text())
    relations = json.loads(data_path("relations.json").read_text())
    cases = []
    for i in range(n):
        relation = rng.choice(relations)
        subject, other = rng.sample(entities[relation["subject"]], 2)
        target = rng.choice([o for o in entities[relation["object"]] if o != subject])
        forms = [relation["cloze"]] + relation["questions"] + relation.get("paraphrases", [])
        edit = Edit(subject=subject, prompt=relation["cloze"].format(subject), target_new=target,
                    statement=table_statement(relation, forms, subject, target, rng), relation=relation["id"],
                    source="lte-tables")
        same_subject = [r for r in relations if r["subject"] == relation["subject"] and r["id"] != relation["id"]]
        neighbours = [Probe(relation["cloze"].format(other), kind=OTHER_SUBJECT),
                      Probe(rng.choice(relation["questions"]).format(other), kind=OTHER_SUBJECT)]
        other_relations = rng.sample(same_subject, min(2, len(same_subject)))  # as many as other-subject probes
        neighbours += [Probe(rng.choice([r["cloze"]] + r["questions"]).format(subject), kind=OTHER_RELATION)
                       for r in other_relations]
        cases.append(EditCase.from_edits(
            f"table-{i}", [edit], paraphrases=[Probe(q.format(subject), (target,)) for q in forms[1:]],
            locality=neighbours))
    return cases


def table_statement(relation: dict, forms: Sequence[str], subject: str, target: str, rng: random.Random) -> str:
    """Half the time the relation's own sentence; otherwise a cloze or question completed with the answer, which is
    how `Edit.statement` reads for dataset edits that carry no statement ('Where is X? Goa.')."""
    if rng.random() < 0.5:
        return relation["statement"].format(subject, target)
    return default_statement(rng.choice(forms).format(subject), target)


OTHER_SUBJECT, OTHER_RELATION = "other_subject", "other_relation"
# Knowledge-editing datasets name their same-subject probes like this (KnowEdit's locality).
SAME_SUBJECT_KINDS = {OTHER_RELATION, "Relation_Specificity"}


def similar_subject(subject: str, names: Sequence[str], rng: random.Random) -> str:
    """A name that looks like `subject` but is another entity: one word swapped for a word of another name, or a
    suffix added ('Lionel Messi' → 'Lionel Bolt', 'Toyota' → 'Toyota Holdings')."""
    words = subject.split()
    donors = [w for name in names for w in name.split() if w.lower() not in subject.lower() and w[:1].isupper()]
    if len(words) > 1 and donors and rng.random() < 0.7:
        position = rng.randrange(len(words))
        words[position] = rng.choice(donors)
        return " ".join(words)
    return f"{subject} {rng.choice(SUFFIXES)}"


SUFFIXES = ("Holdings", "Junior", "II", "Institute", "Foundation", "Group", "Tower", "Academy")
