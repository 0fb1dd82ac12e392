"""Edit-store figures, all measured in one run on this machine:

- insertion rate of N CounterFact edits through `EditStore.add`, against the embedder's own rate on the same key
  texts (the ratio is what matters: the machine is noisy);
- query latency p50/p99 of `EditStore.search` (search and the decision on its candidates: the scope model with
  `--scope DIR`, else the store's gate) at 1k, 10k and 100k stored edits. Past the 21,919 real CounterFact
  edits, the store is filled with copies of real edits whose key vectors are perturbed with small noise (so the
  index holds 100k distinct, realistically distributed vectors without embedding 200k texts);
- hit@1 on paraphrase prompts with 1k edits stored, and how often the relevance gate passes nothing for neighbour
  prompts (same relation, other subject), plus the calibrated threshold on a separate slice.

    python benchmarks/edit_store.py [--insert 10000] [--sizes 1000 10000 100000] [--parts quality insert latency]
        [--scope ALIGNED/scope [--scope-backend onnx torch]]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
import uuid
from pathlib import Path

import numpy as np

from lte.core.catalog import shared_file
from lte.core.datasets import load_cases
from lte.core.schema import Edit
from lte.core.settings import Settings
from retrieval.embedder import Embedder
from retrieval.scope import BACKENDS, ScopeModel
from retrieval.store import EditStore, key_texts, open_client


def counterfact(split: str) -> Path:
    return shared_file(f"counterfact_easyedit/counterfact-{split}.json", Settings.from_env())


class NoisyCopies:
    """An embedder for synthetic edits: the vector of the real edit they copy, plus small Gaussian noise."""

    def __init__(self, real: Embedder, scale: float = 0.05, seed: int = 0):
        self.real, self.scale, self.rng = real, scale, np.random.default_rng(seed)
        self.cache: dict[str, np.ndarray] = {}

    def encode(self, texts):
        originals = [text.split(" ~", 1)[0] for text in texts]
        missing = [t for t in dict.fromkeys(originals) if t not in self.cache]
        for text, vector in zip(missing, self.real.encode(missing) if missing else []):
            self.cache[text] = vector
        vectors = np.stack([self.cache[t] for t in originals])
        vectors = vectors + self.rng.normal(0, self.scale / np.sqrt(vectors.shape[1]), vectors.shape)
        return (vectors / np.linalg.norm(vectors, axis=1, keepdims=True)).astype(np.float32)


def percentiles(values: list[float]) -> tuple[float, float]:
    cuts = statistics.quantiles(values, n=100)
    return cuts[49] * 1000, cuts[98] * 1000


def insertion(embedder: Embedder, edits: list[Edit]) -> None:
    texts = [text for edit in edits for _, text in key_texts(edit)]
    start = time.perf_counter()
    embedder.encode(texts)
    embed_rate = len(texts) / (time.perf_counter() - start)
    store = EditStore.open(Path(tempfile.mkdtemp()) / "store", embedder=embedder)
    start = time.perf_counter()
    store.add(edits, progress=False)
    seconds = time.perf_counter() - start
    insert_rate = len(texts) / seconds
    print(f"insert {len(edits)} edits ({len(texts)} keys): {len(edits) / seconds:.0f} edits/s, "
          f"{insert_rate:.0f} keys/s; embedder alone {embed_rate:.0f} texts/s; "
          f"insert/embedder = {insert_rate / embed_rate:.2f}")


def latency(embedder: Embedder, edits: list[Edit], sizes: list[int], queries: list[str],
            scopes: list[ScopeModel | None]) -> None:
    """p50/p99 of one search at each size, for each decider (the scope model on each backend asked, else the
    gate), timed in turn over the same store."""
    noisy = NoisyCopies(embedder)
    store = EditStore(open_client(), f"lat-{uuid.uuid4().hex[:8]}", noisy)
    searchers = [EditStore(store.client, store.name, embedder, scope=scope, records=store.records) for scope in scopes]
    for searcher in searchers:
        print(f"deciding: {searcher.decider()}")
    stored = 0
    for size in sizes:
        batch = []
        while stored + len(batch) < size:
            i = stored + len(batch)
            base = edits[i % len(edits)]
            batch.append(base if i < len(edits) else Edit(
                subject=f"{base.subject} ~{i}", prompt=f"{base.prompt} ~{i}", target_new=base.target_new,
                statement=f"{base.statement} ~{i}"))
        store.add(batch, batch_size=2048, progress=False)
        stored += len(batch)
        for searcher, scope in zip(searchers, scopes):
            p50, p99 = time_searches(searcher, queries)
            label = f"scope on {scope.backend}" if scope is not None else "gate"
            shown = np.mean([len(c) for c in searcher.candidates(queries)])  # what was decided on, per query
            print(f"query latency at {stored:>6} edits, {label:<14}: p50 {p50:6.1f} ms, p99 {p99:6.1f} ms "
                  f"({len(queries)} queries, {shown:.1f} candidates each)")


def time_searches(store: EditStore, queries: list[str]) -> tuple[float, float]:
    for query in queries[:20]:  # warm-up
        store.search(query)
    timings = []
    for query in queries:
        start = time.perf_counter()
        store.search(query)
        timings.append(time.perf_counter() - start)
    return percentiles(timings)


def quality(embedder: Embedder, cases) -> None:
    store = EditStore(open_client(), f"q-{uuid.uuid4().hex[:8]}", embedder)
    store.add([c.edit for c in cases[:1000]], progress=False)
    related = [(c.paraphrases[0].prompt, c.edit.id) for c in cases[:1000]]
    top = store.search_many([q for q, _ in related], k=1, gated=False)
    hit1 = sum(1 for hits, (_, want) in zip(top, related) if hits and hits[0].edit.id == want) / len(related)
    gated = store.search_many([q for q, _ in related], k=1)
    recall = sum(1 for hits, (_, want) in zip(gated, related) if hits and hits[0].edit.id == want) / len(related)
    neighbours = store.search_many([c.locality[0].prompt for c in cases[:1000]], k=1)
    clean = sum(1 for hits in neighbours if not hits) / len(neighbours)
    print(f"1000 edits stored, gate threshold {store.threshold}: paraphrase hit@1 {hit1:.3f} (ungated), "
          f"{recall:.3f} through the gate; neighbour prompts given no edit {clean:.3f}")
    gate = store.calibrate(cases[1000:1500], save=False)
    print(f"gate fitted on another 500 cases: threshold {gate.threshold:.3f}, precision {gate.fit_precision:.3f}, "
          f"recall {gate.fit_recall:.3f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--insert", type=int, default=10000)
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 10000, 100000])
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--parts", nargs="+", choices=["quality", "insert", "latency"],
                        default=["quality", "insert", "latency"])
    parser.add_argument("--scope", metavar="DIR", help="a scope model folder: latency includes its decision")
    parser.add_argument("--scope-backend", nargs="+", choices=BACKENDS, help="score the scope model with these "
                        "backends, each timed on the same store (default: the one its scope.json records)")
    args = parser.parse_args()
    embedder = Embedder()
    cases = load_cases(counterfact("edit")) + load_cases(counterfact("train"))
    edits = [c.edit for c in cases]
    if "quality" in args.parts:
        quality(embedder, cases)
    if "insert" in args.parts:
        insertion(embedder, edits[: args.insert])
    if "latency" in args.parts:
        # with a scope model, the gate is timed too: search alone plus a decision that costs next to nothing
        scopes = [*(ScopeModel(args.scope, backend=b) for b in args.scope_backend or [None]), None] if args.scope \
            else [None]
        latency(embedder, edits, args.sizes, [c.paraphrases[0].prompt for c in cases[: args.queries]], scopes)


if __name__ == "__main__":
    main()
