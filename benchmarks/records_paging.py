"""The records database's listing at scale: a page by offset against a page after a seq, at the start and at the
far end of a store of N edit records (default 1,000,000), and `count`. Records only: no key index, no embedder
(`benchmarks/store_scale.py` measures the whole store).

    python benchmarks/records_paging.py --edits 1000000 [--url sqlite:///PATH | postgresql://...]

Prints one JSON line: insert seconds, then milliseconds (median of --repeats) for each read.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

from tqdm.auto import tqdm

from lte.core.schema import Edit
from retrieval.records import CURRENT, RecordDB, sqlite_url

COLLECTION = "edits"


def fill(db: RecordDB, edits: int, batch: int) -> float:
    started = time.perf_counter()
    for start in tqdm(range(0, edits, batch), desc="records", unit_scale=batch):
        rows = [(Edit(subject=f"Subject {i}", prompt=f"Subject {i} is located in", target_new=f"City {i % 997}"),
                 CURRENT, "") for i in range(start, min(start + batch, edits))]
        with db.transaction() as connection:
            db.insert(connection, COLLECTION, rows)
    return time.perf_counter() - started


def median_ms(read, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        read()
        times.append((time.perf_counter() - started) * 1000)
    return round(statistics.median(times), 2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--edits", type=int, default=1_000_000)
    parser.add_argument("--batch", type=int, default=10_000)
    parser.add_argument("--page", type=int, default=50)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--url", help="records database (default: a new SQLite file in a temporary folder)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="lte-paging-") as folder:
        db = RecordDB(args.url or sqlite_url(Path(folder) / "records.sqlite3"))
        insert_s = fill(db, args.edits, args.batch)
        last = db.page(COLLECTION, offset=args.edits - 1, limit=1)[0].seq
        far_after = db.page(COLLECTION, offset=args.edits - args.page - 1, limit=1)[0].seq
        reads = {
            "first_page_ms": lambda: db.page(COLLECTION, limit=args.page),
            "last_page_by_offset_ms": lambda: db.page(COLLECTION, offset=args.edits - args.page, limit=args.page),
            "last_page_after_seq_ms": lambda: db.page(COLLECTION, limit=args.page, after=far_after),
            "count_ms": lambda: db.count(COLLECTION),
        }
        figures = {name: median_ms(read, args.repeats) for name, read in reads.items()}
        assert [r.seq for r in db.page(COLLECTION, limit=args.page, after=far_after)][-1] == last
        disk_mb = round(sum(p.stat().st_size for p in Path(folder).iterdir()) / 2**20) if not args.url else None
        print(json.dumps({"edits": args.edits, "page_rows": args.page, "database": db.engine.dialect.name,
                          "insert_s": round(insert_s, 1), **figures, "disk_mb": disk_mb}))


if __name__ == "__main__":
    main()
