"""Which stored edits reach CounterFact's neighbourhood prompts when many edits are stored, retrieval and the scope
decision only (no language model).

A neighbourhood prompt asks the edit's relation about another subject ("The twin city of Warsaw is" for an edit
about Dresden's twin city) and should receive no edit. With thousands of CounterFact edits stored, some of those
other subjects have an edit of their own in the store, often of the same relation ("The official language of
European Union is" is a neighbour prompt of one case and the edited prompt of another): then the edit that reaches
the prompt is the right one, and the unedited answer the locality facet expects is the wrong one. This benchmark
counts the edits that pass for the first `--probe` cases' neighbourhood prompts in three kinds:

- own: the case's own edit (what the locality facet is about);
- other, named: another case's edit whose subject the prompt names (whole words): an edit about the asked subject;
- other: another case's edit about another subject (a wrong pass, whatever the relation).

    python benchmarks/locality_leaks.py --deciders scope=ALIGNED/scope cf=results/gates/cf.json --stored 10000
"""

from __future__ import annotations

import argparse
import random
import uuid
from collections import Counter

from lte.core.catalog import dataset_path
from lte.core.datasets import load_cases
from lte.core.settings import Settings
from retrieval.embedder import Embedder
from retrieval.gate import subject_pattern
from retrieval.scope import ScopeModel, load_decider
from retrieval.store import EditStore, open_client

KINDS = ("own", "other, named", "other")


def leak_kind(hit_edit, case, prompt: str) -> str:
    if hit_edit.id in {e.id for e in case.edits}:
        return "own"
    return "other, named" if subject_pattern(hit_edit.subject).search(prompt) else "other"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--deciders", nargs="+", required=True, metavar="NAME=PATH",
                        help="scope model folders or gate JSON files, as benchmarks/gate.py takes them")
    parser.add_argument("--stored", type=int, nargs="+", default=[1000, 10000], help="CounterFact cases stored")
    parser.add_argument("--probe", type=int, default=30, help="cases whose neighbourhood prompts are asked")
    parser.add_argument("--k", type=int, default=3)
    parser.add_argument("--examples", type=int, default=0, help="print this many passes of each kind, seeded")
    args = parser.parse_args()
    _, path = dataset_path("counterfact", Settings.from_env())
    everything = load_cases(path)
    embedder = Embedder()
    deciders = {name: load_decider(path) for name, _, path in (spec.partition("=") for spec in args.deciders)}
    print(f"{'stored':>7} {'decider':<12}{'prompts':>8}{'clean':>8}" + "".join(f"{k:>14}" for k in KINDS)
          + "   (edits passed, by kind)")
    for n in args.stored:
        cases = everything[:n]
        store = EditStore(open_client(), f"leaks-{uuid.uuid4().hex[:8]}", embedder)
        store.add([e for c in cases for e in c.edits], progress=False)
        probes = [(p.prompt, c) for c in cases[: args.probe] for p in c.locality]
        for name, chosen in deciders.items():
            if isinstance(chosen, ScopeModel):
                store.scope = chosen
            else:
                store.scope, store.gate = None, chosen
            hits = store.search_many([q for q, _ in probes], args.k)
            kinds: Counter[str] = Counter()
            examples: dict[str, list[str]] = {k: [] for k in KINDS}
            for (prompt, case), found in zip(probes, hits):
                for hit in found:
                    kind = leak_kind(hit.edit, case, prompt)
                    kinds[kind] += 1
                    examples[kind].append(f"{hit.score:.3f} | {prompt!r} <- {hit.edit.prompt!r}")
            clean = sum(not found for found in hits)
            print(f"{n:>7} {name:<12}{len(probes):>8}{clean / len(probes):>8.3f}"
                  + "".join(f"{kinds[k]:>14}" for k in KINDS), flush=True)
            rng = random.Random(0)
            for kind in KINDS:
                for line in rng.sample(examples[kind], min(args.examples, len(examples[kind]))):
                    print(f"        {kind:<13} {line}")


if __name__ == "__main__":
    main()
