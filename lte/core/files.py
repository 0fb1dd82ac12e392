"""The one way lte writes a cache, resume or results file: into a temporary file beside it, then renamed over it,
so a crash or a full disk never leaves half a file where a later run would read it. Folders (a model, a scope
model) are built the same way: in a sibling temporary folder, then moved into place."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any


@contextmanager
def atomic_path(path: Path | str, directory: bool = False) -> Iterator[Path]:
    """A temporary path beside `path` to write to (a file, or a folder with `directory=True`); on success it
    replaces `path` (an older folder there is moved aside first, then removed); on failure it is removed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if directory:
        tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}-"))
    else:
        handle, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}-", suffix=".tmp")
        os.close(handle)
        tmp = Path(name)
    try:
        yield tmp
        _replace(tmp, path, directory)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True) if tmp.is_dir() else tmp.unlink()


def _replace(tmp: Path, path: Path, directory: bool) -> None:
    if not directory:
        os.replace(tmp, path)
        return
    old = None
    if path.exists():
        old = path.with_name(f".{path.name}-old-{os.getpid()}")
        os.replace(path, old)
    os.replace(tmp, path)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def write_text(path: Path | str, text: str) -> None:
    """Write `text` (UTF-8) atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json(path: Path | str, value: Any, indent: int | None = 1) -> None:
    """Write `value` as JSON atomically."""
    write_text(path, json.dumps(value, indent=indent, ensure_ascii=False) + "\n")
