"""Reliability diagrams: accuracy per confidence bin against the diagonal, for variants x test sets.

Bins of all seeds of a variant are pooled (counts summed, means weighted by count), so a panel
shows the variant, not one lucky seed; the ECE printed is the mean ECE over those seeds.
"""

from __future__ import annotations

from analysis.load import Results
from analysis.style import plt, styled
from harness.core.plots import draw_reliability, pooled_bins


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
            draw_reliability(axes[row, col], pooled_bins(records, name), ece[(variant, name)], name if row == 0 else "")
        axes[row, 0].set_ylabel(f"{variant}\naccuracy", fontsize=7)
    for axis in axes[-1]:
        axis.set_xlabel("confidence")
    handles, labels = axes[0, 0].get_legend_handles_labels()
    figure.legend(handles, labels, loc="upper center", ncol=3, frameon=False, bbox_to_anchor=(0.5, 1.02))
    figure.tight_layout(rect=(0, 0, 1, 0.97))
    return figure
