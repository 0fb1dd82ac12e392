"""Every figure the prose states (README, RESULTS.md, docs/) is one a committed cell or results file holds: a
decimal number in the reading must equal, at the precision written, a value in results/ (a cell's JSON value, or
a number in a results text file). A figure no file holds fails, naming the file and line."""

import json
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PROSE = [ROOT / "README.md", ROOT / "RESULTS.md", *sorted((ROOT / "docs").glob("*.md"))]
DECIMAL = re.compile(r"(?<![\w.])(\d+\.\d+)(?![\w.]*\d)")
NOT_FIGURES = {  # numbers in the prose that are settings or versions, not measurements
    "0.5": "the scope model's and the gate's decision threshold",
    "0.3": "the unfitted gate's weight on the missing subject share",
    "3.11": "the Python version",
    "0.1": "Chroma's and transformers' version spellings, EMMET's ridge",
    "2.0": "the Apache licence version",
    "4.56": "transformers' minimum version",
}


def source_values() -> set[str]:
    """Every number in results/, written at each precision from 1 to 4 decimals."""
    values: set[float] = set()
    for path in (ROOT / "results").rglob("*"):
        if path.suffix == ".json":
            values.update(_json_numbers(json.loads(path.read_text())))
        elif path.suffix in (".txt", ".md") and path.name != "reading.md":
            values.update(float(x.replace(",", "")) for x in re.findall(r"\d[\d,]*\.\d+", path.read_text()))
    return {text for v in values for k in range(1, 5) for text in _written(v, k)}


def _written(value: float, decimals: int) -> set[str]:
    """The ways `value` is written at `decimals`: as Python formats it, and rounded half up from its shortest repr
    (0.8055 is 0.806 to a reader, 0.805 to `format`)."""
    from decimal import ROUND_HALF_UP, Decimal

    half_up = Decimal(repr(value)).quantize(Decimal(1).scaleb(-decimals), rounding=ROUND_HALF_UP)
    return {f"{value:.{decimals}f}", str(half_up)}


def _json_numbers(value) -> list[float]:
    if isinstance(value, bool):
        return []
    if isinstance(value, int | float):
        return [float(value)]
    if isinstance(value, dict):
        return [x for v in value.values() for x in _json_numbers(v)]
    if isinstance(value, list):
        return [x for v in value for x in _json_numbers(v)]
    return []


def prose_figures(path: Path):
    """(line number, figure) for each decimal in the file's prose, code blocks and the generated tables left out
    (the tables are written from the cells by `lte bench --report-only`)."""
    text = path.read_text()
    if path.name == "RESULTS.md":  # the reading: after the generated headline, before the generated cells
        text = text.split("## Every cell", 1)[0]
    in_code = False
    for number, line in enumerate(text.splitlines(), 1):
        if line.startswith("```"):
            in_code = not in_code
        if in_code or line.startswith("    "):
            continue
        for figure in DECIMAL.findall(line.replace(",", "")):
            yield number, figure


def test_every_prose_figure_is_in_a_committed_cell_or_results_file():
    known = source_values()
    missing = [f"{path.relative_to(ROOT)}:{line}: {figure}" for path in PROSE for line, figure in prose_figures(path)
               if figure not in known and figure not in NOT_FIGURES]
    assert missing == [], "figures no cell or results file holds:\n" + "\n".join(missing)


def test_a_figure_no_file_holds_is_caught(tmp_path):
    fake = tmp_path / "README.md"
    fake.write_text("LTE reaches a reliability of 0.98765 on every dataset.\n")
    assert [figure for _, figure in prose_figures(fake) if figure not in source_values()] == ["0.98765"]
