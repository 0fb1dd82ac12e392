import json
import random

import pytest

from lte.core import prompting
from lte.core.models import MANIFEST, load_model
from lte.core.tables import table_cases
from lte.method.align import finetune
from lte.method.align.data import AlignDataConfig, build_rows, whole_sentences
from lte.method.align.finetune import AlignConfig, align, training_precision
from retrieval.scope import ScopeConfig, ScopeModel
from retrieval.scope_data import ScopeDataConfig

SMALL = AlignDataConfig(in_scope=24, out_of_scope=12, linguistic=6, describe=6, table_edits=30, distill_tokens=4,
                        instruction_tokens=4)


def test_rows_cover_every_kind_and_put_the_relevant_fact_anywhere(tiny):
    rows = build_rows(tiny, SMALL, progress=False)
    kinds = {row["kind"] for row in rows}
    assert kinds <= {"in_scope", "out_of_scope", "linguistic", "describe", "no_facts"} and "in_scope" in kinds
    positions = set()
    for row in rows:
        user, answer = row["prompt"][0]["content"], row["completion"][0]["content"]
        assert row["prompt"][0]["role"] == "user" and row["completion"][0]["role"] == "assistant"
        if row["kind"] == "in_scope":
            facts = [line[2:] for line in user.splitlines() if line.startswith("- ")]
            relevant = [i for i, fact in enumerate(facts) if fact.endswith(answer.split()[-1].rstrip(".") + ".")]
            positions.update(relevant)
    assert len(positions) > 1  # not always first: the official data's shortcut is avoided


def test_rows_are_reproducible_with_a_seed(tiny):
    assert build_rows(tiny, SMALL, progress=False) == build_rows(tiny, SMALL, progress=False)


def test_out_of_scope_answers_are_the_base_models_own_without_facts(tiny, monkeypatch):
    from lte.core.scoring import ModelRunner

    seen = []

    def fake_generate(self, prompts, max_new_tokens):
        seen.extend(prompts)
        return [f"answer {len(seen) - len(prompts) + i}." for i in range(len(prompts))]

    monkeypatch.setattr(ModelRunner, "generate", fake_generate)
    rows = build_rows(tiny, SMALL, progress=False)
    assert seen and all(prompting.FACTS_HEADER not in prompt for prompt in seen)  # asked without any facts
    distilled = [r for r in rows if r["kind"] in ("out_of_scope", "linguistic")]
    assert len(distilled) == SMALL.out_of_scope + SMALL.linguistic
    for row in distilled:
        assert prompting.FACTS_HEADER in row["prompt"][0]["content"] or row["kind"] == "linguistic"
        assert "answer " in row["completion"][0]["content"]
    bare = [r for r in rows if r["kind"] == "no_facts"]
    assert len(bare) == int(SMALL.out_of_scope * SMALL.no_facts_share)
    assert all(prompting.FACTS_HEADER not in r["prompt"][0]["content"] for r in bare)
    for row in (r for r in rows if r["kind"] == "describe"):  # the new fact, then the base model's own words
        facts = [line[2:] for line in row["prompt"][0]["content"].splitlines() if line.startswith("- ")]
        lead, own = row["completion"][0]["content"].split(" answer ")
        assert lead in facts and own.rstrip(".").isdigit()
    pairs = {(r["prompt"][0]["content"].split("\n\n")[-1], r["completion"][0]["content"]) for r in distilled}
    assert all((r["prompt"][0]["content"], r["completion"][0]["content"]) in pairs for r in bare)


def test_table_cases_have_questions_and_neighbours():
    case = table_cases(5, random.Random(0))[0]
    assert case.paraphrases and case.locality
    assert all(p.answers == (case.edit.target_new,) for p in case.paraphrases)


def test_align_writes_a_loadable_model_with_manifest_and_scope_model(tmp_path, monkeypatch, tiny_encoder):
    monkeypatch.setattr(finetune, "cpu_has_native_bf16", lambda: True)
    loaded = load_model("tiny-random")
    scope = ScopeConfig(base=str(tiny_encoder), max_steps=2, batch_size=8)
    tiny_pairs = ScopeDataConfig(cases_per_source=10, table_edits=10, noun_edits=10)
    out = align(loaded, AlignConfig(out=tmp_path / "aligned", max_steps=2, batch_size=4, data=SMALL, scope=scope,
                                    scope_data=tiny_pairs), progress=False)
    assert ScopeModel(out / "scope").info.mix["other_relation"] > 0  # trained next to the model, where lte looks
    manifest = json.loads((out / MANIFEST).read_text())
    assert manifest["base_model"] == "tiny-random" and manifest["steps"] == 2 and manifest["data_hash"]
    assert manifest["config"]["precision"] == "auto" and manifest["trained_in"] == "bfloat16"
    again = load_model(str(out))
    assert again.base_spec == "tiny-random"
    assert not (out / "checkpoints").exists()


def test_auto_precision_trains_in_bfloat16_where_the_cpu_computes_it_natively(monkeypatch):
    import torch

    cpu = torch.device("cpu")
    monkeypatch.setattr(finetune, "cpu_has_native_bf16", lambda: True)
    assert training_precision("auto", cpu) == torch.bfloat16
    assert training_precision("float32", cpu) == torch.float32  # `lte --dtype float32 align` still trains in float32
    monkeypatch.setattr(finetune, "cpu_has_native_bf16", lambda: False)
    assert training_precision("auto", cpu) == torch.float32  # emulated bfloat16 would be slower, not faster


def test_whole_sentences_trims_cut_off_text():
    assert whole_sentences("Paris is big. It has many") == "Paris is big."
    assert whole_sentences(" Paris.") == "Paris."
    assert whole_sentences("Paris") == "Paris"
    assert whole_sentences('He starred in "The Big Sleep." He also played in "The Long') == \
        'He starred in "The Big Sleep."'


def test_lora_alignment_writes_an_adapter_that_loads_merged(tmp_path):
    loaded = load_model("tiny-random")
    out = align(loaded, AlignConfig(out=tmp_path / "lora", max_steps=1, batch_size=4, lora=True, lora_r=4, scope=None,
                                    data=SMALL), progress=False)
    assert (out / "adapter_config.json").is_file()
    merged = load_model(str(out))
    assert merged.base_spec == "tiny-random" and not hasattr(merged.model, "peft_config")


@pytest.mark.slow
def test_align_runs_under_accelerate_launch(tmp_path):
    """TRL's multi-GPU path: `accelerate launch ... -m lte.cli align`; one CPU process here (the main process
    builds the data, trains and alone writes the model, gate and manifest)."""
    import os
    import subprocess
    import sys

    out = tmp_path / "aligned"
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--cpu", "--num_processes", "1",
              "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"]
    command = ["-m", "lte.cli", "--model", "tiny-random", "align", "--out", str(out), "--max-steps", "2",
               "--batch-size", "4", "--in-scope", "24", "--out-of-scope", "12", "--linguistic", "6", "--describe", "6",
               "--no-scope"]
    done = subprocess.run(launch + command, env={**os.environ, "LTE_HOME": str(tmp_path / "home")},
                          capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-2000:]
    manifest = json.loads((out / MANIFEST).read_text())
    assert manifest["steps"] == 2 and (out / "gate.json").is_file()
    assert load_model(str(out)).base_spec == "tiny-random"


def test_a_model_without_chat_template_trains_on_the_tokens_it_is_prompted_with():
    """Template-less models (Gemma's GGUF) are prompted in `render`'s plain format, BOS first; alignment trains on
    those very tokens followed by the answer's, as scoring tokenizes them, and EOS."""
    from lte.core.scoring import target_ids
    from lte.method.align.finetune import training_example
    from tests.test_prompting import gemma_shaped_tokenizer

    tokenizer = gemma_shaped_tokenizer()
    facts = ["The Space Needle is located in Goa."]
    for query, answer in (("The Space Needle is located in", "Goa"), ("Where is the Space Needle?", "Goa")):
        messages = prompting.chat_messages(query, facts, answer)
        example = training_example({"prompt": messages[:1], "completion": messages[1:]}, tokenizer)
        prompt_ids, answer_ids = target_ids(tokenizer, prompting.render(tokenizer, query, facts),
                                            prompting.format_target(query, answer))
        assert example["input_ids"] == prompt_ids + answer_ids + [tokenizer.eos_token_id]
        assert example["input_ids"][0] == tokenizer.bos_token_id
        trained = [t for t, m in zip(example["input_ids"], example["completion_mask"]) if m]
        assert trained[-len(answer_ids) - 1:] == answer_ids + [tokenizer.eos_token_id]


def test_align_trains_a_model_without_chat_template(tmp_path):
    loaded = load_model("tiny-random")
    loaded.tokenizer.chat_template = None
    out = align(loaded, AlignConfig(out=tmp_path / "plain", max_steps=1, batch_size=4, data=SMALL, scope=None),
                progress=False)
    assert json.loads((out / MANIFEST).read_text())["steps"] == 1
