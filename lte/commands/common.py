"""Helpers the subcommands share (kept here so no command imports `lte.cli`, which imports them all)."""

from __future__ import annotations

import json
from pathlib import Path

from lte.errors import InputFileError


def print_json(value) -> None:
    print(json.dumps(value, indent=2, ensure_ascii=False))


def existing_files(paths: list[str], flag: str) -> list[str]:
    """The paths, after checking each is a file (the error names the flag and the path)."""
    for path in paths:
        if not Path(path).is_file():
            raise InputFileError(f"{flag} {path}: no such file")
    return paths
