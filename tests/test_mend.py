import random

import torch

from baselines.common import gradient_factors
from baselines.knowledge_editor import edit_gradients
from baselines.mend import MEND, MENDConfig, RunningNorm, build_network, edited_parameters
from baselines.training import step_losses, unrelated_prompts
from lte.core.editor import UneditedEditor
from lte.core.tables import table_cases

CFG = MENDConfig(layers=(-2, -1), rank=8, lr_init=0.1)


def test_factors_rebuild_the_gradient_exactly(tiny):
    params = edited_parameters(tiny, CFG)
    edit = table_cases(1, random.Random(0))[0].edit
    factors = gradient_factors(tiny, [(edit.prompt, edit.target_new)], params)
    gradients = edit_gradients(tiny, edit, params)
    for name, (u, delta) in factors.items():
        torch.testing.assert_close(delta.T @ u, gradients[name], rtol=1e-4, atol=1e-7)


def test_update_rank_is_at_most_the_number_of_tokens(tiny):
    params = edited_parameters(tiny, CFG)
    network = build_network(tiny, CFG)
    torch.nn.init.normal_(network.nets[next(iter(network.nets))].up.weight)  # a non-identity network
    edit = table_cases(1, random.Random(0))[0].edit
    factors = gradient_factors(tiny, [(edit.prompt, edit.target_new)], params)
    for name, delta in network(factors).items():
        tokens = factors[name][0].shape[0]
        assert tokens < min(delta.shape)  # otherwise the bound says nothing
        assert 0 < torch.linalg.matrix_rank(delta.detach()) <= tokens  # float32 tolerance: its rounding is no rank


def test_running_norm_matches_the_batch_statistics():
    norm = RunningNorm(3)
    data = torch.randn(50, 3) * torch.tensor([1e-4, 1.0, 30.0]) + torch.tensor([0.0, 5.0, -2.0])  # δ-, u-like
    for chunk in data.split(7):
        norm(chunk)
    torch.testing.assert_close(norm.mean, data.mean(0))
    torch.testing.assert_close(norm.m2 / norm.count, data.var(0, unbiased=False), rtol=1e-4, atol=0)
    norm.eval()
    before = norm.count.clone()
    norm(data)
    assert torch.equal(norm.count, before)  # frozen at edit time


def test_a_training_step_changes_the_network(tiny):
    params = edited_parameters(tiny, CFG)
    network = build_network(tiny, CFG)
    before = {n: p.detach().clone() for n, p in network.named_parameters()}
    cases = table_cases(20, random.Random(3))
    optimizer = torch.optim.Adam(network.parameters(), lr=1e-2)
    loss_edit, kl = step_losses(MEND, tiny, network, params, UneditedEditor(tiny), cases[0],
                                unrelated_prompts(cases[0], cases, 1, random.Random(0)), CFG, 2)
    (loss_edit + kl).backward()
    optimizer.step()
    changed = {n for n, p in network.named_parameters() if not torch.equal(p, before[n])}
    assert {"log_lr", *(f"nets.{key}.up.weight" for key in network.nets)} <= changed
