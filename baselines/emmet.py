"""EMMET (Gupta et al., EMNLP Findings 2024): ROME's equality constraint for a whole batch — each edited key must map
exactly to its target, everything else moves as little as C allows:

    ΔW = R (Kᵀ C⁻¹ K + ρ I)⁻¹ Kᵀ C⁻¹,   C = α C₀

With ρ = 0, ΔW K = R exactly; ρ > 0 (only for n > 1) keeps near-duplicate keys (one subject, two relations) from
making the system ill-conditioned. The core (targets, keys, spreading over layers) is `baselines.locate`."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from baselines.locate import LocateConfig, LocateEditor
from baselines.statistics import regularised


@dataclass
class EMMETConfig(LocateConfig):
    """mom2_weight α and emmet_lambda λ_e: C = αC₀ and ρ = λ_e, so the ridge on KᵀC₀⁻¹K is α·λ_e in effect (the
    repo's GPT-J and Llama-2 configs: 1 × 0.1).
    ridge_floor: C + ridge_floor·mean(diag C)·I, so C⁻¹ exists where the corpus never excited a direction (ROME's
    ridge, 0.01)."""

    mom2_weight: float = 1.0
    emmet_lambda: float = 0.1
    ridge_floor: float = 0.01


def emmet_solve(keys: torch.Tensor, residual: torch.Tensor, cov: torch.Tensor, ridge: float) -> torch.Tensor:
    """ΔW = R (KᵀC⁻¹K + ρI)⁻¹ KᵀC⁻¹ for K (f × n), R (d × n), C (f × f); float64. ρ applies only for n > 1."""
    cinv_keys = torch.linalg.solve(cov, keys)  # C⁻¹K (f × n)
    gram = keys.T @ cinv_keys  # KᵀC⁻¹K (n × n)
    if keys.shape[1] > 1:
        gram = gram + ridge * torch.eye(gram.shape[0], dtype=gram.dtype, device=gram.device)
    weights = torch.linalg.lstsq(gram, cinv_keys.T).solution  # (KᵀC⁻¹K + ρI)⁻¹ KᵀC⁻¹, least squares if singular
    return residual @ weights


class EMMETEditor(LocateEditor):
    name = "emmet"
    config_class = EMMETConfig

    def solve(self, layer: int, keys: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        cov = self.cfg.mom2_weight * regularised(self.covariances[layer].double(), self.cfg.ridge_floor)
        return emmet_solve(keys, residual, cov, self.cfg.emmet_lambda)  # with C = αC₀ the ridge is in effect α·λ_e
