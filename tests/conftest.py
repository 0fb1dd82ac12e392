"""Shared fixtures: the tiny random model (no download), the real embedder, paths to the shared datasets."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from pathlib import Path

import pytest

from lte.core.settings import Settings

# The public datasets, where `lte` itself looks for them (LTE_DATASETS, else shared/datasets beside the checkout).
SHARED = Settings.from_env().datasets_dir


def shared_file(relative: str) -> Path:
    path = SHARED / relative if SHARED else None
    if path is None or not path.is_file():
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
    from lte.core.models import load_model

    return load_model("tiny-random")


@pytest.fixture(scope="session")
def ke_trained(tiny, tmp_path_factory):
    """A KnowledgeEditor hypernetwork trained briefly on the tiny model, and its 10 held-out cases (shared by the
    KE tests and the editor contract test)."""
    import random

    from baselines.knowledge_editor import KE, KEConfig
    from baselines.training import TrainConfig, train_learned
    from lte.core.tables import table_cases

    cases = table_cases(120, random.Random(1))
    path = tmp_path_factory.mktemp("ke") / "ke.pt"
    train_learned(KE, tiny, cases[10:], cases[:10], path, KEConfig(hidden=32),
                  TrainConfig(steps=40, eval_every=20, save_every=20, dev_cases=10), progress=False)
    return path, cases[:10]


@pytest.fixture(scope="session")
def mend_trained(tiny, tmp_path_factory):
    """A MEND network trained from scratch on the tiny model, and its 10 held-out cases (shared by the MEND tests
    and the editor contract test). lr_init 0.1: the tiny model's weights are ~0.02 wide and its factors few."""
    import random

    from baselines.mend import MEND, MENDConfig
    from baselines.training import TrainConfig, train_learned
    from lte.core.tables import table_cases

    cases = table_cases(120, random.Random(2))
    path = tmp_path_factory.mktemp("mend") / "mend.pt"
    train_learned(MEND, tiny, cases[10:], cases[:10], path, MENDConfig(layers=(-2, -1), rank=16, lr_init=0.1),
                  TrainConfig(**{**MEND.train_defaults, "steps": 40, "eval_every": 20, "save_every": 20,
                                 "dev_cases": 10}), progress=False)
    return path, cases[:10]


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
def running_server(editor, port: int | None = None, generation=None, **config):
    """`lte serve`'s app on a loopback port (a free one unless given) in a background thread; yields its base URL.
    Generation on the editor's models, or on `generation` (e.g. a RemoteGeneration) with the editor's retrieval."""
    import httpx
    import uvicorn

    from lte.serving.server import ServerConfig, Service, create_app

    port = port or free_port()
    cfg = ServerConfig(port=port, default_tokens=8, **config)
    service = Service(editor.retrieval, generation, cfg) if generation else Service.local(editor, cfg)
    server = uvicorn.Server(uvicorn.Config(create_app(service), host="127.0.0.1", port=port, log_level="warning"))
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


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="session")
def tiny_encoder(tmp_path_factory):
    """A 2-layer, 32-wide BERT with the bundled embedder's tokenizer: a scope model to train in seconds."""
    import torch
    from transformers import AutoTokenizer, BertConfig, BertModel

    from retrieval.embedder import resolve_embedder

    folder = tmp_path_factory.mktemp("tiny-encoder")
    tokenizer = AutoTokenizer.from_pretrained(resolve_embedder(None))
    config = BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=128)
    torch.manual_seed(0)
    BertModel(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder
