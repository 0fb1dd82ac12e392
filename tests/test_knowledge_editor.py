import random

import torch

from baselines.knowledge_editor import (
    KEConfig,
    build_hypernetwork,
    condition_embeddings,
    edit_gradients,
    edited_parameters,
)
from lte.core.tables import table_cases


def test_delta_shapes_and_gate(tiny):
    cfg = KEConfig(layers=(-2, -1), hidden=16)
    params = edited_parameters(tiny, cfg)
    hyper = build_hypernetwork(tiny, cfg)
    edit = table_cases(1, random.Random(0))[0].edit
    gradients = edit_gradients(tiny, edit, params)
    updates = hyper(condition_embeddings(tiny, edit, "x"), gradients)
    assert {n: u.shape for n, u in updates.items()} == {n: p.shape for n, p in params.items()}
    for head in hyper.heads:  # a closed gate means no update at all
        torch.nn.init.constant_(head.gate.bias, -1e4)
    closed = hyper(condition_embeddings(tiny, edit, "x"), gradients)
    assert all(float(u.abs().max()) == 0.0 for u in closed.values())
