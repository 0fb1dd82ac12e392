"""MEND's starting step size: what an untrained MEND network (standardised gradient factors, identity MLP) does to
an edit's target and to a neighbour prompt for a range of step sizes η, on the default model.

The network's statistics are first gathered on `--stats` training edits (as the first training steps would). Then,
per η, each of `--cases` other edits is applied alone; printed: the mean target NLL before/after on the edit prompt,
how often the target's first token becomes the top prediction (edit success, as `lte train`'s dev curve), and how
often the base model's greedy first answer token to the case's first neighbour prompt survives (retain).
`MENDConfig.lr_init` is chosen from this table (results/mend-step.txt).

    python benchmarks/mend_step.py --data ../shared/datasets/counterfact_easyedit/counterfact-train.json
"""

from __future__ import annotations

import argparse

import torch

from baselines.common import batch_logits, gradient_factors, pair_batch
from baselines.mend import MENDConfig, build_network, edited_parameters
from baselines.training import answer_logprobs, base_answers
from lte.core.datasets import load_cases
from lte.core.editor import UneditedEditor
from lte.core.models import load_model
from lte.core.settings import Settings


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True)
    parser.add_argument("--stats", type=int, default=20)
    parser.add_argument("--cases", type=int, default=20)
    parser.add_argument("--steps", type=float, nargs="+", default=[1e-5, 3e-5, 1e-4, 3e-4, 1e-3, 3e-3])
    args = parser.parse_args()
    settings = Settings.from_env()
    loaded = load_model(settings.model, settings.home)
    cfg = MENDConfig()
    params = edited_parameters(loaded, cfg)
    network = build_network(loaded, cfg)
    cases = load_cases(args.data)
    network.train()
    with torch.no_grad():
        for case in cases[: args.stats]:
            factors = gradient_factors(loaded, [(case.edit.prompt, case.edit.target_new)], params)
            for name, (u, delta) in factors.items():
                key, _ = network.slots[name]
                network.nets[key].norm.update(torch.cat([u, delta], -1).float())
    network.eval()
    predictor = UneditedEditor(loaded)
    held = cases[args.stats: args.stats + args.cases]
    print(f"{'eta':>8} {'nll before':>10} {'nll after':>10} {'success':>8} {'retain':>7} {'|dW|/|W|':>9}")
    for eta in args.steps:
        network.log_lr.data.fill_(float(torch.tensor(eta).log()))
        before, after, success, retain, ratio = [], [], [], [], []
        for case in held:
            edit = case.edit
            with torch.no_grad():
                updates = network(gradient_factors(loaded, [(edit.prompt, edit.target_new)], params))
                overrides = {n: params[n] + d for n, d in updates.items()}
                batch = pair_batch(loaded, [(edit.prompt, edit.target_new)])
                base, edited = batch_logits(loaded, batch), batch_logits(loaded, batch, overrides)
                before.append(-batch.target_logprobs(base).item())
                after.append(-batch.target_logprobs(edited).item())
                success.append(float(edited[0, batch.target_positions[0][0]].argmax() == batch.target_tokens[0][0]))
                texts, answers = base_answers(predictor, [p.prompt for p in case.locality[:1]], 1)
                if texts:
                    retain.append(float(answer_logprobs(loaded, texts, answers).argmax(-1).eq(
                        answer_logprobs(loaded, texts, answers, overrides).argmax(-1)).all()))
                ratio.append(sum(d.norm() for d in updates.values()).item()
                             / sum(params[n].norm() for n in updates).item())
        mean = lambda xs: sum(xs) / max(len(xs), 1)  # noqa: E731
        print(f"{eta:>8.0e} {mean(before):>10.3f} {mean(after):>10.3f} {mean(success):>8.2f} {mean(retain):>7.2f} "
              f"{mean(ratio):>9.2e}")


if __name__ == "__main__":
    main()
