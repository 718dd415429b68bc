"""Reliability diagrams: accuracy per confidence bin against the diagonal, for variants x test sets.

Bins of all seeds of a variant are pooled (counts summed, means weighted by count), so a panel
shows the variant, not one lucky seed; the ECE printed is the mean ECE over those seeds.
"""

from __future__ import annotations

import numpy as np

from analysis.load import Results
from analysis.style import colour, plt, styled
from harness.core.record import RunRecord


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


def _panel(axis, bins: dict[str, np.ndarray], ece: float, title: str) -> None:
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


@styled
def reliability_grid(results: Results, sets: list[str] | None = None) -> plt.Figure:
    """Rows: variants; columns: test sets (ID first)."""
    trials = results.trials
    variants = list(dict.fromkeys(trials["variant"]))
    first = results.records[trials["trial"].iloc[0]]
    names = sets or [name for name in first.tests if name != "val"]
    figure, axes = plt.subplots(len(variants), len(names), figsize=(1.25 * len(names) + 0.6, 1.25 * len(variants) + 0.5),
                                squeeze=False, sharex=True, sharey=True)
    ece = results.sets.groupby(["variant", "set"])["ece"].mean()
    for row, variant in enumerate(variants):
        records = [results.records[t] for t in trials.loc[trials["variant"] == variant, "trial"]]
        for col, name in enumerate(names):
            _panel(axes[row, col], pooled_bins(records, name), ece[(variant, name)], name if row == 0 else "")
        axes[row, 0].set_ylabel(f"{variant}\naccuracy", fontsize=7)
    for axis in axes[-1]:
        axis.set_xlabel("confidence")
    handles, labels = axes[0, 0].get_legend_handles_labels()
    figure.legend(handles, labels, loc="upper center", ncol=3, frameon=False, bbox_to_anchor=(0.5, 1.02))
    figure.tight_layout(rect=(0, 0, 1, 0.97))
    return figure
