"""Method comparisons: headline bars, the ID-vs-OOD trade-off with WiSE-FT curves, and a Pareto front."""

from __future__ import annotations

import numpy as np
import pandas as pd

from analysis.load import Results
from analysis.style import COLUMN_WIDTH, figure_legend, plt, styled
from analysis.tables import t_halfwidth
from harness.core.plots import colour


@styled
def headline_figure(trials: pd.DataFrame) -> plt.Figure:
    """Grouped bars per variant: ID and OOD accuracy (left), ID and OOD ECE (right), error bars = 95% t-intervals over
    seeds (none for a single trial); the ECE panel marks each role's mean noise floor as a dashed/dotted line: an ECE
    below it cannot be told apart from perfect calibration."""
    columns = ["id_acc", "ood_acc", "id_ece", "ood_ece"]
    grouped = trials.groupby("variant", sort=False)[columns]
    mean = grouped.mean() * 100
    half = grouped.agg(lambda values: t_halfwidth(values.dropna().to_numpy())) * 100  # NaN: one trial, no bar
    positions = np.arange(len(mean))
    figure, axes = plt.subplots(1, 2, figsize=(2 * COLUMN_WIDTH, 2.6))
    for axis, kind, label in ((axes[0], "acc", "accuracy (%)"), (axes[1], "ece", "ECE (%)")):
        for offset, role, index in ((-0.2, "id", 0), (0.2, "ood", 1)):
            column = f"{role}_{kind}"
            axis.bar(positions + offset, mean[column], 0.4, yerr=half[column], capsize=2, color=colour(index),
                     label=role.upper())
        axis.set_xticks(positions, mean.index, rotation=30, ha="right")
        axis.set_ylabel(label)
    for role, index, dashes in (("id", 0, "--"), ("ood", 1, ":")):
        floor = 100 * trials[f"{role}_ece_floor"].mean()
        if np.isfinite(floor):
            axes[1].axhline(floor, color=colour(index), ls=dashes, lw=1.0, label=f"{role.upper()} noise floor")
    axes[0].legend(frameon=False, fontsize=6)
    axes[1].legend(frameon=False, fontsize=6, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    axes[1].set_ylim(bottom=0)  # ECE is never negative, however wide an interval
    lowest = (mean[["id_acc", "ood_acc"]] - half[["id_acc", "ood_acc"]].fillna(0)).min().min()
    axes[0].set_ylim(max(0, 5 * np.floor((lowest - 5) / 5)), 100)  # the axis starts above 0: stated by the tick labels
    figure.tight_layout()
    return figure


@styled
def tradeoff_figure(results: Results) -> plt.Figure:
    """ID vs OOD accuracy and ECE, one point per variant (mean), WiSE-FT curves where recorded."""
    trials = results.trials
    figure, axes = plt.subplots(1, 2, figsize=(2 * COLUMN_WIDTH, 2.8))
    for index, (variant, group) in enumerate(trials.groupby("variant", sort=False)):
        for axis, kind in zip(axes, ("acc", "ece")):
            axis.scatter(100 * group[f"id_{kind}"].mean(), 100 * group[f"ood_{kind}"].mean(), s=22,
                         color=colour(index), label=variant, zorder=3)
            curves = [results.records[t].wise_ft for t in group["trial"]]
            if curves and all(curves):
                alphas = [point.alpha for point in curves[0]]
                id_values = np.mean([[p.summary[f"id_{kind}"] for p in c] for c in curves], axis=0) * 100
                ood_values = np.mean([[p.summary[f"ood_{kind}"] for p in c] for c in curves], axis=0) * 100
                axis.plot(id_values, ood_values, color=colour(index), lw=1, marker=".", ms=4, alpha=0.8)
                if alphas[0] == 0:
                    axis.annotate("α=0", (id_values[0], ood_values[0]), fontsize=6)
    axes[0].set(xlabel="ID accuracy (%)", ylabel="OOD accuracy (%)")
    axes[1].set(xlabel="ID ECE (%)", ylabel="OOD ECE (%)")
    handles, labels = axes[0].get_legend_handles_labels()
    figure_legend(figure, handles, labels)
    return figure


def pareto_mask(accuracy: np.ndarray, ece: np.ndarray) -> np.ndarray:
    """True where no other point has accuracy >= and ECE <= with one strictly better."""
    mask = np.ones(len(accuracy), bool)
    for i in range(len(accuracy)):
        better = (accuracy >= accuracy[i]) & (ece <= ece[i]) & ((accuracy > accuracy[i]) | (ece < ece[i]))
        mask[i] = not better.any()
    return mask


@styled
def pareto_figure(trials: pd.DataFrame) -> plt.Figure:
    """Trials on ID validation accuracy vs ECE (the objectives a multi-objective study optimises), front highlighted."""
    accuracy, ece = trials["val_acc"].to_numpy() * 100, trials["val_ece"].to_numpy() * 100
    front = pareto_mask(accuracy, ece)
    figure, axis = plt.subplots(figsize=(COLUMN_WIDTH, 2.6))
    axis.scatter(ece[~front], accuracy[~front], s=12, color="0.65", label="trials")
    order = np.argsort(ece[front])
    axis.plot(ece[front][order], accuracy[front][order], marker="o", ms=4, color=colour(3), label="Pareto front")
    axis.set(xlabel="ID validation ECE (%)", ylabel="ID validation accuracy (%)")
    axis.legend(frameon=False)
    figure.tight_layout()
    return figure
