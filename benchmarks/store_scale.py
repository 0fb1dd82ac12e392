"""The edit store's own cost at scale (default 1,000,000 edits), measured in one run on this machine.

Keys are not embedded by the real embedder here (1,000,000 edits have 2,000,000 keys: about three hours of MiniLM
on two cores); a deterministic vector per text (seeded by its hash, unit length, 384 dimensions like MiniLM's)
stands in, so the figures are the store's: records database, Chroma key index, the sync between them. The real
embedder's own rate is measured on 2,000 of the same key texts, and the insertion rate the user would see is
bounded from both: serial if embedding and the store's writes took turns (an embedder in the writer's process,
which Chroma's writes stall), overlapped if they run side by side (a long add embeds in a child process), where
the slower of the two sets the rate.

    python benchmarks/store_scale.py --edits 1000000 [--batch 4096] [--queries 200]

Prints: insertion rate (edits/s, keys/s) and its bounds over the embedder's own rate (`with_embedder_over_embedder`
serial, `overlapped_over_embedder`); query p50/p99 of `candidates` (nearest keys and the records' current check, no
scope decision); the last page of `list` by offset and after a seq, and `count`; open time of the store in a fresh
process; rebuild of the key index from the records; peak memory; disk.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from lte.core.schema import Edit
from retrieval.embedder import Embedder
from retrieval.keyindex import key_texts
from retrieval.store import EditStore

DIM = 384


class HashVectors:
    """A unit vector per text, the same every time: the normalised sum of two rows of a fixed random table picked by
    the text's hash (65,536² combinations; one table lookup per text, so the store's cost is what is measured)."""

    name = "hash-vectors"
    dim = DIM
    table = np.random.default_rng(0).standard_normal((65_536, DIM)).astype(np.float32)

    def encode(self, texts):
        codes = np.array([int.from_bytes(hashlib.blake2b(t.encode(), digest_size=4).digest(), "little")
                          for t in texts], dtype=np.int64).reshape(len(texts))
        vectors = self.table[codes & 0xFFFF] + self.table[codes >> 16]
        return vectors / np.linalg.norm(vectors, axis=1, keepdims=True).clip(1e-9)


def synthetic_edits(n: int) -> list[Edit]:
    return [Edit(subject=f"Landmark {i}", prompt=f"Landmark {i} is located in", target_new=f"City {i % 9973}")
            for i in range(n)]


def percentiles(values: list[float]) -> tuple[float, float]:
    cuts = statistics.quantiles(values, n=100)
    return cuts[49] * 1000, cuts[98] * 1000


def embedder_rate(edits: list[Edit]) -> float:
    texts = [text for edit in edits[:1000] for _, text in key_texts(edit)]
    embedder = Embedder()
    embedder.encode(texts[:64])
    start = time.perf_counter()
    embedder.encode(texts)
    return len(texts) / (time.perf_counter() - start)


def open_time(folder: Path) -> float:
    """Seconds to open the store and answer one search, in a fresh process."""
    code = ("import time, sys; t = time.perf_counter(); from retrieval.store import EditStore; "
            "from benchmarks.store_scale import HashVectors; "
            f"s = EditStore.open({str(folder)!r}, embedder=HashVectors()); s.candidates(['Landmark 5 is in']); "
            "print(time.perf_counter() - t)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return float(done.stdout.strip().splitlines()[-1])


def disk_mb(folder: Path) -> float:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()) / 2**20


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--edits", type=int, default=1_000_000)
    parser.add_argument("--batch", type=int, default=4096)
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--no-rebuild", action="store_true", help="skip rebuilding the key index")
    args = parser.parse_args()
    edits = synthetic_edits(args.edits)
    embed_rate = embedder_rate(edits)
    folder = Path(tempfile.mkdtemp(prefix="lte-scale-")) / "store"
    store = EditStore.open(folder, embedder=HashVectors())
    keys = sum(len(key_texts(e)) for e in edits[:1000]) * args.edits // 1000
    start = time.perf_counter()
    with tqdm(total=args.edits, desc="inserting", unit="edit") as bar:
        for i in range(0, args.edits, 100_000):
            store.add(edits[i:i + 100_000], batch_size=args.batch, progress=False)
            bar.update(len(edits[i:i + 100_000]))
    insert_s = time.perf_counter() - start
    vectors_s = embed_cost(edits[:2000]) * args.edits / 2000  # the stand-in vectors' own share of insert_s
    store_s = max(insert_s - vectors_s, 1e-9)
    with_embedder = keys / (keys / embed_rate + store_s)
    overlapped = keys / max(keys / embed_rate, store_s)
    queries = [f"Where is Landmark {i * 7919 % args.edits}?" for i in range(args.queries)]
    for q in queries[:20]:
        store.candidates([q])
    timings = []
    for q in queries:
        t = time.perf_counter()
        store.candidates([q])
        timings.append(time.perf_counter() - t)
    p50, p99 = percentiles(timings)
    t = time.perf_counter()
    page = store.list(offset=args.edits - 50, limit=50)
    page_ms = (time.perf_counter() - t) * 1000
    before_last = page[0].seq - 1  # what a client walking by seq holds from the page before
    t = time.perf_counter()
    seek_page = store.list(after=before_last, limit=50)
    seek_ms = (time.perf_counter() - t) * 1000
    assert [e.seq for e in seek_page] == [e.seq for e in page]
    t = time.perf_counter()
    count = store.count()
    count_ms = (time.perf_counter() - t) * 1000
    store.close()
    opened = open_time(folder)
    rebuild_s = None
    if not args.no_rebuild:
        store = EditStore.open(folder, embedder=HashVectors())
        t = time.perf_counter()
        store.rebuild_index(batch_size=args.batch, progress=True)
        rebuild_s = time.perf_counter() - t
    figures = {
        "edits": args.edits, "keys": keys,
        "insert_s": round(insert_s, 1), "insert_edits_per_s": round(args.edits / insert_s),
        "store_keys_per_s": round(keys / store_s), "embedder_keys_per_s": round(embed_rate),
        "with_embedder_over_embedder": round(with_embedder / embed_rate, 3),
        "overlapped_over_embedder": round(overlapped / embed_rate, 3),
        "query_p50_ms": round(p50, 1), "query_p99_ms": round(p99, 1),
        "last_page_of_50_ms": round(page_ms, 1), "last_page_after_seq_ms": round(seek_ms, 1),
        "page_rows": len(page), "count_ms": round(count_ms, 1),
        "count": count, "open_and_first_search_s": round(opened, 2),
        "rebuild_index_s": None if rebuild_s is None else round(rebuild_s, 1),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
        "disk_mb": round(disk_mb(folder)),
    }
    print(json.dumps(figures))


def embed_cost(edits: list[Edit]) -> float:
    """Seconds the stand-in vectors take for these edits' keys (taken out of the store's share)."""
    texts = [text for edit in edits for _, text in key_texts(edit)]
    start = time.perf_counter()
    HashVectors().encode(texts)
    return time.perf_counter() - start


if __name__ == "__main__":
    main()
