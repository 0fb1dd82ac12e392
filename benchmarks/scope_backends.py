"""What each way of running the scope model costs and whether it decides as the trained model does: PyTorch fp32
(the trained model), ONNX Runtime fp32 (what lte uses on the CPU) and PyTorch with int8 dynamic quantisation of its
linear layers, per-tensor and per-channel. For each: the median time of one question's decision (six pairs, as a
search with k = 3 hands it), and, on every paraphrase, locality and portability probe of the first N cases per
dataset scored against the case's own edit, the share of decisions at the threshold that differ from PyTorch fp32.

    python benchmarks/scope_backends.py --scope ALIGNED/scope [--n 150] [--datasets counterfact zsre wiki_counterfact]
"""

from __future__ import annotations

import argparse
import time
import warnings

import numpy as np

from lte.core.catalog import dataset_path
from lte.core.datasets import load_cases
from lte.core.settings import Settings
from retrieval.scope import ScopeModel

SIX = [("Which city is the Space Needle in?", "The Space Needle is located in the city of"),
       ("Which city is the Space Needle in?", "The Space Needle was designed by"),
       ("Which city is the Space Needle in?", "The Seattle Center Monorail is located in"),
       ("Which city is the Space Needle in?", "The CN Tower is located in the city of"),
       ("Which city is the Space Needle in?", "The official language of Seattle is"),
       ("Which city is the Space Needle in?", "Space Shuttle Discovery is owned by")]
SIX_SUBJECTS = ["Space Needle", "Space Needle", "Seattle Center Monorail", "CN Tower", "Seattle",
                "Space Shuttle Discovery"]


def probe_pairs(datasets: list[str], n: int) -> tuple[list[tuple[str, str]], list[str]]:
    """(question, edit prompt) for every probe of the first n cases of each dataset, and the edits' subjects."""
    pairs, subjects = [], []
    for name in datasets:
        _, path = dataset_path(name, Settings.from_env())
        for case in load_cases(path)[:n]:
            probes = (*case.paraphrases, *case.locality, *case.portability)
            pairs += [(p.prompt, case.edit.prompt) for p in probes]
            subjects += [case.edit.subject] * len(probes)
    return pairs, subjects


def decision_ms(model: ScopeModel, repeats: int = 60) -> float:
    for _ in range(5):
        model.probabilities(SIX, SIX_SUBJECTS)
    timings = []
    for _ in range(repeats):
        start = time.perf_counter()
        model.probabilities(SIX, SIX_SUBJECTS)
        timings.append(time.perf_counter() - start)
    return 1000 * float(np.median(timings))


def quantized(path: str, per_channel: bool) -> ScopeModel:
    import torch
    from torch.ao.quantization import per_channel_dynamic_qconfig, quantize_dynamic

    model = ScopeModel(path, backend="torch")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        spec = {torch.nn.Linear: per_channel_dynamic_qconfig} if per_channel else {torch.nn.Linear}
        quantize_dynamic(model.model, spec, dtype=torch.qint8, inplace=True)
    return model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scope", required=True, metavar="DIR", help="a scope model folder")
    parser.add_argument("--n", type=int, default=150, help="cases per dataset whose probes are scored")
    parser.add_argument("--datasets", nargs="+", default=["counterfact", "zsre", "wiki_counterfact"])
    args = parser.parse_args()
    pairs, subjects = probe_pairs(args.datasets, args.n)
    reference = ScopeModel(args.scope, backend="torch")
    threshold = reference.threshold
    expected = reference.probabilities(pairs, subjects) >= threshold
    ways = {"torch fp32": reference, "onnx fp32": ScopeModel(args.scope, backend="onnx"),
            "torch int8 per-tensor": quantized(args.scope, per_channel=False),
            "torch int8 per-channel": quantized(args.scope, per_channel=True)}
    print(f"{len(pairs)} probe pairs ({', '.join(args.datasets)}, {args.n} cases each); threshold {threshold}")
    print(f"{'backend':<24}{'6 pairs p50':>14}{'decisions changed':>20}")
    for name, model in ways.items():
        changed = float(np.mean((model.probabilities(pairs, subjects) >= threshold) != expected))
        print(f"{name:<24}{decision_ms(model):>11.1f} ms{changed:>20.4f}")


if __name__ == "__main__":
    main()
