"""FT-L: constrained fine-tuning of a few MLP output projections on the edit prompt → target (the baseline of the
ROME paper and EasyEdit). Adam on the chosen weights, loss on the target tokens only, and after every step each
weight is clipped back into [W₀ − ε, W₀ + ε] around its *original* value (the L∞ constraint), so a sequence of
edits can never drift further than ε per weight in total. The edit's own prompt is all it trains on: paraphrases
and neighbours are what the harness scores it on."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from baselines.common import WeightBackup, decoder_layers, frozen_parameters, mlp_projection, target_nll
from lte.core.editor import ModelEditor
from lte.core.errors import ConfigError
from lte.core.models import LoadedModel
from lte.core.schema import Edit
from lte.core.settings import Settings

log = logging.getLogger(__name__)


@dataclass
class FTConfig:
    """layers: the MLP output projections trained (4: ROME's layer on the default model, results/rome-layers.txt).
    steps, lr: Adam on those weights (EasyEdit's FT-L: 25 steps at 5e-4). norm_bound: ε of the L∞ constraint,
    |W − W₀| ≤ ε per weight (the reference's 5e-4). early_stop_nll: stop once the mean target NLL of the edits
    being applied is below it."""

    layers: tuple[int, ...] = (4,)
    steps: int = 25
    lr: float = 5e-4
    norm_bound: float = 5e-4
    early_stop_nll: float = 0.05


@dataclass
class FTLog:
    """One apply call: edits, update steps run, the last mean target NLL measured, ‖W − W₀‖∞ per layer."""

    edits: int
    steps: int
    nll: float
    drift: dict[int, float] = field(default_factory=dict)


def clip_to_bound(weights: Sequence[torch.nn.Parameter], originals: Sequence[torch.Tensor], bound: float) -> None:
    """W ← clamp(W, W₀ − ε, W₀ + ε), in place."""
    with torch.no_grad():
        for weight, original in zip(weights, originals):
            weight.copy_(torch.clamp(weight, original - bound, original + bound))


class FTEditor(ModelEditor):
    """Each apply call fine-tunes on that call's edits together (one case's in single and sequential modes, B in
    sequential-batch mode, all in batch mode); `restore` puts the weights back exactly."""

    name = "ft"
    config_class = FTConfig

    def __init__(self, loaded: LoadedModel, cfg: FTConfig | None = None, batch_size: int = 16):
        super().__init__(loaded, batch_size)
        self.cfg = cfg or FTConfig()
        count = len(decoder_layers(loaded.model))
        if not self.cfg.layers or any(not 0 <= layer < count for layer in self.cfg.layers):
            raise ConfigError(f"ft: layers {list(self.cfg.layers)} out of range for {count} layers")
        if self.cfg.norm_bound <= 0:
            raise ConfigError(f"ft: norm_bound must be positive, got {self.cfg.norm_bound}")
        self.weights = [mlp_projection(loaded.model, layer).weight for layer in self.cfg.layers]
        self.backup = WeightBackup()
        self.log: list[FTLog] = []

    @classmethod
    def from_config(cls, settings: Settings, loaded: LoadedModel, config: FTConfig | None = None,
                    batch_size: int = 16) -> FTEditor:
        return cls(loaded, config, batch_size)

    def apply(self, edits: Sequence[Edit]) -> None:
        if edits:
            self.log.append(self.fine_tune(list(edits)))

    def fine_tune(self, edits: list[Edit]) -> FTLog:
        for weight in self.weights:
            self.backup.save(weight)
        originals = [self.backup.original(weight) for weight in self.weights]
        optimizer = torch.optim.Adam(self.weights, lr=self.cfg.lr)
        steps, nll = 0, float("inf")
        with frozen_parameters(self.loaded.model, trainable=self.weights):
            while steps < self.cfg.steps:
                loss = target_nll(self.loaded, [(e.prompt, e.target_new) for e in edits],
                                  chunk=self.runner.batch_size)
                nll = loss.item()
                if nll < self.cfg.early_stop_nll:
                    break
                steps += 1
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                clip_to_bound(self.weights, originals, self.cfg.norm_bound)
        drift = {layer: float((w.detach() - o).abs().max())
                 for layer, w, o in zip(self.cfg.layers, self.weights, originals)}
        log.info("ft: %d edits, %d steps, target NLL %.3f, max |ΔW| %s", len(edits), steps, nll, drift)
        return FTLog(len(edits), steps, round(nll, 4), drift)

    def stats(self) -> dict:
        if not self.log:
            return {}
        return {"calls": len(self.log), "steps": round(sum(e.steps for e in self.log) / len(self.log), 2),
                "nll": round(sum(e.nll for e in self.log) / len(self.log), 4),
                "max_drift": max(max(e.drift.values()) for e in self.log)}

    def restore(self) -> None:
        self.backup.restore()
        self.log = []
