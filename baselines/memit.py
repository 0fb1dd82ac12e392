"""MEMIT (Meng et al., ICLR 2023): many edits at once, spread over several layers, each layer's projection updated
by least squares that also keeps the model's own keys in place:

    ΔW = R Kᵀ (λ C + K Kᵀ)⁻¹

C = E[kkᵀ] over text (per token), so λ reads as "what the model already knows weighs as much as λ average keys".
The core (targets, keys, spreading over layers) is `baselines.locate`."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from baselines.locate import LocateConfig, LocateEditor


@dataclass
class MEMITConfig(LocateConfig):
    """mom2_weight: λ above. One edit realises a share q/(1+q) of its residual per layer, q = kᵀC⁻¹k/λ; kᵀC⁻¹k
    grows with the key width (about 4,500-5,400 at layers 3-7 of the default model, f = 1,536), so the reference
    λ = 15,000 (GPT-J, f = 16,384) is scaled down to 1,500. Measured on one CounterFact-style edit (Space Needle →
    Goa): target log-prob −6.78 unedited, −5.23 at λ = 15,000, −1.48 at 1,500, −1.08 at 300
    (results/memit-lambda.txt); the sweep over layers and λ is to come."""

    mom2_weight: float = 1500.0


def memit_solve(keys: torch.Tensor, residual: torch.Tensor, cov: torch.Tensor, mom2_weight: float) -> torch.Tensor:
    """ΔW = R Kᵀ (λC + KKᵀ)⁻¹ for K (f × n), R (d × n), C (f × f); float64."""
    adjusted = torch.linalg.solve(mom2_weight * cov + keys @ keys.T, keys)  # (λC + KKᵀ)⁻¹ K, symmetric system
    return residual @ adjusted.T


class MEMITEditor(LocateEditor):
    name = "memit"
    config_class = MEMITConfig

    def solve(self, layer: int, keys: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        return memit_solve(keys, residual, self.covariances[layer].double(), self.cfg.mom2_weight)
