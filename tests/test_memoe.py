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


def _nll(tiny, edit: Edit) -> float:
    from baselines.common import target_nll

    return float(target_nll(tiny, [(edit.prompt, edit.target_new)]).detach())


@pytest.mark.parametrize("batches", ["new-experts", "shared"])
def test_an_edit_of_the_first_batch_holds_after_a_second_batch(tiny, batches):
    editor = MEMoEEditor(tiny, MEMoEConfig(**TINY, batches=batches))
    try:
        unedited = _nll(tiny, EDITS[0])
        editor.apply(EDITS[:1])
        learned = _nll(tiny, EDITS[0])
        editor.apply(EDITS[1:])
        after = _nll(tiny, EDITS[0])
    finally:
        editor.restore()
    assert learned < unedited
    if batches == "new-experts":  # its adaptor is frozen and its subject still reaches it
        assert after == pytest.approx(learned, abs=1e-6)
    else:  # MEMoE's one adaptor, trained again by the second batch, moves the first batch's edit
        assert abs(after - learned) > 1e-3


def test_each_subject_reaches_the_adaptor_of_its_batch(tiny):
    for unanchored, elsewhere in (("skip", (-1, -1)), ("route", None)):
        editor = MEMoEEditor(tiny, MEMoEConfig(**TINY, unanchored=unanchored))
        try:
            editor.apply(EDITS[:1])
            editor.apply(EDITS[1:])
            space, darrieux, other = editor.route(["Where is The Space Needle?", "Who is Danielle Darrieux?",
                                                   "What is the capital of Peru?"])
        finally:
            editor.restore()
        assert (space[0], darrieux[0]) == (0, 1)
        if elsewhere:
            assert other == elsewhere  # an input naming no edited subject reaches no expert
        else:
            assert other[0] in (0, 1)  # routed: the adaptor with the nearest anchors


def test_the_essence_term_keeps_free_text_about_the_subject(tiny):
    drift = {}
    for weight in (0.0, 1.0):
        editor = MEMoEEditor(tiny, MEMoEConfig(**TINY, essence_weight=weight))
        try:
            batch, reference = editor.essence_set(EDITS)
            editor.apply(EDITS)
            with torch.no_grad():
                drift[weight] = float(editor.kl(reference, editor.answer_logprobs(batch)))
        finally:
            editor.restore()
    assert drift[1.0] < drift[0.0]


def test_acting_on_the_subject_only_caches_the_prefix_exactly(tiny):
    from baselines.common import target_nll

    editor = MEMoEEditor(tiny, MEMoEConfig(**TINY, act_on="subject"))
    unedited = _nll(tiny, EDITS[0])
    ids = tiny.tokenizer("Who is Danielle Darrieux?", add_special_tokens=False, return_tensors="pt")
    try:
        editor.apply(EDITS)
        cached = -editor.target_logprobs(editor.edit_batch(EDITS))
        full = [float(target_nll(tiny, [(e.prompt, e.target_new)]).detach()) for e in EDITS]
        with torch.no_grad():
            tiny.model(**ids)
        added, _ = editor.last_bypass
    finally:
        editor.restore()
    assert full[0] < unedited  # the edit was learned …
    assert cached.detach().tolist() == pytest.approx(full, abs=1e-5)  # … and the cached rows read it exactly
    subject = tiny.tokenizer(" Danielle Darrieux", add_special_tokens=False)["input_ids"]
    start = find_span(ids["input_ids"][0].tolist(), subject)
    acting = (added[0].abs().sum(-1) > 0).nonzero()[:, 0].tolist()
    assert acting == list(range(start, start + len(subject)))  # the subject's tokens, nothing else
