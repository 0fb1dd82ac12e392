"""The project speaks of itself: no process words (session or issue numbers) and no machine paths in what it ships
or publishes. History lives in git and CHANGELOG.md; results files write locations as $LTE_HOME, ~ and the like."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PLACES = ["README.md", "RESULTS.md", "docs", "lte", "retrieval", "baselines", "benchmarks", "results", "data",
          "tests"]
PROCESS = re.compile(r"session [0-9]|issue #?[0-9]", re.IGNORECASE)
MACHINE = re.compile(r"(?<![\w{}])/(tmp|root|home|work)/")
SUFFIXES = {".py", ".md", ".txt", ".json", ".jsonl", ".toml", ".sh", ".html", ".js", ".csv", ".jinja"}


def shipped_files() -> list[Path]:
    found = []
    for place in PLACES:
        path = ROOT / place
        found += [path] if path.is_file() else [p for p in path.rglob("*") if p.suffix in SUFFIXES and p.is_file()]
    return [p for p in found if p != Path(__file__).resolve()]


def test_no_process_words_or_machine_paths():
    bad = []
    for path in shipped_files():
        for number, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
            if PROCESS.search(line) or MACHINE.search(line):
                bad.append(f"{path.relative_to(ROOT)}:{number}: {line.strip()[:120]}")
    assert not bad, "process words or machine paths:\n" + "\n".join(bad[:30])
