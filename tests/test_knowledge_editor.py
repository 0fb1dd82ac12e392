import random

import pytest
import torch

from baselines.knowledge_editor import (
    KE,
    KEConfig,
    KnowledgeEditor,
    build_hypernetwork,
    condition_embeddings,
    edit_gradients,
    edited_parameters,
)
from baselines.learned import Checkpoint
from baselines.training import TrainConfig, train_learned
from lte.align.data import table_cases
from lte.editor import Query
from lte.errors import CheckpointError
from lte.settings import Settings


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


@pytest.fixture
def trained(ke_trained):
    return ke_trained


def test_trained_hypernetwork_raises_held_out_targets_and_restores_exactly(tiny, trained):
    path, held_out = trained
    editor = KnowledgeEditor(tiny, Checkpoint.load(path, KEConfig))
    weights = {n: p.detach().clone() for n, p in editor.params.items()}
    gains = []
    for case in held_out[:5]:
        query = Query(case.edit.prompt)
        before = editor.score([query], [case.edit.target_new])[0].mean_logprob
        editor.apply([case.edit])
        gains.append(editor.score([query], [case.edit.target_new])[0].mean_logprob - before)
        editor.restore()
        assert all(torch.equal(p, weights[n]) for n, p in editor.params.items())
    assert sum(gains) / len(gains) > 0
    assert len(Checkpoint.load(path, KEConfig).curve) == 2


def test_training_resumes_from_its_checkpoint(tiny, trained, tmp_path):
    import shutil

    path, held_out = trained
    copy = tmp_path / "ke.pt"
    shutil.copy(path, copy)
    shutil.copy(path.with_suffix(".train.pt"), copy.with_suffix(".train.pt"))
    cases = table_cases(120, random.Random(1))
    resumed = train_learned(KE, tiny, cases[10:], held_out, copy,
                            cfg=TrainConfig(steps=45, eval_every=20, save_every=20, dev_cases=10), progress=False)
    assert resumed.step == 45 and [p["step"] for p in resumed.curve] == [20, 40, 45]


def test_missing_checkpoint_says_how_to_train(tiny, tmp_path):
    with pytest.raises(CheckpointError, match="lte --model tiny-random train ke"):
        KnowledgeEditor.from_config(Settings(home=tmp_path), tiny)
