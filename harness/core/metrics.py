"""Classification and calibration metrics, always over a whole dataset (never averaged over batches),
and the spectrum of the ID embedding covariance.

The CaRot authors' code averages ECE over batches of class-sorted data, which biases it upward;
here predictions are accumulated first and every metric is computed once. ``probs`` is an
``[N, C]`` tensor of probabilities and ``labels`` an ``[N]`` tensor of class indices.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from scipy import stats


def accuracy(probs: torch.Tensor, labels: torch.Tensor) -> float:
    return (probs.argmax(dim=1) == labels).double().mean().item()


def mean_confidence(probs: torch.Tensor) -> float:
    """Mean top-label probability: compare with accuracy to read over- or under-confidence."""
    return probs.max(dim=1).values.double().mean().item()


def _top_label(probs: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    confidence, predicted = probs.double().max(dim=1)
    return confidence, (predicted == labels).double()


def _equal_width_bins(confidence: torch.Tensor, n_bins: int) -> torch.Tensor:
    """Bin k holds [k/n, (k+1)/n); a confidence of exactly 1 goes to the last bin (as torchmetrics)."""
    return torch.clamp((confidence * n_bins).floor().long(), 0, n_bins - 1)


def _bin_sums(bins: torch.Tensor, confidence: torch.Tensor, correct: torch.Tensor, n_bins: int):
    zeros = torch.zeros(n_bins, dtype=torch.float64)
    count = zeros.index_add(0, bins, torch.ones_like(confidence))
    return count, zeros.index_add(0, bins, confidence), zeros.index_add(0, bins, correct)


def _calibration_gaps(bins: torch.Tensor, confidence: torch.Tensor, correct: torch.Tensor, n_bins: int):
    """Per bin: |accuracy - confidence| and the bin's share of samples (empty bins have share 0)."""
    count, conf_sum, correct_sum = _bin_sums(bins, confidence, correct, n_bins)
    gap = (correct_sum - conf_sum).abs() / count.clamp(min=1)
    return gap, count / len(confidence)


def expected_calibration_error(probs: torch.Tensor, labels: torch.Tensor, n_bins: int = 15) -> float:
    """Top-label ECE, ``n_bins`` equal-width bins, L1: sum_b |acc_b - conf_b| * n_b / N."""
    confidence, correct = _top_label(probs, labels)
    gap, share = _calibration_gaps(_equal_width_bins(confidence, n_bins), confidence, correct, n_bins)
    return (gap * share).sum().item()


def maximum_calibration_error(probs: torch.Tensor, labels: torch.Tensor, n_bins: int = 15) -> float:
    """Largest |acc_b - conf_b| over the non-empty equal-width bins."""
    confidence, correct = _top_label(probs, labels)
    gap, share = _calibration_gaps(_equal_width_bins(confidence, n_bins), confidence, correct, n_bins)
    return gap[share > 0].max().item()


def adaptive_calibration_error(probs: torch.Tensor, labels: torch.Tensor, n_bins: int = 15) -> float:
    """Top-label ECE over equal-mass bins: samples sorted by confidence, split into ``n_bins`` near-equal runs."""
    confidence, correct = _top_label(probs, labels)
    order = torch.argsort(confidence, stable=True)
    bins = torch.empty_like(order)
    bins[order] = torch.arange(len(order)) * n_bins // len(order)
    gap, share = _calibration_gaps(bins, confidence, correct, n_bins)
    return (gap * share).sum().item()


def classwise_calibration_error(probs: torch.Tensor, labels: torch.Tensor, n_bins: int = 15) -> float:
    """Mean over classes k of the ECE of p_k against the event y = k (Kull et al., 2019), equal-width bins."""
    probs = probs.double()
    total = 0.0
    for k in range(probs.shape[1]):
        confidence, event = probs[:, k], (labels == k).double()
        gap, share = _calibration_gaps(_equal_width_bins(confidence, n_bins), confidence, event, n_bins)
        total += (gap * share).sum().item()
    return total / probs.shape[1]


def negative_log_likelihood(probs: torch.Tensor, labels: torch.Tensor) -> float:
    """Mean -log p(label); probabilities are floored at 1e-12."""
    picked = probs.double().gather(1, labels.view(-1, 1)).squeeze(1)
    return -picked.clamp(min=1e-12).log().mean().item()


def brier_score(probs: torch.Tensor, labels: torch.Tensor) -> float:
    """Mean over samples of sum_k (p_k - 1[y = k])^2 (the multi-class Brier score, range [0, 2])."""
    one_hot = torch.nn.functional.one_hot(labels, probs.shape[1]).double()
    return ((probs.double() - one_hot) ** 2).sum(dim=1).mean().item()


def reliability_bins(probs: torch.Tensor, labels: torch.Tensor, n_bins: int = 15) -> dict[str, list]:
    """Per equal-width bin: its edges, sample count, mean confidence and accuracy (None when empty)."""
    confidence, correct = _top_label(probs, labels)
    count, conf_sum, correct_sum = _bin_sums(_equal_width_bins(confidence, n_bins), confidence, correct, n_bins)
    mean = lambda sums: [s / c if c else None for s, c in zip(sums.tolist(), count.tolist())]  # noqa: E731
    return {
        "lower": [k / n_bins for k in range(n_bins)],
        "upper": [(k + 1) / n_bins for k in range(n_bins)],
        "count": [int(c) for c in count.tolist()],
        "confidence": mean(conf_sum),
        "accuracy": mean(correct_sum),
    }


def classification_report(logits: torch.Tensor, labels: torch.Tensor, n_bins: int = 15) -> dict:
    """Every metric of one test set from its logits, plus the reliability bins; what record.json stores."""
    probs = logits.double().softmax(dim=1)
    return {
        "acc": accuracy(probs, labels),
        "ece": expected_calibration_error(probs, labels, n_bins),
        "mce": maximum_calibration_error(probs, labels, n_bins),
        "adaptive_ece": adaptive_calibration_error(probs, labels, n_bins),
        "classwise_ece": classwise_calibration_error(probs, labels, n_bins),
        "nll": negative_log_likelihood(probs, labels),
        "brier": brier_score(probs, labels),
        "confidence": mean_confidence(probs),
        "n": len(labels),
        "reliability": reliability_bins(probs, labels, n_bins),
    }


def _ece_of_rows(confidence: np.ndarray, correct: np.ndarray, n_bins: int) -> np.ndarray:
    """ECE of every row of ``[..., N]`` arrays at once: sum over bins of |sum(correct - confidence)| / N."""
    n = confidence.shape[-1]
    confidence, correct = confidence.reshape(-1, n), correct.reshape(-1, n)
    rows = len(confidence)
    bins = np.clip(np.floor(confidence * n_bins).astype(np.int64), 0, n_bins - 1) + n_bins * np.arange(rows)[:, None]
    gaps = np.bincount(bins.ravel(), weights=(correct - confidence).ravel(), minlength=rows * n_bins)
    return np.abs(gaps.reshape(rows, n_bins)).sum(axis=1) / n


@dataclass(frozen=True)
class CalibrationUncertainty:
    """How far one set's ECE can be trusted.

    ``ci``: 95% percentile-bootstrap interval of the ECE over the set's images; ``resamples``: the
    bootstrap distribution (to combine sets). ``floor``: the calibration noise floor, the expected
    ECE of a perfectly calibrated model with the same confidences (each prediction correct with
    probability equal to its confidence), and ``floor_sd`` its spread: an ECE near the floor is
    indistinguishable from perfect calibration at this set size.
    """

    ci: tuple[float, float]
    resamples: np.ndarray
    floor: float
    floor_sd: float

    def fields(self) -> dict[str, float | list[float]]:
        """What a set's record stores."""
        return {"ece_ci": list(self.ci), "ece_floor": self.floor, "ece_floor_sd": self.floor_sd}


def ece_bootstrap(probs: torch.Tensor, labels: torch.Tensor, n_bins: int = 15, resamples: int = 1000,
                  seed: int = 0) -> tuple[tuple[float, float], np.ndarray]:
    """95% percentile-bootstrap interval of the top-label ECE over samples, and the bootstrap distribution.

    Percentile rather than BCa: BCa's jackknife would cost one ECE per sample. The ECE estimator is
    biased upward at small n, and so is this interval; compare it with the noise floor.
    """
    confidence, correct = (x.numpy() for x in _top_label(probs, labels))
    result = stats.bootstrap((confidence, correct), lambda c, k, axis: _ece_of_rows(c, k, n_bins).reshape(c.shape[:-1]),
                             n_resamples=resamples, paired=True, vectorized=True, method="percentile",
                             confidence_level=0.95, batch=100, random_state=np.random.default_rng(seed))
    interval = result.confidence_interval
    return (float(interval.low), float(interval.high)), result.bootstrap_distribution


def calibration_noise_floor(probs: torch.Tensor, n_bins: int = 15, draws: int = 300, seed: int = 0) -> tuple[float, float]:
    """Mean and std of the ECE of a perfectly calibrated model with these confidences, over ``draws`` label draws."""
    confidence = probs.double().max(dim=1).values.numpy()
    rng = np.random.default_rng(seed)
    correct = (rng.random((draws, len(confidence))) < confidence).astype(np.float64)
    eces = _ece_of_rows(np.broadcast_to(confidence, correct.shape), correct, n_bins)
    return float(eces.mean()), float(eces.std(ddof=1))


def calibration_uncertainty(probs: torch.Tensor, labels: torch.Tensor, n_bins: int = 15, resamples: int = 1000,
                            draws: int = 300, seed: int = 0) -> CalibrationUncertainty:
    """The bootstrap interval of the ECE and the calibration noise floor of one set."""
    ci, distribution = ece_bootstrap(probs, labels, n_bins, resamples, seed)
    floor, floor_sd = calibration_noise_floor(probs, n_bins, draws, seed)
    return CalibrationUncertainty(ci=ci, resamples=distribution, floor=floor, floor_sd=floor_sd)


def embedding_spectrum(features: torch.Tensor) -> dict[str, float]:
    """Singular values of the covariance of ``features`` [N, D] (centred; 1/(N-1) normalisation).

    The caller decides what goes in: the harness passes L2-normalised ID image embeddings, as
    CLIP's features are; the paper's sigma_min is the smallest of these singular values.
    ``sigma_min_rel`` = D * sigma_min / trace, sigma_min over the mean eigenvalue: scale-free (a model
    whose features spread more overall does not get a larger value for it) and, unlike the
    correlation matrix's smallest eigenvalue, independent of the embedding's basis.
    """
    x = features.double()
    x = x - x.mean(dim=0, keepdim=True)
    covariance = x.T @ x / (len(x) - 1)
    singular = torch.linalg.svdvals(covariance)
    p = singular / singular.sum()
    entropy = -(p[p > 0] * p[p > 0].log()).sum().item()
    return {
        "sigma_min": singular[-1].item(),
        "sigma_min_rel": (singular[-1] * len(singular) / singular.sum()).item(),
        "sigma_max": singular[0].item(),
        "condition_number": (singular[0] / singular[-1]).item() if singular[-1] > 0 else math.inf,
        "effective_rank": math.exp(entropy),
        "singular_values": singular.tolist(),
    }
