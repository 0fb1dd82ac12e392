"""Data lte ships itself: entity tables, relation templates and general instructions for alignment."""

from importlib.resources import files


def data_path(name: str):
    """Path-like handle to a shipped data file."""
    return files(__name__).joinpath(name)
