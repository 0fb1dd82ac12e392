"""How well scope models and relevance gates route prompts, retrieval alone (no language model): for each dataset,
store the edits of N cases and ask every probe. In-scope probes (the edit's prompt, its paraphrases) and portability
probes (multi-hop and alias questions whose answer depends on the edit) should receive their edit; locality probes
(other subjects; other relations of the same subject on KnowEdit) should receive none.

    python benchmarks/gate.py --deciders scope=ALIGNED/scope tables=GATE.json unfitted \\
        --datasets counterfact zsre wiki_counterfact wiki_recent --n 300

A decider is a scope model folder (`lte scope train`, or scope/ next to an aligned model), a gate JSON (`lte edit
calibrate --gate --save-to`, or gate.json next to an aligned model), or `unfitted`, the built-in gate; a scope model
is scored by the backend its scope.json records, or by the one a suffix names (`torch=DIR@torch`). `recall` is
the share of in-scope and portability probes whose edit is among the candidates the decider is shown (search's
2k nearest edits), so it bounds what any decider can pass. Train deciders on training splits only.
"""

from __future__ import annotations

import argparse
import uuid

from lte.core.catalog import dataset_path
from lte.core.datasets import load_cases
from lte.core.settings import Settings
from retrieval.embedder import Embedder
from retrieval.gate import UNFITTED
from retrieval.scope import ScopeModel, load_decider
from retrieval.store import EditStore, open_client

FACETS = ("rewrite", "paraphrase", "locality", "portability")


def probes_of(cases) -> list[tuple[str, set[str], str]]:
    """(prompt, the ids of the case's edits, facet) for every probe."""
    return [(p.prompt, {e.id for e in case.edits}, facet) for case in cases
            for facet, group in zip(FACETS, (case.rewrite, case.paraphrases, case.locality, case.portability))
            for p in group]


def route(store: EditStore, cases, k: int = 3) -> dict[str, float]:
    """Share of probes routed right per facet, and the candidates' recall of in-scope and portability edits."""
    probes = probes_of(cases)
    prompts = [prompt for prompt, _, _ in probes]
    hits = store.search_many(prompts, k)
    candidates = store.candidates(prompts, k)
    right: dict[str, list[bool]] = {}
    for (_, edit_ids, facet), found, shown in zip(probes, hits, candidates):
        ids = {h.edit.id for h in found}
        right.setdefault(facet, []).append(not ids if facet == "locality" else bool(edit_ids & ids))
        if facet != "locality":
            right.setdefault("recall", []).append(bool(edit_ids & {edit.id for edit, _, _ in shown}))
    return {facet: sum(oks) / len(oks) for facet, oks in right.items()}


def decider(spec: str):
    """(name, Gate or ScopeModel) from NAME=PATH, NAME=PATH@BACKEND or `unfitted`."""
    if spec == "unfitted":
        return "unfitted", UNFITTED
    name, _, path = spec.partition("=")
    path, _, backend = path.partition("@")
    return name, load_decider(path, backend or None)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--deciders", nargs="+", default=["unfitted"], metavar="NAME=PATH|unfitted")
    parser.add_argument("--datasets", nargs="+", default=["counterfact", "zsre"], metavar="NAME|LABEL=PATH")
    parser.add_argument("--n", type=int, default=1000, help="cases stored (and probed) per dataset")
    parser.add_argument("--k", type=int, default=3)
    args = parser.parse_args()
    embedder = Embedder()
    deciders = dict(decider(spec) for spec in args.deciders)
    columns = (*FACETS, "recall")
    print(f"{'dataset':<18}{'decider':<14}{'n':>6}" + "".join(f"{c:>12}" for c in columns)
          + "  (share routed right)")
    for label, path in (dataset_path(name, Settings.from_env()) for name in args.datasets):
        cases = load_cases(path)[: args.n]
        store = EditStore(open_client(), f"gate-{uuid.uuid4().hex[:8]}", embedder)
        store.add([e for c in cases for e in c.edits], progress=False)
        for name, chosen in deciders.items():
            if isinstance(chosen, ScopeModel):
                store.scope = chosen
            else:
                store.scope, store.gate = None, chosen
            shares = route(store, cases, args.k)
            print(f"{label:<18}{name:<14}{len(cases):>6}"
                  + "".join(f"{shares.get(c, float('nan')):>12.3f}" for c in columns), flush=True)


if __name__ == "__main__":
    main()
