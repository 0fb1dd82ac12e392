"""Training KnowledgeEditor's hypernetwork (`lte train ke`).

Each step takes one training edit: the hypernetwork predicts ΔW from the edit's gradient, and we minimise the new
target's NLL on the edit prompt and a paraphrase under W + ΔW, subject to KL(base ‖ edited) ≤ margin on unrelated
prompts. The constraint is handled with a Lagrange multiplier λ = softplus(ρ), ρ updated by gradient ascent, as in
the paper. Checkpoints (with the optimiser state and the dev curve) are written every `save_every` steps and a
re-run resumes from the last one.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch
from torch.func import functional_call
from tqdm.auto import tqdm

from baselines.common import rendered, target_batch
from baselines.knowledge_editor import (
    Checkpoint,
    KEConfig,
    build_hypernetwork,
    condition_embeddings,
    edit_gradients,
    edit_loss,
    edited_parameters,
)
from lte.editor import Query, UneditedEditor
from lte.models import LoadedModel
from lte.schema import EditCase


@dataclass
class KETrainConfig:
    """steps: training edits seen (500: ~3.3 s each for the default model on one CPU core next to other work, so
    under 30 minutes). lr: hypernetwork Adam rate; lambda_lr: ascent rate of the multiplier.
    margin: allowed KL on unrelated prompts. dev_cases / eval_every: the curve. save_every: checkpoint period."""

    steps: int = 500
    lr: float = 1e-3
    lambda_lr: float = 1e-2
    margin: float = 0.01
    dev_cases: int = 20
    eval_every: int = 50
    save_every: int = 50
    seed: int = 0


def next_token_logprobs(loaded: LoadedModel, prompts: Sequence[str], overrides: dict | None = None) -> torch.Tensor:
    """Log-distribution of the first answer token after each prompt."""
    texts, targets = rendered(loaded.tokenizer, prompts, "x")
    batch = target_batch(loaded.tokenizer, texts, targets, loaded.model.device)
    logits = functional_call(loaded.model, overrides or {}, args=(),
                             kwargs={"input_ids": batch.input_ids, "attention_mask": batch.attention_mask}).logits
    first = torch.stack([logits[i, positions[0]] for i, positions in enumerate(batch.target_positions)])
    return torch.log_softmax(first.float(), dim=-1)


def unrelated_prompts(case: EditCase, pool: Sequence[EditCase], rng: random.Random) -> list[str]:
    prompts = [p.prompt for p in case.locality[:2]]
    return prompts or [rng.choice(pool).edit.prompt]


def train_ke(loaded: LoadedModel, train: Sequence[EditCase], dev: Sequence[EditCase], path: Path,
             model_cfg: KEConfig | None = None, cfg: KETrainConfig | None = None, progress: bool = True) -> Checkpoint:
    cfg = cfg or KETrainConfig()
    path.parent.mkdir(parents=True, exist_ok=True)
    state_path = path.with_suffix(".train.pt")
    resumed = Checkpoint.load(path) if path.is_file() and state_path.is_file() else None
    model_cfg = resumed.config if resumed else (model_cfg or KEConfig())
    params = edited_parameters(loaded, model_cfg)
    hyper = build_hypernetwork(loaded, model_cfg)
    rho = torch.zeros((), requires_grad=True)
    optimizer = torch.optim.Adam(hyper.parameters(), lr=cfg.lr)
    checkpoint = resumed or Checkpoint(loaded.spec, model_cfg, {})
    if resumed:
        state = torch.load(state_path, weights_only=False)
        hyper.load_state_dict(state["hyper"])
        optimizer.load_state_dict(state["optimizer"])
        rho.data.fill_(state["rho"])
    predictor = UneditedEditor(loaded)
    rng = random.Random(cfg.seed + checkpoint.step)
    for step in tqdm(range(checkpoint.step + 1, cfg.steps + 1), desc="training KE", disable=not progress,
                     initial=checkpoint.step, total=cfg.steps):
        case = rng.choice(train)
        loss_edit, kl = ke_losses(loaded, hyper, params, predictor, case, unrelated_prompts(case, train, rng),
                                  model_cfg)
        multiplier = torch.nn.functional.softplus(rho)
        loss = loss_edit + multiplier * (kl - cfg.margin)
        optimizer.zero_grad()
        rho.grad = None
        loss.backward()
        optimizer.step()
        with torch.no_grad():  # ascent on the multiplier: λ grows while the constraint is violated
            rho += cfg.lambda_lr * rho.grad
        if step % cfg.eval_every == 0 or step == cfg.steps:
            checkpoint.curve.append({"step": step, **dev_scores(loaded, hyper, params, predictor, dev, model_cfg),
                                     "lambda": round(torch.nn.functional.softplus(rho.detach()).item(), 4)})
        if step % cfg.save_every == 0 or step == cfg.steps:
            # The training state first: a checkpoint that exists always has the state to resume it.
            torch.save({"hyper": hyper.state_dict(), "optimizer": optimizer.state_dict(), "rho": rho.item()},
                       state_path)
            checkpoint.step, checkpoint.state = step, hyper.state_dict()
            checkpoint.save(path)
    return checkpoint


def ke_losses(loaded, hyper, params, predictor, case: EditCase, unrelated: list[str], model_cfg: KEConfig):
    edit = case.edit
    prediction = predictor.generate([Query(edit.prompt)], model_cfg.prediction_tokens)[0]
    gradients = edit_gradients(loaded, edit, params)
    updates = hyper(condition_embeddings(loaded, edit, prediction), gradients)
    overrides = {name: params[name] + delta for name, delta in updates.items()}
    prompts = [edit.prompt] + [p.prompt for p in case.paraphrases[:1]]
    loss_edit = edit_loss(loaded, prompts, edit.target_new, overrides)
    with torch.no_grad():
        base = next_token_logprobs(loaded, unrelated)
    edited = next_token_logprobs(loaded, unrelated, overrides)
    kl = torch.nn.functional.kl_div(edited, base, log_target=True, reduction="batchmean")
    return loss_edit, kl


@torch.no_grad()
def dev_scores(loaded, hyper, params, predictor, dev: Sequence[EditCase], model_cfg: KEConfig) -> dict:
    """Edit success (the target's first token is the top prediction after the edit) and retain (the top prediction
    on unrelated prompts is unchanged), each edit applied alone."""
    success, retain = [], []
    for case in dev:
        edit = case.edit
        prediction = predictor.generate([Query(edit.prompt)], model_cfg.prediction_tokens)[0]
        with torch.enable_grad():
            gradients = edit_gradients(loaded, edit, params)
        updates = hyper(condition_embeddings(loaded, edit, prediction), gradients)
        overrides = {name: params[name] + delta for name, delta in updates.items()}
        texts, targets = rendered(loaded.tokenizer, [edit.prompt], edit.target_new)
        batch = target_batch(loaded.tokenizer, texts, targets, loaded.model.device)
        logits = functional_call(loaded.model, overrides, args=(),
                                 kwargs={"input_ids": batch.input_ids}).logits
        success.append(float(logits[0, batch.target_positions[0][0]].argmax() == batch.target_tokens[0][0]))
        unrelated = [p.prompt for p in case.locality[:1]] or [dev[(dev.index(case) + 1) % len(dev)].edit.prompt]
        retain.append(float(next_token_logprobs(loaded, unrelated).argmax(-1).eq(
            next_token_logprobs(loaded, unrelated, overrides).argmax(-1)).all()))
    return {"edit_success": round(sum(success) / max(len(success), 1), 4),
            "retain": round(sum(retain) / max(len(retain), 1), 4)}
