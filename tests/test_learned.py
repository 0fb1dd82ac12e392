"""One suite for every learned editor (KnowledgeEditor, MEND): each trained from scratch on the tiny model by a
conftest fixture, then loaded, edited with, resumed and refused the same way."""

import random
import shutil

import pytest
import torch

from baselines.knowledge_editor import KE, KnowledgeEditor
from baselines.learned import Checkpoint
from baselines.mend import MEND, MENDEditor
from baselines.training import TrainConfig, train_learned
from lte.core.editor import Query
from lte.core.errors import CheckpointError
from lte.core.settings import Settings
from lte.core.tables import table_cases

# method, its editor, the conftest fixture that trains it, the seed of that fixture's cases
LEARNED = {"ke": (KE, KnowledgeEditor, "ke_trained", 1), "mend": (MEND, MENDEditor, "mend_trained", 2)}


@pytest.fixture(params=list(LEARNED))
def learned(request):
    method, editor_class, fixture, seed = LEARNED[request.param]
    path, held_out = request.getfixturevalue(fixture)
    return method, editor_class, path, held_out, seed


def test_trained_network_raises_held_out_targets_and_restores_exactly(tiny, learned):
    method, editor_class, path, held_out, _ = learned
    checkpoint = Checkpoint.load(path, method.config_class, method.name)
    assert checkpoint.method == method.name and len(checkpoint.curve) == 2
    editor = editor_class(tiny, checkpoint)
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


def test_training_resumes_from_its_checkpoint(tiny, learned, tmp_path):
    method, _, path, held_out, seed = learned
    copy = tmp_path / f"{method.name}.pt"
    shutil.copy(path, copy)
    shutil.copy(path.with_suffix(".train.pt"), copy.with_suffix(".train.pt"))
    cfg = TrainConfig(**{**method.train_defaults, "steps": 45, "eval_every": 20, "save_every": 20, "dev_cases": 10})
    resumed = train_learned(method, tiny, table_cases(120, random.Random(seed))[10:], held_out, copy, cfg=cfg,
                            progress=False)
    assert resumed.step == 45 and [p["step"] for p in resumed.curve] == [20, 40, 45]


def test_missing_or_foreign_checkpoint_says_what_to_do(tiny, tmp_path, ke_trained, mend_trained):
    for name, (_, editor_class, _, _) in LEARNED.items():
        with pytest.raises(CheckpointError, match=f"lte --model tiny-random train {name}"):
            editor_class.from_config(Settings(home=tmp_path), tiny)
        foreign = mend_trained[0] if name == "ke" else ke_trained[0]
        with pytest.raises(CheckpointError, match=f"network, not '{name}'"):
            editor_class.from_config(Settings(home=tmp_path), tiny, editor_class.config_class(str(foreign)))
