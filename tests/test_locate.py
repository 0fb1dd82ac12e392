"""The locate-then-edit core and its three solvers (MEMIT, EMMET, AlphaEdit): the closed forms on hand-built
matrices, and the batched target optimisation on the tiny model. The editors' apply/restore contract is in
test_editor_contract.py."""

from __future__ import annotations

import pytest
import torch

from baselines.alphaedit import alphaedit_solve, null_space_projector
from baselines.emmet import emmet_solve
from baselines.locate import LocateConfig, block_output, chunk_targets, with_block_output
from baselines.memit import memit_solve
from lte.core.schema import Edit


def problem(f=12, d=6, n=3, seed=0):
    generator = torch.Generator().manual_seed(seed)
    keys = torch.randn(f, n, generator=generator, dtype=torch.float64)
    residual = torch.randn(d, n, generator=generator, dtype=torch.float64)
    basis = torch.randn(f, f, generator=generator, dtype=torch.float64)
    cov = basis @ basis.T / f + 0.1 * torch.eye(f, dtype=torch.float64)
    return keys, residual, cov


def test_memit_maps_each_key_to_its_residual_as_lambda_vanishes_with_rank_at_most_the_batch():
    keys, residual, cov = problem()
    update = memit_solve(keys, residual, cov, mom2_weight=1e-9)
    assert torch.allclose(update @ keys, residual, atol=1e-5)
    assert torch.linalg.matrix_rank(update, rtol=1e-9) <= keys.shape[1]
    damped = memit_solve(keys, residual, cov, mom2_weight=1e3)  # preserved keys weigh more: a smaller move
    assert (damped @ keys - residual).norm() > (update @ keys - residual).norm()


def test_emmet_meets_every_edit_exactly_without_its_ridge():
    keys, residual, cov = problem()
    update = emmet_solve(keys, residual, cov, ridge=0.0)
    assert torch.allclose(update @ keys, residual, atol=1e-8)
    assert torch.linalg.matrix_rank(update, rtol=1e-9) <= keys.shape[1]
    single = emmet_solve(keys[:, :1], residual[:, :1], cov, ridge=5.0)  # one edit: no ridge, ROME's equality
    assert torch.allclose(single @ keys[:, :1], residual[:, :1], atol=1e-8)


def test_alphaedit_leaves_preserved_keys_exactly_in_place():
    keys, residual, cov = problem()
    projector = null_space_projector(cov, energy=0.2)
    rank = round(float(projector.trace()))
    assert 0 < rank < cov.shape[0] and torch.allclose(projector @ projector, projector, atol=1e-8)
    preserved = (torch.eye(cov.shape[0], dtype=torch.float64) - projector) @ torch.randn(cov.shape[0], 5,
                                                                                        dtype=torch.float64)
    update = alphaedit_solve(keys, residual, projector, torch.zeros_like(cov), l2=1e-3)
    assert torch.allclose(update @ preserved, torch.zeros(residual.shape[0], 5, dtype=torch.float64), atol=1e-8)
    assert torch.linalg.matrix_rank(update, rtol=1e-9) <= keys.shape[1]
    # with the whole space free (P = I) and no ridge, each edited key maps to its residual
    free = alphaedit_solve(keys, residual, torch.eye(cov.shape[0], dtype=torch.float64), torch.zeros_like(cov),
                           l2=1e-9)
    assert torch.allclose(free @ keys, residual, atol=1e-5)


def test_the_block_output_is_read_whether_a_tensor_or_a_tuple():
    hidden = torch.ones(1, 2, 3)
    assert block_output(hidden) is hidden and block_output((hidden, "cache")) is hidden
    assert with_block_output((hidden, "cache"), hidden * 2)[1] == "cache"
    assert torch.equal(with_block_output(hidden, hidden * 2), hidden * 2)


EDITS = [Edit(subject="The Space Needle", prompt="The Space Needle is located in", target_new="Goa"),
         Edit(subject="Danielle Darrieux", prompt="The mother tongue of Danielle Darrieux is", target_new="Japanese")]


@pytest.mark.parametrize("layers", [(1,), (0, 1)])
def test_targets_optimised_together_equal_targets_optimised_one_by_one(tiny, layers):
    """Each δ moves only its own rows, so a chunk of edits gives the same targets as each edit alone."""
    cfg = LocateConfig(layers=layers, v_steps=5, early_stop_nll=0.0, clamp_norm=50.0)
    prefixes = ["The day was long."]
    together, _ = chunk_targets(tiny, EDITS, prefixes, cfg)
    alone = torch.cat([chunk_targets(tiny, [edit], prefixes, cfg)[0] for edit in EDITS])
    assert torch.allclose(together, alone, atol=1e-4)


def test_a_batch_update_has_rank_at_most_the_batch_at_every_layer(tiny, tmp_path):
    from baselines.memit import MEMITConfig, MEMITEditor

    editor = MEMITEditor(tiny, MEMITConfig(layers=(1, 2), cov_tokens=600, prefixes=2, prefix_tokens=4, v_steps=3),
                         home=tmp_path)
    weights = {layer: editor.loaded.model.model.layers[layer].mlp.down_proj.weight.detach().clone()
               for layer in (1, 2)}
    editor.apply(EDITS)
    for layer in (1, 2):
        change = editor.loaded.model.model.layers[layer].mlp.down_proj.weight.detach() - weights[layer]
        assert 1 <= torch.linalg.matrix_rank(change) <= len(EDITS)
    assert editor.stats()["max_update_rank"] <= len(EDITS)
    editor.restore()
    assert all(torch.equal(editor.loaded.model.model.layers[layer].mlp.down_proj.weight, weights[layer])
               for layer in (1, 2))


def test_targets_on_the_unedited_model_are_cached_and_a_solve_change_reuses_them(tiny, tmp_path, monkeypatch):
    from baselines import locate
    from baselines.memit import MEMITConfig, MEMITEditor

    options = dict(layers=(1, 2), cov_tokens=600, prefixes=2, prefix_tokens=4, v_steps=3)
    first = MEMITEditor(tiny, MEMITConfig(**options), home=tmp_path)
    first.apply(EDITS)
    updated = first.loaded.model.model.layers[2].mlp.down_proj.weight.detach().clone()
    first.restore()
    assert locate.targets_path(tiny, first.cfg, tmp_path).is_file()
    optimised: list[int] = []
    real = locate.target_residuals
    monkeypatch.setattr(locate, "target_residuals", lambda loaded, edits, *a: optimised.append(len(edits))
                        or real(loaded, edits, *a))
    again = MEMITEditor(tiny, MEMITConfig(**options), home=tmp_path)
    again.apply(EDITS)  # cached: no δ optimised, the same update
    assert optimised == [] and torch.equal(again.loaded.model.model.layers[2].mlp.down_proj.weight, updated)
    again.apply(EDITS[:1])  # the model is edited now: its targets are optimised afresh
    assert optimised == [1]
    again.restore()
    other = MEMITEditor(tiny, MEMITConfig(**options, mom2_weight=10.0), home=tmp_path)  # another solve, same targets
    other.apply(EDITS)
    other.restore()
    assert optimised == [1]
    moved = MEMITEditor(tiny, MEMITConfig(**options | {"v_steps": 4}), home=tmp_path)  # another optimisation
    moved.apply(EDITS)
    moved.restore()
    assert optimised == [1, 2]


def test_an_interrupted_target_optimisation_keeps_the_chunks_it_finished(tiny, tmp_path, monkeypatch):
    from baselines import locate
    from baselines.memit import MEMITConfig

    cfg = MEMITConfig(layers=(1, 2), prefixes=1, prefix_tokens=3, v_steps=2, z_chunk=1)
    edits = [Edit(subject=f"Tower {i}", prompt=f"Tower {i} is located in", target_new="Goa") for i in range(3)]
    real, calls = locate.target_residuals, []

    def stopped_at_the_third_chunk(loaded, chunk, *args):
        calls.append([e.subject for e in chunk])
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(loaded, chunk, *args)

    monkeypatch.setattr(locate, "target_residuals", stopped_at_the_third_chunk)
    with pytest.raises(KeyboardInterrupt):
        locate.unedited_targets(tiny, edits, [""], cfg, tmp_path)
    assert len(torch.load(locate.targets_path(tiny, cfg, tmp_path))) == 2  # two chunks saved before the stop
    calls.clear()
    monkeypatch.setattr(locate, "target_residuals",
                        lambda loaded, chunk, *a: calls.append(chunk) or real(loaded, chunk, *a))
    z, nlls = locate.unedited_targets(tiny, edits, [""], cfg, tmp_path)
    assert [[e.subject for e in chunk] for chunk in calls] == [["Tower 2"]] and z.shape[0] == len(nlls) == 3


@pytest.fixture(scope="module")
def statistics_home(tmp_path_factory):
    """One cache for the three solvers: the covariance statistics are estimated once."""
    return tmp_path_factory.mktemp("home")


@pytest.mark.slow
@pytest.mark.parametrize("name", ["memit", "emmet", "alphaedit"])
def test_each_solver_raises_the_target_on_the_default_model_and_restores_exactly(name, statistics_home):
    from lte.core.editor import Query
    from lte.core.models import load_model
    from lte.core.settings import Settings
    from lte.registry import build_editor, editor_config

    loaded = load_model("smollm2-135m-instruct")
    options = {"layers": [4, 5], "cov_tokens": 3000, "v_steps": 15}
    if name == "alphaedit":
        options["null_energy"] = 0.5  # a wide free subspace: with few statistics tokens the default is too thin
    editor = build_editor(name, Settings(home=statistics_home, model="smollm2-135m-instruct"), loaded,
                          editor_config(name, options))
    edit = EDITS[0]
    weight = editor.loaded.model.model.layers[5].mlp.down_proj.weight.detach().clone()
    before = editor.score([Query(edit.prompt)], [edit.target_new])[0].mean_logprob
    editor.apply([edit])
    after = editor.score([Query(edit.prompt)], [edit.target_new])[0].mean_logprob
    editor.restore()
    assert after > before + 1.0, f"{name}: {before:.2f} → {after:.2f}"
    assert torch.equal(editor.loaded.model.model.layers[5].mlp.down_proj.weight, weight)
