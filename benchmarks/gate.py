"""How well relevance gates route prompts, retrieval alone (no language model): for each dataset, store the edits of
N cases and ask every probe; in-scope probes (the edit's prompt, its paraphrases) should receive their edit,
locality probes (other subjects; other relations of the same subject on KnowEdit) should receive none.

    python benchmarks/gate.py --gates unfitted tables=GATE.json --datasets counterfact zsre --n 1000

Gates are JSON files written by `lte edit calibrate --save-to` or `lte align` (gate.json next to the model);
`unfitted` is the built-in default. Fit gates on training splits only, never on the sets measured here.
"""

from __future__ import annotations

import argparse
import uuid

from lte.catalog import dataset_path
from lte.datasets import load_cases
from lte.settings import Settings
from retrieval.embedder import Embedder
from retrieval.gate import UNFITTED, Gate
from retrieval.store import EditStore, open_client


def route(store: EditStore, cases, k: int = 3) -> dict[str, float]:
    """Share of in-scope probes given their edit, of paraphrases alone, and of locality probes given nothing."""
    probes = [(p.prompt, case.edit.id, facet) for case in cases
              for facet, group in (("rewrite", case.rewrite), ("paraphrase", case.paraphrases),
                                   ("locality", case.locality)) for p in group]
    hits = store.search_many([prompt for prompt, _, _ in probes], k)
    right: dict[str, list[bool]] = {}
    for (_, edit_id, facet), found in zip(probes, hits):
        ids = [h.edit.id for h in found]
        right.setdefault(facet, []).append(not ids if facet == "locality" else edit_id in ids)
    return {facet: sum(oks) / len(oks) for facet, oks in right.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--gates", nargs="+", default=["unfitted"], metavar="NAME=FILE|unfitted")
    parser.add_argument("--datasets", nargs="+", default=["counterfact", "zsre"], metavar="NAME|LABEL=PATH")
    parser.add_argument("--n", type=int, default=1000, help="cases stored (and probed) per dataset")
    parser.add_argument("--k", type=int, default=3)
    args = parser.parse_args()
    embedder = Embedder()
    gates = {}
    for spec in args.gates:
        name, _, path = spec.partition("=")
        gates[name] = UNFITTED if spec == "unfitted" else Gate.load(path)
    print(f"{'dataset':<18}{'gate':<16}{'n':>6}{'rewrite':>9}{'paraphrase':>12}{'locality':>10}  (share routed right)")
    for label, path in (dataset_path(name, Settings.from_env()) for name in args.datasets):
        cases = load_cases(path)[: args.n]
        store = EditStore(open_client(), f"gate-{uuid.uuid4().hex[:8]}", embedder)
        store.add([c.edit for c in cases], progress=False)
        for name, gate in gates.items():
            store.gate = gate
            shares = route(store, cases, args.k)
            print(f"{label:<18}{name:<16}{len(cases):>6}" + "".join(
                f"{shares.get(f, float('nan')):>{w}.3f}" for f, w in (("rewrite", 9), ("paraphrase", 12),
                                                                      ("locality", 10))))


if __name__ == "__main__":
    main()
