"""Causal tracing on the tiny model: restoring every state recovers the clean run exactly, restoring none is the
corrupted run computed by hand, the summary picks the layers the editors then edit, and `lte trace` writes its
heatmaps and tables."""

import json

import numpy as np
import pytest
import torch

from baselines.common import decoder_layers
from baselines.memit import MEMITConfig, MEMITEditor
from baselines.rome import ROMEConfig, ROMEEditor
from baselines.statistics import trace_path
from baselines.tracing import (
    TraceConfig,
    noise_scale,
    prepare,
    restored_probabilities,
    trace_fact,
    traced_layers,
    window_layers,
)
from lte.cli import main
from lte.core.errors import ConfigError

PROMPT, SUBJECT = "The Space Needle is located in", "Space Needle"
CFG = TraceConfig(samples=3, noise=30.0)  # strong noise: the tiny random model barely reacts to 3σ


def test_restoring_every_state_recovers_the_clean_run_and_none_the_corrupted_one(tiny):
    prepared = prepare(tiny, PROMPT, SUBJECT, CFG, noise_scale(tiny))
    layers, length = len(decoder_layers(tiny.model)), prepared.input_ids.shape[1]
    everything = [(layers - 1, token) for token in range(length)]
    corrupted, restored = restored_probabilities(tiny, prepared, [[], everything], "hidden", CFG)
    assert restored == pytest.approx(prepared.clean, abs=1e-7)
    by_hand = []
    with torch.no_grad():
        for draw in range(CFG.samples):
            embeddings = tiny.model.get_input_embeddings()(prepared.input_ids) + prepared.noise[draw]
            probs = torch.softmax(tiny.model(inputs_embeds=embeddings).logits[0, -1], dim=-1)
            by_hand.append(float(probs[prepared.answer_id]))
    assert corrupted == pytest.approx(np.mean(by_hand), abs=1e-7)
    assert abs(corrupted - prepared.clean) > 1e-5  # the noise did something


def test_a_fact_trace_covers_every_token_and_layer_and_states_before_the_subject_do_nothing(tiny):
    layers = len(decoder_layers(tiny.model))
    for kind in ("hidden", "mlp", "attn"):
        trace = trace_fact(tiny, PROMPT, SUBJECT, kind, CFG)
        assert trace.scores.shape == (len(trace.tokens), layers)
        start = trace.subject_range[0]
        assert start > 0 and np.all(trace.scores[:start] == trace.corrupted)
        assert not np.all(trace.scores[start:] == trace.corrupted)
    assert list(window_layers(0, 10, 4)) == [0, 1, 2, 3] and list(window_layers(5, 2, 30)) == [4, 5]


def test_traced_layers_take_the_window_with_the_largest_mlp_effect_at_the_subjects_last_token():
    aie = [[0.0] * 8 for _ in range(3)]
    aie[0][2:5] = [0.1, 0.5, 0.4]
    aie[2][6] = 9.0  # the last token's peak is not where the fact is stored
    summary = {"kinds": {"mlp": {"aie": aie}}}
    assert traced_layers(summary, 1) == (3,) and traced_layers(summary, 2) == (3, 4)
    assert traced_layers(summary, 3) == (2, 3, 4)
    with pytest.raises(ConfigError):
        traced_layers(summary, 9)


def test_lte_trace_writes_a_heatmap_per_kind(tmp_path, capsys):
    out = tmp_path / "trace"
    assert main(["--model", "tiny-random", "trace", PROMPT, "--subject", SUBJECT, "--samples", "2",
                 "--kind", "hidden", "mlp", "--out", str(out)]) == 0
    for kind in ("hidden", "mlp"):
        table = json.loads((out / f"trace-{kind}.json").read_text())
        assert np.asarray(table["scores"]).shape == (len(table["tokens"]), 4)
        assert (out / f"trace-{kind}.png").read_bytes()[:4] == b"\x89PNG"
    assert not (out / "trace-attn.png").exists()
    assert "indirect effect" in capsys.readouterr().out
    assert main(["--model", "tiny-random", "trace", PROMPT]) == 2  # no --subject
    assert "--subject" in capsys.readouterr().err


def test_dataset_trace_is_saved_and_editors_set_to_traced_edit_its_layers(tiny, tmp_path, isolated_home, capsys):
    prompts = ["The Space Needle is located in", "The Eiffel Tower is located in", "Michel Rocard is a native of"]
    subjects = ["Space Needle", "Eiffel Tower", "Michel Rocard"]
    facts = []
    for i, (prompt, subject) in enumerate(zip(prompts, subjects)):  # the tiny model "knows" its own next token
        ids = tiny.tokenizer(prompt, add_special_tokens=False, return_tensors="pt")["input_ids"]
        with torch.no_grad():
            top = int(tiny.model(input_ids=ids).logits[0, -1].argmax())
        attribute = tiny.tokenizer.decode([top]).strip()
        if attribute and tiny.tokenizer(" " + attribute, add_special_tokens=False)["input_ids"][0] == top:
            facts.append({"known_id": i, "subject": subject, "attribute": attribute, "prompt": prompt,
                          "template": "", "prediction": "", "relation_id": "P0"})
    facts.append({"known_id": 9, "subject": "Danielle Darrieux", "attribute": "zzzz", "relation_id": "P0",
                  "prompt": "The mother tongue of Danielle Darrieux is", "template": "", "prediction": ""})
    assert len(facts) >= 2  # the tiny model is built deterministically
    path = tmp_path / "known.json"
    path.write_text(json.dumps(facts))
    with pytest.raises(ConfigError, match="lte .*trace --dataset"):
        MEMITEditor(tiny, MEMITConfig(layers=(1, 2), traced=True), home=isolated_home)
    out = tmp_path / "avg"
    code = main(["--model", "tiny-random", "trace", "--dataset", str(path), "--limit", "5", "--samples", "2",
                 "--kind", "mlp", "--out", str(out), "--save", "--no-progress"])
    assert code == 0
    assert f"only {len(facts) - 1} of {len(facts)} facts" in capsys.readouterr().out  # the unknown one is skipped
    summary = json.loads(trace_path(tiny, isolated_home).read_text())
    assert summary == json.loads((out / "summary.json").read_text())
    assert np.asarray(summary["kinds"]["mlp"]["aie"]).shape == (3, 4)
    assert (out / "aie.png").is_file() and "subj-last" in (out / "summary.txt").read_text()
    memit = MEMITEditor(tiny, MEMITConfig(layers=(1, 2), traced=True), home=isolated_home)
    assert memit.cfg.layers == traced_layers(summary, 2) and memit.stats()["layers"] == list(memit.cfg.layers)
    rome = ROMEEditor(tiny, ROMEConfig(traced=True), home=isolated_home)
    assert rome.cfg.layer == traced_layers(summary, 1)[0]


class _Tokenizer:
    """Just what traced_text reads: a beginning-of-text token, put first by default or not."""

    bos_token, bos_token_id = "<bos>", 2

    def __init__(self, adds_bos: bool):
        self.adds_bos = adds_bos

    def __call__(self, text):
        return {"input_ids": ([2] if self.adds_bos else []) + [7]}


def test_a_bare_prompt_gets_the_beginning_token_its_tokenizer_puts_by_default():
    from baselines.tracing import TraceConfig, traced_text

    cfg = TraceConfig()
    assert traced_text(_Tokenizer(True), "Paris is in", cfg) == "<bos>Paris is in"
    assert traced_text(_Tokenizer(True), "<bos>Paris is in", cfg) == "<bos>Paris is in"
    assert traced_text(_Tokenizer(False), "Paris is in", cfg) == "Paris is in"
