"""Data lte ships itself: entity tables, relation templates and general instructions for alignment."""

from importlib.resources import files


def data_path(name: str):
    """Path-like handle to a shipped data file."""
    return files(__name__).joinpath(name)


def data_lines(name: str) -> list[str]:
    """The non-empty lines of a shipped text file, stripped."""
    return [line.strip() for line in data_path(name).read_text().splitlines() if line.strip()]
