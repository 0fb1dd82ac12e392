"""Shared fixtures: the tiny random model (no download), the real embedder, paths to the shared datasets."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
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


@contextlib.contextmanager
def running_server(editor, **config):
    """`lte serve`'s app on a free loopback port in a background thread; yields its base URL."""
    import httpx
    import uvicorn

    from lte.server import ServerConfig, Service, create_app

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    cfg = ServerConfig(port=port, default_tokens=8, **config)
    server = uvicorn.Server(uvicorn.Config(create_app(Service(editor, cfg)), host="127.0.0.1", port=port,
                                           log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{port}"
    for _ in range(200):
        try:
            httpx.get(base + "/health")
            break
        except httpx.HTTPError:
            time.sleep(0.05)
    try:
        yield base
    finally:
        server.should_exit = True
        thread.join(timeout=10)
