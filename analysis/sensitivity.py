"""Sensitivity of CaRot to lambda_SD, label smoothing and the EMA period, one method at a time.

No figure pools different methods or different fixed settings into one point. The rule, per method:
a config key is *swept* for the method when its value varies among the method's trials. A figure
over some keys (the heatmap: lambda_SD x label smoothing; the curves: the EMA period) is drawn for
a method only when (1) those keys are swept for it, (2) every other key swept for it is one of
``SENSITIVITY_KEYS``, and (3) its swept keys form a full grid (every combination of their values
occurs), so that they vary independently rather than together as ablation rows do. A point then
averages the trials with that value: over seeds and over a balanced grid of the method's other
sensitivity keys, never over unrelated settings (an ablation's rows, a second sweep's budget).
Other methods are left out, with the reason.
"""

from __future__ import annotations

import math
import re
from typing import Any

import numpy as np
import pandas as pd

from analysis.style import COLUMN_WIDTH, plt, styled
from analysis.tables import t_halfwidth
from harness.core.plots import colour

SD, LS, PERIOD = "loss.sd_weight", "loss.label_smoothing", "ema.period"
SENSITIVITY_KEYS = (SD, LS, PERIOD)
HEATMAP_KEYS, PERIOD_KEYS = (SD, LS), (PERIOD,)


def swept_keys(trials: pd.DataFrame, config_keys: list[str]) -> dict[str, list[str]]:
    """Per method, the config keys whose value varies among that method's trials."""
    present = [key for key in config_keys if key in trials]
    return {method: [key for key in present if group[key].map(repr).nunique() > 1]
            for method, group in trials.groupby("method", sort=False)}


def _full_grid(group: pd.DataFrame, keys: list[str]) -> bool:
    values = group[keys].map(repr)
    return len(values.drop_duplicates()) == math.prod(values[key].nunique() for key in keys)


def eligible_methods(trials: pd.DataFrame, config_keys: list[str], keys: tuple[str, ...]) -> tuple[list[str], dict[str, str]]:
    """Methods whose figure over ``keys`` is sound (the module doc's three conditions), and for every other method why not."""
    eligible, reasons = [], {}
    for method, swept in swept_keys(trials, config_keys).items():
        missing = [key for key in keys if key not in swept]
        foreign = [key for key in swept if key not in SENSITIVITY_KEYS]
        if missing:
            reasons[method] = f"{', '.join(missing)} not swept" + (f" (swept: {', '.join(swept)})" if swept else "")
        elif foreign:
            reasons[method] = f"{', '.join(foreign)} also varies, so a point would pool different fixed settings"
        elif not _full_grid(trials[trials["method"] == method], swept):
            reasons[method] = (f"{', '.join(swept)} vary together, not as a grid (ablation rows or sampled points), "
                               "so a point would confound them")
        else:
            eligible.append(method)
    return eligible, reasons


def _number(value: Any) -> str:
    return f"{value:g}" if isinstance(value, (int, float)) and not isinstance(value, bool) else str(value)


def period_order(value: Any) -> tuple:
    """Sort key of EMA periods: step counts by size, then shares ("2%") by size, then anything else by text."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return (0, float(value), "")
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*%\s*", str(value))
    return (1, float(match.group(1)), "") if match else (2, 0.0, str(value))


@styled
def heatmap_figure(trials: pd.DataFrame, methods: list[str]) -> plt.Figure:
    """Per method (a row of panels): mean OOD accuracy and OOD ECE (%) over lambda_SD x label smoothing."""
    figure, axes = plt.subplots(len(methods), 2, figsize=(2 * COLUMN_WIDTH, 2.6 * len(methods)), squeeze=False)
    panels = (("ood_acc", "OOD accuracy (%)", "viridis"), ("ood_ece", "OOD ECE (%)", "viridis_r"))
    for row, method in zip(axes, methods):
        part = trials[trials["method"] == method]
        for axis, (metric, title, cmap) in zip(row, panels):
            grid = part.pivot_table(index=SD, columns=LS, values=metric, aggfunc="mean") * 100
            image = axis.imshow(grid.to_numpy(), cmap=cmap, aspect="auto", origin="lower")
            axis.set_xticks(range(grid.shape[1]), [_number(v) for v in grid.columns])
            axis.set_yticks(range(grid.shape[0]), [_number(v) for v in grid.index])
            axis.set(xlabel="label smoothing ε", ylabel=r"$\lambda_{SD}$", title=f"{method}: {title}")
            for (i, j), value in np.ndenumerate(grid.to_numpy()):
                if np.isfinite(value):
                    red, green, blue, _ = image.cmap(image.norm(value))
                    dark = 0.299 * red + 0.587 * green + 0.114 * blue < 0.5
                    axis.text(j, i, f"{value:.1f}", ha="center", va="center", fontsize=6, color="white" if dark else "black")
            figure.colorbar(image, ax=axis, fraction=0.046, pad=0.04)
    figure.tight_layout()
    return figure


@styled
def period_figure(trials: pd.DataFrame, methods: list[str]) -> plt.Figure:
    """Per method (a row of panels): ID and OOD accuracy and ECE against the EMA period as categories,
    mean and 95% t-interval over the trials at each period (seeds x the method's other swept sensitivity keys)."""
    figure, axes = plt.subplots(len(methods), 2, figsize=(2 * COLUMN_WIDTH, 2.2 * len(methods)), squeeze=False)
    for row, method in zip(axes, methods):
        part = trials[trials["method"] == method]
        periods = sorted(part[PERIOD].unique(), key=period_order)
        positions = np.arange(len(periods))
        for axis, kind in zip(row, ("acc", "ece")):
            for index, role in enumerate(("id", "ood")):
                column = f"{role}_{kind}"
                values = [100 * part.loc[part[PERIOD] == period, column].dropna().to_numpy() for period in periods]
                axis.errorbar(positions, [v.mean() for v in values], yerr=np.nan_to_num([t_halfwidth(v) for v in values]),
                              marker="o", ms=3, capsize=2, color=colour(index), label=role.upper())
            axis.set_xticks(positions, [_number(p) for p in periods])
            axis.set(xlabel="EMA period (steps, or share of all steps)",
                     ylabel=f"{'accuracy' if kind == 'acc' else 'ECE'} (%)", title=method)
            axis.legend(frameon=False)
    figure.tight_layout()
    return figure
