"""Post-hoc methods applied to any trained result: temperature scaling and WiSE-FT weight interpolation."""

from __future__ import annotations

import math

import torch
from scipy.optimize import minimize_scalar

# Search range for the temperature, wide enough for any sane model (logits / T).
_LOG_T_BOUNDS = (math.log(0.02), math.log(50.0))


def fit_temperature(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """The T > 0 minimising NLL(logits / T) on held-out data (Guo et al., 2017); a 1-D bounded search on log T."""
    logits, labels = logits.double(), labels.long()

    def nll(log_t: float) -> float:
        return torch.nn.functional.cross_entropy(logits / math.exp(log_t), labels).item()

    result = minimize_scalar(nll, bounds=_LOG_T_BOUNDS, method="bounded", options={"xatol": 1e-6})
    return math.exp(result.x)


def interpolate_weights(pretrained: dict[str, torch.Tensor], finetuned: dict[str, torch.Tensor], alpha: float) -> dict[str, torch.Tensor]:
    """WiSE-FT (Wortsman et al., 2022): (1 - alpha) * theta_0 + alpha * theta_ft for floating tensors."""
    if pretrained.keys() != finetuned.keys():
        raise ValueError("WiSE-FT needs two state_dicts of the same architecture")
    return {
        name: torch.lerp(pretrained[name], value, alpha) if value.is_floating_point() else value.clone()
        for name, value in finetuned.items()
    }
