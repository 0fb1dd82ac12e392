"""Which weights can KnowledgeEditor edit locally? A diagnostic, no hypernetwork involved.

KE's update is a rescaled gradient of the edit loss. For each choice of edited matrices (and with or without ROME's
inverse key covariance C⁻¹ on the input side of the gradient), this takes the plain descent direction and finds,
per edit, the smallest step that makes the new target's first token the top prediction. At that step it reports
how often a paraphrase also flips (generalization) and how often the base model's first answer tokens on the case's
neighbour prompts stay the greedy choice (retain, as in `lte train ke`'s dev curve). A choice where even the best
step of the raw direction cannot keep neighbours is one the hypernetwork cannot fix by scaling alone.

    python benchmarks/ke_directions.py --data ../shared/datasets/counterfact_easyedit/counterfact-train.json \
        --cases 20 --layers 28,29 4 4,6 --precondition
"""

from __future__ import annotations

import argparse
import time

import torch
from torch.func import functional_call

from baselines.common import (
    decoder_layers,
    gradient_factors,
    mlp_projection,
    rendered,
    subject_last_token,
    target_batch,
)
from baselines.knowledge_editor import (
    KEConfig,
    edit_gradients,
    edited_parameters,
)
from baselines.rome import ROMEConfig, covariance
from baselines.statistics import regularised
from baselines.training import answer_logprobs, base_answers
from lte.core.datasets import load_cases
from lte.core.editor import UneditedEditor
from lte.core.models import load_model
from lte.core.settings import Settings

STEPS = [10.0 ** (e / 2) for e in range(-10, 1)]  # ‖ΔW‖ / ‖W‖ from 1e-5 to 1


def subject_gradients(loaded, edit, params: dict) -> dict[str, torch.Tensor]:
    """∇W L restricted to the subject's last token: δ ⊗ u there (the full ∇W sums that outer product over every
    position)."""
    text = rendered(loaded.tokenizer, [edit.prompt], edit.target_new)[0][0]
    position = subject_last_token(loaded.tokenizer, text, edit.subject)
    factors = gradient_factors(loaded, [(edit.prompt, edit.target_new)], params)
    return {name: torch.outer(delta[position], u[position]) for name, (u, delta) in factors.items()}


def directions(loaded, params, layers, edit, preconditioners, at_subject: bool):
    """−∇W L per edited matrix (or only its subject-token term), optionally times C⁻¹ on the input side, scaled
    to unit total norm."""
    grads = (subject_gradients if at_subject else edit_gradients)(loaded, edit, params)
    out = {}
    for (name, grad), layer in zip(grads.items(), layers):
        step = -grad
        if layer in preconditioners:
            step = step @ preconditioners[layer]
        out[name] = step
    total = torch.sqrt(sum((d ** 2).sum() for d in out.values()))
    return {name: d / total for name, d in out.items()}


def top1(loaded, overrides, prompt, target) -> bool:
    texts, targets = rendered(loaded.tokenizer, [prompt], target)
    batch = target_batch(loaded.tokenizer, texts, targets, loaded.model.device)
    logits = functional_call(loaded.model, overrides, args=(), kwargs={"input_ids": batch.input_ids}).logits
    return bool(logits[0, batch.target_positions[0][0]].argmax() == batch.target_tokens[0][0])


def retained(loaded, overrides, texts, answers) -> list[float]:
    base = answer_logprobs(loaded, texts, answers).argmax(-1)
    edited = answer_logprobs(loaded, texts, answers, overrides).argmax(-1)
    return [float(base.eq(edited).all())] if texts else []


@torch.no_grad()
def measure(loaded, predictor, params, layers, cases, preconditioners, neighbours: int, at_subject: bool) -> dict:
    weight_norm = torch.sqrt(sum((p ** 2).sum() for p in params.values()))
    found, paraphrase, retain, sizes = 0, [], [], []
    for case in cases:
        edit = case.edit
        with torch.enable_grad():
            direction = directions(loaded, params, layers, edit, preconditioners, at_subject)
        for size in STEPS:
            overrides = {n: params[n] + size * weight_norm * d for n, d in direction.items()}
            if top1(loaded, overrides, edit.prompt, edit.target_new):
                break
        else:
            continue
        found += 1
        sizes.append(size)
        paraphrase += [float(top1(loaded, overrides, p.prompt, edit.target_new)) for p in case.paraphrases[:2]]
        texts, answers = base_answers(predictor, [p.prompt for p in case.locality[:neighbours]], 4)
        for text, answer in zip(texts, answers):
            retain += retained(loaded, overrides, [text], [answer])
    mean = lambda xs: sum(xs) / len(xs) if xs else float("nan")  # noqa: E731
    return {"edited": found / len(cases), "paraphrase": mean(paraphrase), "retain": mean(retain),
            "median_step": sorted(sizes)[len(sizes) // 2] if sizes else float("nan"), "neighbour_probes": len(retain)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True, help="edit cases (a training split)")
    parser.add_argument("--cases", type=int, default=20)
    parser.add_argument("--neighbours", type=int, default=3, help="neighbour prompts checked per case")
    parser.add_argument("--layers", nargs="+", default=["-2,-1"],
                        help="comma-separated layer sets to compare, e.g. 28,29 4 4,6 (default: KE's last two)")
    parser.add_argument("--precondition", action="store_true",
                        help="also try each set with C⁻¹ (ROME's statistics; computed and cached when missing)")
    parser.add_argument("--subject", action="store_true",
                        help="also try each set with only the gradient's term at the subject's last token")
    args = parser.parse_args()
    settings = Settings.from_env()
    loaded = load_model(settings.model, settings.home)
    predictor = UneditedEditor(loaded)
    cases = [c for c in load_cases(args.data) if c.locality][: args.cases]
    count = len(decoder_layers(loaded.model))
    print(f"{'layers':<10}{'C^-1':>6}{'tokens':>9}{'edited':>8}{'paraphrase':>12}{'retain':>8}{'median step':>13}"
          f"{'s':>6}")
    for spec in args.layers:
        layers = tuple(int(x) for x in spec.split(","))
        params = edited_parameters(loaded, KEConfig(layers=layers))
        absolute = [layer % count for layer in layers]
        variants = [False, True] if args.precondition else [False]
        for precondition, at_subject in [(p, s) for s in ([False, True] if args.subject else [False])
                                         for p in variants]:
            preconditioners = {}
            if precondition:
                for layer in absolute:
                    cfg = ROMEConfig(layer=layer)
                    cov = covariance(loaded, mlp_projection(loaded.model, layer), cfg, settings.home).double()
                    preconditioners[layer] = torch.linalg.inv(regularised(cov, cfg.ridge)).float()
            start = time.time()
            r = measure(loaded, predictor, params, absolute, cases, preconditioners, args.neighbours, at_subject)
            print(f"{spec:<10}{'yes' if precondition else 'no':>6}{'subject' if at_subject else 'all':>9}"
                  f"{r['edited']:>8.2f}{r['paraphrase']:>12.2f}{r['retain']:>8.2f}{r['median_step']:>13.2g}"
                  f"{time.time() - start:>6.0f}", flush=True)


if __name__ == "__main__":
    main()
