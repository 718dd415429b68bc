"""Drawings of one trial's record that both W&B tracking and the analysis figures use: reliability and spectrum.

matplotlib is imported by the callers' figures only: nothing here sets a backend or global style.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from harness.core.record import RunRecord, Spectra

if TYPE_CHECKING:
    from matplotlib.axes import Axes

# Okabe & Ito (2008), "Color Universal Design": distinguishable under the common colour-vision deficiencies.
# Yellow last: it is the hardest to see on white.
PALETTE = ("#0072B2", "#E69F00", "#009E73", "#D55E00", "#CC79A7", "#56B4E9", "#000000", "#F0E442")


def colour(index: int) -> str:
    return PALETTE[index % len(PALETTE)]


def pooled_bins(records: list[RunRecord], set_name: str) -> dict[str, np.ndarray]:
    """Sum the reliability bins of ``set_name`` over ``records``: count, mean confidence and accuracy per bin."""
    count = conf = correct = None
    for record in records:
        bins = record.tests[set_name].reliability
        n = np.asarray(bins.count, float)
        c = np.asarray([v or 0.0 for v in bins.confidence]) * n
        a = np.asarray([v or 0.0 for v in bins.accuracy]) * n
        count, conf, correct = (n, c, a) if count is None else (count + n, conf + c, correct + a)
        edges = np.asarray(bins.lower + [bins.upper[-1]])
    with np.errstate(invalid="ignore", divide="ignore"):
        return {"edges": edges, "count": count, "confidence": conf / count, "accuracy": correct / count}


def draw_reliability(axis: Axes, bins: dict[str, np.ndarray], ece: float, title: str) -> None:
    """Accuracy per confidence bin against the diagonal, the gap hatched, the share of samples per bin below."""
    edges, count = bins["edges"], bins["count"]
    centres, width = (edges[:-1] + edges[1:]) / 2, np.diff(edges)
    filled = count > 0
    axis.bar(centres[filled], bins["accuracy"][filled], width[filled], color=colour(0), edgecolor="white", lw=0.4,
             label="accuracy")
    gap_low = np.minimum(bins["accuracy"], bins["confidence"])[filled]
    gap_high = np.maximum(bins["accuracy"], bins["confidence"])[filled]
    axis.bar(centres[filled], gap_high - gap_low, width[filled], bottom=gap_low, color=colour(3), alpha=0.35,
             edgecolor=colour(3), lw=0.4, hatch="///", label="gap")
    axis.plot([0, 1], [0, 1], color="0.4", lw=0.8, ls="--")
    share = count / count.sum()
    axis.bar(centres, share * 0.25, width, color="0.6", alpha=0.6, label="share of samples (×¼)")
    axis.set(xlim=(0, 1), ylim=(0, 1), title=title)
    axis.text(0.04, 0.9, f"ECE {100 * ece:.1f}", transform=axis.transAxes, fontsize=7)


def draw_spectrum(axis: Axes, spectra: Spectra) -> None:
    """The singular values of the ID embedding covariance, pre-trained against fine-tuned, largest first."""
    for index, (label, spectrum) in enumerate((("pre-trained", spectra.pretrained), ("fine-tuned", spectra.finetuned))):
        values = np.asarray(spectrum.singular_values)
        axis.semilogy(np.arange(1, len(values) + 1), np.clip(values, 1e-12, None), color=colour(index), label=label)
    axis.set(xlabel="index", ylabel="singular value", title="ID embedding covariance spectrum")
    axis.legend(frameon=False)
