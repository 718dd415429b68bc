"""Sensitivity of CaRot to lambda_SD, label smoothing and the EMA period (from sensitivity sweeps)."""

from __future__ import annotations

import numpy as np
import pandas as pd

from analysis.style import COLUMN_WIDTH, colour, plt

SD, LS, PERIOD = "loss.sd_weight", "loss.label_smoothing", "ema.period"


def heatmap_figure(trials: pd.DataFrame) -> plt.Figure:
    """Mean OOD accuracy and OOD ECE over lambda_SD x label smoothing (averaged over seeds and other keys)."""
    figure, axes = plt.subplots(1, 2, figsize=(2 * COLUMN_WIDTH, 2.6))
    for axis, (metric, title, cmap) in zip(axes, (("ood_acc", "OOD accuracy (%)", "viridis"), ("ood_ece", "OOD ECE (%)", "viridis_r"))):
        grid = trials.pivot_table(index=SD, columns=LS, values=metric, aggfunc="mean") * 100
        image = axis.imshow(grid.to_numpy(), cmap=cmap, aspect="auto", origin="lower")
        axis.set_xticks(range(grid.shape[1]), [f"{v:g}" for v in grid.columns])
        axis.set_yticks(range(grid.shape[0]), [f"{v:g}" for v in grid.index])
        axis.set(xlabel="label smoothing ε", ylabel=r"$\lambda_{SD}$", title=title)
        for (i, j), value in np.ndenumerate(grid.to_numpy()):
            if np.isfinite(value):
                red, green, blue, _ = image.cmap(image.norm(value))
                dark = 0.299 * red + 0.587 * green + 0.114 * blue < 0.5
                axis.text(j, i, f"{value:.1f}", ha="center", va="center", fontsize=6, color="white" if dark else "black")
        figure.colorbar(image, ax=axis, fraction=0.046, pad=0.04)
    figure.tight_layout()
    return figure


def period_figure(trials: pd.DataFrame) -> plt.Figure:
    """OOD accuracy and ECE against the EMA period, mean ± std over the other keys and seeds."""
    grouped = trials.groupby(PERIOD)[["ood_acc", "ood_ece", "id_acc", "id_ece"]]
    mean, std = grouped.mean() * 100, grouped.std().fillna(0) * 100
    figure, axes = plt.subplots(1, 2, figsize=(2 * COLUMN_WIDTH, 2.2))
    for axis, kind in zip(axes, ("acc", "ece")):
        for index, role in enumerate(("id", "ood")):
            column = f"{role}_{kind}"
            axis.errorbar(mean.index, mean[column], yerr=std[column], marker="o", ms=3, capsize=2,
                          color=colour(index), label=role.upper())
        axis.set(xscale="log", xlabel="EMA period (optimizer steps)", ylabel=f"{'accuracy' if kind == 'acc' else 'ECE'} (%)")
        axis.set_xticks(mean.index, [f"{p:g}" for p in mean.index])
        axis.minorticks_off()
        axis.legend(frameon=False)
    figure.tight_layout()
    return figure
