"""Compare two `lte bench` outputs cell by cell: gen_acc per facet and fluency, side by side, with the differences.

    python benchmarks/compare_cells.py OLD_OUT NEW_OUT [--n 10]

Used to check that a re-run of `lte bench --quick` reproduces an earlier one within noise (at n=10 one case moves a
facet by 0.1). Cells present in only one output are listed, not compared.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from lte.core.schema import FACETS


def load(out: Path, n: int | None) -> dict[str, dict]:
    cells = {p.stem: json.loads(p.read_text()) for p in sorted((out / "cells").glob("*.json"))}
    return {k: c for k, c in cells.items() if "metrics" in c and (n is None or c["n_cases"] == n)}


def figures(cell: dict) -> dict[str, float]:
    metrics = cell["metrics"]
    values = {f: metrics[f]["gen_acc"] for f in FACETS if f in metrics}
    if "fluency" in metrics:
        values["fluency"] = metrics["fluency"]["ngram_entropy"]
    return values


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("old", type=Path)
    parser.add_argument("new", type=Path)
    parser.add_argument("--n", type=int, help="only cells of this size")
    args = parser.parse_args()
    old, new = load(args.old, args.n), load(args.new, args.n)
    for label, cells in (("old", old), ("new", new)):  # locality changed meaning in harness version 2
        versions = sorted({c.get("harness_version", 1) for c in cells.values()})
        print(f"{label}: {args.old if label == 'old' else args.new}, {len(cells)} cells, harness version {versions}")
    worst: dict[str, float] = {}
    print(f"{'cell (old→new)':<40}" + "".join(f"{f[:12]:>14}" for f in FACETS + ("fluency",)))
    for key in sorted(set(old) & set(new)):
        a, b = figures(old[key]), figures(new[key])
        row = f"{key:<40}"
        for facet in FACETS + ("fluency",):
            if facet in a and facet in b:
                row += f"{a[facet]:.2f}→{b[facet]:.2f}".rjust(14)
                worst[facet] = max(worst.get(facet, 0.0), abs(b[facet] - a[facet]))
            else:
                row += "–".rjust(14)
        print(row)
    print("largest |difference|: " + ", ".join(f"{f} {d:.2f}" for f, d in worst.items()))
    for key in sorted(set(old) ^ set(new)):
        print(f"only in {'old' if key in old else 'new'}: {key}")


if __name__ == "__main__":
    main()
