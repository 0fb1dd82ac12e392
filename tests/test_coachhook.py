"""CoachHooK: the scope test (within-sequence z-scores, padding masked), the hook leaving out-of-scope tokens exactly
as the model computes them, its memory constant in the number of edits, and the model's own weights untouched. The
apply/restore contract is in test_editor_contract.py."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from baselines.coachhook import CoachHooKConfig, CoachHooKEditor, ScopedHook, within_sequence_zscore
from baselines.common import ForwardInputs
from lte.core.schema import Edit
from tests.test_editor_contract import EDITS as CONTRACT_EDITS

TINY = dict(layers=(1, 2), cov_tokens=600, prefixes=2, prefix_tokens=4, v_steps=10)
EDITS = [*CONTRACT_EDITS, Edit(subject="Toyota", prompt="Toyota is owned by", target_new="BMW",
                               target_true="Toyota Group")]


def test_zscores_ignore_padding_and_cannot_fire_in_one_token_rows():
    values = torch.tensor([[1.0, 2.0, 9.0, 1.5, 0.0, 0.0], [3.0, 0.0, 0.0, 0.0, 0.0, 0.0]])
    mask = torch.tensor([[1, 1, 1, 1, 0, 0], [1, 0, 0, 0, 0, 0]], dtype=torch.bool)
    z = within_sequence_zscore(values, mask)
    alone = within_sequence_zscore(values[:1, :4], torch.ones(1, 4, dtype=torch.bool))
    assert torch.allclose(z[0, :4], alone[0])  # padded or not: the same statistics
    assert torch.isinf(z[0, 4:]).all() and torch.isinf(z[1]).all()
    assert z[0].argmax() == 2


class Model(nn.Module):
    """A model whose one linear layer is hooked, called as a transformers model is (kwargs, attention mask)."""

    def __init__(self):
        super().__init__()
        self.proj = nn.Linear(8, 4, bias=False)

    def forward(self, input_ids=None, attention_mask=None):
        return self.proj(input_ids)


def test_the_hook_changes_only_in_scope_tokens_and_leaves_the_rest_bit_identical():
    torch.manual_seed(0)
    model = Model()
    inputs = ForwardInputs(model)
    delta = torch.zeros(4, 8)
    delta[:, 0] = 1.0  # the hook moves only keys with a component along e₀
    hook = ScopedHook(delta, alpha=2.2, inputs=inputs)
    model.proj.register_forward_hook(hook)
    x = torch.randn(2, 12, 8) * 0.1
    x[:, :, 0] = 0.1  # every real token moves by the same amount …
    x[0, 3, 0] = 5.0  # … but row 0's token 3: far out of its sequence → in scope
    x[1, 11, 0] = 5.0  # row 1: its outlier is padding → nothing in scope
    mask = torch.ones(2, 12, dtype=torch.long)
    mask[1, 10:] = 0
    out = model(input_ids=x, attention_mask=mask)
    plain = x @ model.proj.weight.T
    changed = (out != plain).any(-1)
    assert changed[0, 3] and changed.sum() == 1
    assert torch.equal(out[0, torch.arange(12) != 3], plain[0, torch.arange(12) != 3])
    assert torch.equal(out[1], plain[1])
    hook.replace = True  # while editing: every token
    assert (model(input_ids=x, attention_mask=mask) != plain).any(-1).all()


@pytest.fixture
def editor(tiny, tmp_path):
    made = CoachHooKEditor(tiny, CoachHooKConfig(**TINY), home=tmp_path, batch_size=8)
    made.name = "coachhook"
    yield made
    made.restore()


def test_memory_is_constant_in_the_edits_and_the_models_weights_never_change(tiny, editor):
    before = {name: p.detach().clone() for name, p in tiny.model.named_parameters()}
    editor.apply(EDITS[:2])
    held = editor.held_bytes()
    editor.apply(EDITS[2:])
    assert editor.held_bytes() == held > 0
    assert all(torch.equal(p, before[name]) for name, p in tiny.model.named_parameters())
    assert all(h.delta.abs().sum() > 0 for h in editor.hooks.values())
    assert editor.stats()["held_bytes"] == held


@pytest.mark.parametrize("rule", ["lower", "fit"])
def test_alpha_adapts_so_each_batchs_edit_prompts_fire_and_restore_removes_the_hooks(tiny, tmp_path, rule):
    """After each batch, α is lowered until every edit prompt of that batch fires. An earlier batch's prompt is not
    promised: a later batch's update changes its z-scores (on the tiny model the first edit's prompt stops firing
    after the second batch with transformers 5.24)."""
    start = 6.0  # above every z-score the tiny model's prompts reach (≈ 2.3): nothing fires unless α adapts
    editor = CoachHooKEditor(tiny, CoachHooKConfig(**TINY, alpha_rule=rule, alpha=start), home=tmp_path, batch_size=8)
    try:
        editor.apply(EDITS[:2])
        assert all(editor.fires([e.prompt for e in EDITS[:2]]))
        first = {layer: hook.alpha for layer, hook in editor.hooks.items()}
        editor.apply(EDITS[2:])
        assert all(editor.fires([e.prompt for e in EDITS[2:]]))
        assert all(editor.hooks[layer].alpha <= first[layer] for layer in first)  # later batches only lower it
        assert all(alpha < start for alpha in first.values())
    finally:  # the tiny model is shared by the whole session: never leave hooks on it
        editor.restore()
    assert not editor.hooks and not tiny.model.model.layers[1].mlp.down_proj._forward_hooks


def test_an_unknown_alpha_rule_is_refused():
    with pytest.raises(ValueError, match="alpha_rule"):
        CoachHooKConfig(alpha_rule="adaptive")
