"""Fine-tune a model on the alignment set with TRL's SFTTrainer (loss on the assistant turn only).

The output directory is a complete model (or a LoRA adapter with `--lora`) plus `lte_manifest.json`, usable as
`--model DIR`. Checkpoints go to DIR/checkpoints; re-running the same command resumes from the latest one.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from lte.core import files, prompting
from lte.core.errors import need
from lte.core.models import MANIFEST, LoadedModel
from lte.core.scoring import target_ids
from lte.method.align.data import (
    AlignDataConfig,
    alignment_cases,
    build_rows,
    by_source,
    content_hash,
    write_rows,
)
from retrieval.scope import ScopeConfig
from retrieval.scope_data import ScopeDataConfig

if TYPE_CHECKING:
    import torch


@dataclass
class AlignConfig:
    """Training settings. Defaults fit the 135M default model on a 2-core CPU with bfloat16 instructions in under
    30 minutes (26 min 15 s measured; 41 min 44 s in float32 — results/align-recipes.txt).

    epochs: passes over the data (ignored when max_steps > 0). batch_size × grad_accum = effective batch.
    lora: train a LoRA adapter (r=lora_r on all linear layers) instead of every weight — for large models.
    scope / scope_data: how to train the scope model on the same training files and lte's tables afterwards
    (`retrieval.scope`, written to OUT/scope); scope=None skips it.
    precision: 'auto' (bfloat16 mixed precision where the hardware computes it natively: a CUDA device that supports
    it, a CPU with AVX512-BF16 or AMX; float32 elsewhere), 'float32', 'bfloat16' or 'float16'; the weights stay
    float32 (half-precision weights lose small Adam updates) and the forward/backward passes run in the half type
    through autocast. Set from the global --dtype; `lte --dtype float32 align` trains wholly in float32.
    """

    out: Path = Path("aligned")
    data_files: Sequence[str] = ()
    max_steps: int = -1
    epochs: float = 1.0
    batch_size: int = 8
    grad_accum: int = 1
    learning_rate: float = 3e-5
    max_length: int = 384
    lora: bool = False
    lora_r: int = 16
    save_steps: int = 50
    precision: str = "auto"
    seed: int = 0
    data: AlignDataConfig = field(default_factory=AlignDataConfig)
    scope: ScopeConfig | None = field(default_factory=ScopeConfig)
    scope_data: ScopeDataConfig = field(default_factory=ScopeDataConfig)


def align(loaded: LoadedModel, cfg: AlignConfig, progress: bool = True) -> Path:
    """Build (or reuse) the alignment data, train, and write the model and its manifest into cfg.out.

    Under `accelerate launch` (several processes, one per GPU) the main process builds the data first and the
    others read it; each trains on its shard through TRL; only the main process writes the model, gate and
    manifest."""
    from accelerate import PartialState

    need("trl", "lte align"), need("datasets", "lte align")  # before minutes of data building
    out = Path(cfg.out)
    state = PartialState()
    with state.main_process_first():
        rows, data_hash = alignment_rows(loaded, cfg, out, progress)
    start = time.time()
    trainer = _trainer(loaded, rows, cfg, progress)
    checkpoints = out / "checkpoints"
    resume = checkpoints.is_dir() and any(checkpoints.glob("checkpoint-*"))
    trainer.train(resume_from_checkpoint=True if resume else None)
    seconds = time.time() - start
    if state.is_main_process:
        fit_gate_for(cfg, out)
        _save(trainer, loaded, cfg, out, data_hash, len(rows), seconds)
        if cfg.scope is not None:
            train_scope_for(cfg, out, progress)
    state.wait_for_everyone()
    return out


def alignment_rows(loaded: LoadedModel, cfg: AlignConfig, out: Path, progress: bool) -> tuple[list[dict], str]:
    """The training rows and their hash: read back when OUT already has them (a resumed run trains on exactly
    the data its checkpoints were trained on), else built and written."""
    data_file = out / "alignment.jsonl"
    if data_file.is_file():  # written whole or not at all (lte.core.files); its hash is that of its text
        text = data_file.read_text(encoding="utf-8")
        return [json.loads(line) for line in text.splitlines()], content_hash(text)
    rows = build_rows(loaded, cfg.data, cfg.data_files, progress)
    data_hash = write_rows(rows, data_file)
    files.write_json(out / "alignment.meta.json", {"hash": data_hash, "rows": len(rows)})
    return rows, data_hash


GATE_CASES_PER_SOURCE = 1000  # the tables and each data file weigh alike (a 10,000-case file would decide alone)


def fit_gate_for(cfg: AlignConfig, out: Path, embedder=None) -> None:
    """Fit the relevance gate on the alignment cases (their paraphrases pass, their neighbours and other relations
    of the same subject do not) and save it next to the model, where `lte` finds it for stores without their own."""
    from lte.method.editor import GATE_FILE
    from retrieval.embedder import Embedder
    from retrieval.store import fit_gate_on

    groups = by_source(alignment_cases(cfg.data, cfg.data_files)).values()
    cases = [case for group in groups for case in group[:GATE_CASES_PER_SOURCE]]
    fit_gate_on(cases, embedder or Embedder()).save(Path(out) / GATE_FILE)


def train_scope_for(cfg: AlignConfig, out: Path, progress: bool = True) -> None:
    """Train the scope model on the alignment run's training files (plus lte's tables and relation nouns) into
    OUT/scope, where `lte` finds it; a finished one is kept (re-running align resumes, it does not retrain)."""
    from retrieval.scope import META_FILE, SCOPE_DIR, train_scope
    from retrieval.scope_data import training_pairs

    target = Path(out) / SCOPE_DIR
    if (target / META_FILE).is_file():
        return
    train_scope(training_pairs(cfg.data_files, cfg.scope_data), target, cfg.scope, progress=progress)


def _trainer(loaded: LoadedModel, rows: list[dict], cfg: AlignConfig, progress: bool):
    import torch
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    device = next(loaded.model.parameters()).device
    half = training_precision(cfg.precision, device)

    args = SFTConfig(
        output_dir=str(Path(cfg.out) / "checkpoints"), max_steps=cfg.max_steps, num_train_epochs=cfg.epochs,
        per_device_train_batch_size=cfg.batch_size, gradient_accumulation_steps=cfg.grad_accum,
        learning_rate=cfg.learning_rate, lr_scheduler_type="cosine", warmup_steps=0.05, max_length=cfg.max_length,
        completion_only_loss=True, logging_steps=10, save_steps=cfg.save_steps, save_total_limit=2, seed=cfg.seed,
        report_to="none", disable_tqdm=not progress, use_cpu=device.type == "cpu", bf16=half == torch.bfloat16,
        fp16=half == torch.float16,
        dataloader_num_workers=0, **_length_grouping(SFTConfig),
    )
    peft_config = None
    if cfg.lora:
        from peft import LoraConfig

        peft_config = LoraConfig(r=cfg.lora_r, lora_alpha=2 * cfg.lora_r, target_modules="all-linear",
                                 task_type="CAUSAL_LM")
    dataset = Dataset.from_list([training_example(r, loaded.tokenizer) for r in rows])
    loaded.model.train()
    return SFTTrainer(model=loaded.model, args=args, train_dataset=dataset, processing_class=loaded.tokenizer,
                      peft_config=peft_config)


def training_precision(name: str, device) -> torch.dtype:
    """The type the training passes run in. 'auto' differs from inference's 'auto' on a CPU: training there is
    compute-bound, and native bfloat16 instructions made the default alignment 1.55x faster at the same quality
    (CounterFact 1,000 / 300 and ZsRE 300 within a few cases of float32, results/align-recipes.txt), while
    inference keeps float32 weights so that scores do not move with the hardware."""
    import torch

    from lte.core.models import resolve_dtype

    if name == "auto" and device.type == "cpu" and cpu_has_native_bf16():
        return torch.bfloat16
    return resolve_dtype(name, device)


def cpu_has_native_bf16() -> bool:
    """AVX512-BF16 or AMX (torch's own CPU probes, private, hence the guard). Without them the CPU emulates
    bfloat16, a speed-up nobody has measured, so 'auto' keeps float32 there."""
    import torch

    probes = [getattr(torch.cpu, name, None) for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported")]
    return any(probe() for probe in probes if probe is not None)


def training_example(row: dict, tokenizer) -> dict:
    """A row as TRL takes it: the conversation for a model with a chat template; else the tokens of the plain text
    `render` writes for it, tokenized as scoring does (a question's prompt ends in 'Answer: ', and tokenizing it
    with the answer would merge the space into the answer's first token, a context the model never sees)."""
    if tokenizer.chat_template:
        return {"prompt": row["prompt"], "completion": row["completion"]}
    prompt, completion = prompting.plain_pair(row["prompt"] + row["completion"])
    prompt_ids, completion_ids = target_ids(tokenizer, prompting.with_start(tokenizer, prompt), completion)
    completion_ids = completion_ids + [tokenizer.eos_token_id]
    return {"input_ids": prompt_ids + completion_ids,
            "completion_mask": [0] * len(prompt_ids) + [1] * len(completion_ids)}


def _save(trainer, loaded: LoadedModel, cfg: AlignConfig, out: Path, data_hash: str, rows: int,
          seconds: float) -> None:
    trainer.model.eval()
    trainer.save_model(str(out))
    loaded.tokenizer.save_pretrained(out)
    manifest = {"base_model": loaded.base_spec, "data_hash": data_hash, "rows": rows,
                "steps": trainer.state.global_step, "seed": cfg.seed, "lora": cfg.lora,
                "train_seconds": round(seconds, 1), "trained_in": _trained_in(trainer),
                "data_files": [str(p) for p in cfg.data_files],
                "config": {k: v for k, v in asdict(cfg).items()
                           if k not in ("out", "data_files", "data", "scope_data")},
                "data_config": asdict(cfg.data)}
    # The manifest is written last: a directory with one holds a finished model.
    files.write_json(out / MANIFEST, manifest, indent=2)
    shutil.rmtree(out / "checkpoints", ignore_errors=True)


def _trained_in(trainer) -> str:
    """What 'auto' became on this machine: the same command trains in another precision elsewhere."""
    args = trainer.args
    return "bfloat16" if args.bf16 else "float16" if args.fp16 else "float32"


def _length_grouping(config_class) -> dict:
    """Batches of similar length: random batches of the default set are 27 % padding, grouped ones about 1 %.
    The option was renamed in transformers 5."""
    from dataclasses import fields

    names = {f.name for f in fields(config_class)}
    if "train_sampling_strategy" in names:
        return {"train_sampling_strategy": "group_by_length"}
    return {"group_by_length": True} if "group_by_length" in names else {}
