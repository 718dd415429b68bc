"""Classification and calibration metrics, always over a whole dataset (never averaged over batches).

The CaRot authors' code averages ECE over batches of class-sorted data, which biases it upward;
here predictions are accumulated first and every metric is computed once.
"""

from __future__ import annotations

import torch


def accuracy(probs: torch.Tensor, labels: torch.Tensor) -> float:
    return (probs.argmax(dim=1) == labels).double().mean().item()


def mean_confidence(probs: torch.Tensor) -> float:
    """Mean top-label probability: compare with accuracy to read over- or under-confidence."""
    return probs.max(dim=1).values.double().mean().item()


def expected_calibration_error(probs: torch.Tensor, labels: torch.Tensor, n_bins: int = 15) -> float:
    """Top-label ECE with ``n_bins`` equal-width bins, L1: sum_b |acc_b - conf_b| * n_b / N.

    Bins are [k/n, (k+1)/n) with a confidence of exactly 1 in the last bin, as torchmetrics does.
    """
    confidence, predicted = probs.double().max(dim=1)
    correct = (predicted == labels).double()
    bins = torch.clamp((confidence * n_bins).floor().long(), max=n_bins - 1)
    count = torch.zeros(n_bins, dtype=torch.float64).index_add_(0, bins, torch.ones_like(confidence))
    conf_sum = torch.zeros(n_bins, dtype=torch.float64).index_add_(0, bins, confidence)
    correct_sum = torch.zeros(n_bins, dtype=torch.float64).index_add_(0, bins, correct)
    return ((correct_sum - conf_sum).abs().sum() / len(labels)).item()
