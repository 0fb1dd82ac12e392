"""MEMoE-style editing: the model's own weights stay bit-identical, the anchor is the input's known subject, and
two prompts about one subject reach the same expert. The apply/restore contract is in test_editor_contract.py."""

from __future__ import annotations

import pytest
import torch

from baselines.memoe import MEMoEConfig, MEMoEEditor, find_span
from lte.core.schema import Edit

TINY = dict(layer=1, steps=15, lr=0.02, retain_texts=2, retain_tokens=4)
EDITS = [
    Edit(subject="The Space Needle", prompt="The Space Needle is located in", target_new="Goa", target_true="Seattle"),
    Edit(subject="Danielle Darrieux", prompt="The mother tongue of Danielle Darrieux is", target_new="Japanese",
         target_true="French"),
]


@pytest.fixture
def editor(tiny):
    made = MEMoEEditor(tiny, MEMoEConfig(**TINY), batch_size=8)
    yield made
    made.restore()


def test_find_span_matches_whole_tokens_only():
    assert find_span([1, 2, 3, 4, 2, 3], [2, 3]) == 4
    assert find_span([12, 3], [2, 3]) == -1 and find_span([1, 2], [3]) == -1


def test_the_models_weights_stay_bit_identical_and_restore_removes_the_adaptor(tiny, editor):
    before = {name: p.detach().clone() for name, p in tiny.model.named_parameters()}
    prompt = [(EDITS[0].prompt, EDITS[0].target_new)]
    from baselines.common import target_nll

    unedited = float(target_nll(tiny, prompt).detach())
    editor.apply(EDITS)
    assert float(target_nll(tiny, prompt).detach()) < unedited  # the adaptor acts …
    assert all(torch.equal(p, before[name]) for name, p in tiny.model.named_parameters())  # … beside frozen weights
    editor.restore()
    assert float(target_nll(tiny, prompt).detach()) == pytest.approx(unedited, abs=1e-6)
    assert not tiny.model.model.layers[1].mlp.down_proj._forward_hooks


SAME_SUBJECT = ["The Space Needle is located in", "Where is The Space Needle?",
                "The Space Needle can be found in the city of"]


def test_the_anchor_is_the_known_subject(tiny, editor):
    editor.apply(EDITS)
    ids = tiny.tokenizer("Where is The Space Needle?", add_special_tokens=False, return_tensors="pt")
    with torch.no_grad():
        tiny.model(**ids)
    subject = tiny.tokenizer(" The Space Needle", add_special_tokens=False)["input_ids"]
    expected = tiny.model.get_input_embeddings()(torch.tensor(subject)).mean(0)
    assert torch.allclose(editor.anchors.current[0], expected)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_prompts_about_one_subject_reach_one_expert_through_the_anchor(tiny, seed):
    routes = {}
    for weight in (2.0, 0.0):  # the default anchor weight, and routing on the token alone
        editor = MEMoEEditor(tiny, MEMoEConfig(**TINY, seed=seed, anchor_weight=weight))
        editor.apply(EDITS)
        routes[weight] = editor.route(SAME_SUBJECT)
        editor.restore()
    assert len(set(routes[2.0])) == 1
    if seed == 2:  # measured: without the anchor this initialisation splits the three prompts over experts
        assert len(set(routes[0.0])) > 1
