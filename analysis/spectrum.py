"""Singular-value evidence: is OOD error / calibration tied to sigma_min and to ID calibration, as the paper's bound says?"""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy import stats

from analysis.style import COLUMN_WIDTH, PALETTE, colour, figure_legend, plt

PAIRS = (  # (x, y, x label, y label); ECE and error are plotted in %
    ("sigma_min", "ood_ece", r"$\sigma_{\min}$ of ID embedding covariance", "OOD ECE (%)"),
    ("sigma_min", "ood_error", r"$\sigma_{\min}$ of ID embedding covariance", "OOD error (%)"),
    ("id_ece", "ood_ece", "ID ECE (%)", "OOD ECE (%)"),
    ("id_ece", "ood_error", "ID ECE (%)", "OOD error (%)"),
)
_PERCENT = ("ood_ece", "ood_error", "id_ece")


def correlations(x: np.ndarray, y: np.ndarray) -> dict[str, float]:
    """Pearson and Spearman correlations and the least-squares line y = slope * x + intercept."""
    pearson = stats.pearsonr(x, y)
    spearman = stats.spearmanr(x, y)
    slope, intercept = np.polyfit(x, y, 1)
    return {"n": len(x), "pearson_r": float(pearson.statistic), "pearson_p": float(pearson.pvalue),
            "spearman_rho": float(spearman.statistic), "spearman_p": float(spearman.pvalue),
            "slope": float(slope), "intercept": float(intercept)}


def evidence_table(trials: pd.DataFrame) -> pd.DataFrame:
    """One row per (x, y) pair of PAIRS, over all trials."""
    data = trials.assign(ood_error=1 - trials["ood_acc"])
    rows = [{"x": x, "y": y, **correlations(data[x].to_numpy(float), data[y].to_numpy(float))} for x, y, _, _ in PAIRS]
    return pd.DataFrame(rows)


def evidence_figure(trials: pd.DataFrame) -> plt.Figure:
    """2x2 scatter of the PAIRS, coloured by variant (by method when there are many), fitted line, correlations."""
    data = trials.assign(ood_error=1 - trials["ood_acc"])
    data[list(_PERCENT)] = data[list(_PERCENT)] * 100
    by = "variant" if data["variant"].nunique() <= len(PALETTE) else "method"  # colours stay distinguishable
    methods = list(dict.fromkeys(data[by]))
    figure, axes = plt.subplots(2, 2, figsize=(2 * COLUMN_WIDTH, 4.6))
    for axis, (x, y, xlabel, ylabel) in zip(axes.flat, PAIRS):
        for index, method in enumerate(methods):
            part = data[data[by] == method]
            axis.scatter(part[x], part[y], s=14, color=colour(index), label=method, alpha=0.85, edgecolor="none")
        fit = correlations(data[x].to_numpy(float), data[y].to_numpy(float))
        grid = np.linspace(data[x].min(), data[x].max(), 50)
        axis.plot(grid, fit["slope"] * grid + fit["intercept"], color="0.3", lw=1, ls="--")
        axis.set(xlabel=xlabel, ylabel=ylabel,
                 title=f"Pearson r = {fit['pearson_r']:.2f}, Spearman ρ = {fit['spearman_rho']:.2f}, n = {fit['n']}")
        if x == "sigma_min":
            axis.ticklabel_format(axis="x", style="sci", scilimits=(-3, 3))
    handles, labels = axes.flat[0].get_legend_handles_labels()
    figure_legend(figure, handles, labels)
    return figure


def before_after_figure(trials: pd.DataFrame) -> plt.Figure:
    """sigma_min of the pre-trained vs the fine-tuned model, mean ± std per variant."""
    grouped = trials.groupby("variant", sort=False)[["sigma_min_pretrained", "sigma_min"]]
    mean, std = grouped.mean(), grouped.std().fillna(0)
    positions = np.arange(len(mean))
    figure, axis = plt.subplots(figsize=(COLUMN_WIDTH, 2.4))
    for offset, column, label, fill in ((-0.2, "sigma_min_pretrained", "pre-trained", "0.7"), (0.2, "sigma_min", "fine-tuned", colour(0))):
        axis.bar(positions + offset, mean[column], 0.4, yerr=std[column], color=fill, label=label, capsize=2)
    axis.set_xticks(positions, mean.index, rotation=30, ha="right")
    axis.set_ylabel(r"$\sigma_{\min}$ (ID embeddings)")
    axis.ticklabel_format(axis="y", style="sci", scilimits=(-3, 3))
    axis.legend(frameon=False, ncol=2, loc="lower center", bbox_to_anchor=(0.5, 1.02))
    figure.tight_layout()
    return figure
