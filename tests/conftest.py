"""Shared fixtures: the tiny random model (no download), the real embedder, paths to the shared datasets."""

from __future__ import annotations

from pathlib import Path

import pytest

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "datasets"


def shared_file(relative: str) -> Path:
    path = SHARED / relative
    if not path.is_file():
        pytest.skip(f"shared dataset {relative} is not present")
    return path


@pytest.fixture(autouse=True)
def isolated_home(tmp_path, monkeypatch):
    """Every test gets its own LTE_HOME and store, so nothing touches the user's cache."""
    monkeypatch.setenv("LTE_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("LTE_STORE", raising=False)
    monkeypatch.delenv("LTE_MODEL", raising=False)
    return tmp_path / "home"


@pytest.fixture(scope="session")
def tiny():
    from lte.models import load_model

    return load_model("tiny-random")


@pytest.fixture(scope="session")
def embedder():
    from retrieval.embedder import Embedder

    return Embedder()


@pytest.fixture
def store(embedder):
    import uuid

    from retrieval.store import EditStore, open_client

    return EditStore(open_client(), f"test-{uuid.uuid4().hex[:8]}", embedder)
