"""Singular-value evidence: is OOD error / calibration tied to sigma_min and to ID calibration, as the paper's bound says?

The x axis is ``sigma_min_rel`` = D * sigma_min / trace of the ID embedding covariance: the raw
sigma_min grows with the overall spread of a model's features, so it does not compare across
models; the scale-free one does. Records without it (schema 1) fall back to the raw value.
Correlations come with 95% intervals (Pearson: Fisher z; Spearman: paired BCa bootstrap over
trials) and are repeated without zero-shot, a single untrained point that can carry a correlation alone.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import pandas as pd
from scipy import stats

from analysis.style import COLUMN_WIDTH, figure_legend, plt, styled
from analysis.tables import t_halfwidth
from harness.core.plots import PALETTE, colour

LABELS = {
    "sigma_min_rel": r"$D\,\sigma_{\min} / \mathrm{tr}\,\Sigma$ (ID embeddings)",
    "sigma_min": r"$\sigma_{\min}$ of ID embedding covariance",
    "id_ece": "ID ECE (%)", "ood_ece": "OOD ECE (%)", "ood_error": "OOD error (%)",
}
_PERCENT = ("ood_ece", "ood_error", "id_ece")
ZEROSHOT = "zeroshot"
SUBSETS = ("all", "without zeroshot")


def sigma_columns(trials: pd.DataFrame) -> tuple[str, str]:
    """(fine-tuned, pre-trained) sigma_min columns: the scale-free ones where any trial records them, else the raw ones."""
    if "sigma_min_rel" in trials and trials["sigma_min_rel"].notna().any():
        return "sigma_min_rel", "sigma_min_rel_pretrained"
    return "sigma_min", "sigma_min_pretrained"


def pairs(trials: pd.DataFrame) -> list[tuple[str, str]]:
    """The (x, y) pairs of the figure: sigma_min (scale-free where recorded) and ID ECE against OOD ECE and error."""
    sigma = sigma_columns(trials)[0]
    return [(x, y) for x in (sigma, "id_ece") for y in ("ood_ece", "ood_error")]


def _spearman(x: np.ndarray, y: np.ndarray, axis: int = -1) -> np.ndarray:
    """Spearman's rho along ``axis`` (vectorised for the bootstrap); NaN for a constant resample."""
    rx, ry = stats.rankdata(x, axis=axis), stats.rankdata(y, axis=axis)
    rx, ry = rx - rx.mean(axis=axis, keepdims=True), ry - ry.mean(axis=axis, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        return (rx * ry).sum(axis=axis) / np.sqrt((rx**2).sum(axis=axis) * (ry**2).sum(axis=axis))


def correlations(x: np.ndarray, y: np.ndarray, seed: int = 0) -> dict[str, float]:
    """Pearson and Spearman correlations with 95% intervals, and the least-squares line y = slope * x + intercept.

    Non-finite pairs are dropped. Fewer than 3 points or a constant side: NaN. Intervals need 4 points
    (Pearson's uses Fisher's z with n - 3 degrees of freedom); the Spearman bootstrap is seeded.
    """
    keep = np.isfinite(x) & np.isfinite(y)
    x, y = np.asarray(x, float)[keep], np.asarray(y, float)[keep]
    result = dict.fromkeys(("pearson_r", "pearson_low", "pearson_high", "pearson_p", "spearman_rho", "spearman_low",
                            "spearman_high", "spearman_p", "slope", "intercept"), math.nan)
    result["n"] = len(x)
    if len(x) < 3 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return result
    pearson, spearman = stats.pearsonr(x, y), stats.spearmanr(x, y)
    slope, intercept = np.polyfit(x, y, 1)
    result |= {"pearson_r": float(pearson.statistic), "pearson_p": float(pearson.pvalue),
               "spearman_rho": float(spearman.statistic), "spearman_p": float(spearman.pvalue),
               "slope": float(slope), "intercept": float(intercept)}
    if len(x) >= 4:
        interval = pearson.confidence_interval(0.95)
        with warnings.catch_warnings():  # a degenerate bootstrap yields NaN, which the table shows as such
            warnings.simplefilter("ignore", stats.DegenerateDataWarning)
            boot = stats.bootstrap((x, y), _spearman, paired=True, vectorized=True, method="BCa",
                                   confidence_level=0.95, rng=np.random.default_rng(seed))
        result |= {"pearson_low": float(interval.low), "pearson_high": float(interval.high),
                   "spearman_low": float(boot.confidence_interval.low),
                   "spearman_high": float(boot.confidence_interval.high)}
    return result


def _subsets(data: pd.DataFrame) -> list[tuple[str, pd.DataFrame]]:
    """All trials, and all but zero-shot when zero-shot is among them (and others remain)."""
    out = [(SUBSETS[0], data)]
    trained = data[data["method"] != ZEROSHOT]
    if 0 < len(trained) < len(data):
        out.append((SUBSETS[1], trained))
    return out


def evidence_table(trials: pd.DataFrame) -> pd.DataFrame:
    """One row per (x, y, subset): the figure's pairs (plus the raw sigma_min where the scale-free one is used),
    over all trials and without zero-shot; values in the metrics' own units (fractions)."""
    data = trials.assign(ood_error=1 - trials["ood_acc"])
    xy = pairs(trials)
    if xy[0][0] == "sigma_min_rel":
        xy[2:2] = [("sigma_min", y) for y in ("ood_ece", "ood_error")]
    rows = [{"x": x, "y": y, "subset": subset, **correlations(part[x].to_numpy(float), part[y].to_numpy(float))}
            for x, y in xy for subset, part in _subsets(data)]
    return pd.DataFrame(rows)


def estimate_text(value: float, low: float, high: float, digits: int = 2) -> str:
    """'0.52 [0.10, 0.80]'; the value alone without an interval; '–' when undefined (too few points, a constant side)."""
    if math.isnan(value):
        return "–"
    if math.isnan(low):
        return f"{value:.{digits}f}"
    return f"{value:.{digits}f} [{low:.{digits}f}, {high:.{digits}f}]"


def describe(fit: dict[str, float], subset: str) -> str:
    """One line of a panel title: both correlations with their intervals, and n."""
    return (f"{subset} (n={fit['n']}): r={estimate_text(fit['pearson_r'], fit['pearson_low'], fit['pearson_high'])}, "
            f"ρ={estimate_text(fit['spearman_rho'], fit['spearman_low'], fit['spearman_high'])}")


@styled
def evidence_figure(trials: pd.DataFrame) -> plt.Figure:
    """2x2 scatter of ``pairs``, coloured by variant (by method when there are many), fitted line over all trials,
    and in each title the correlations with intervals over all trials and without zero-shot."""
    data = trials.assign(ood_error=1 - trials["ood_acc"])
    data[list(_PERCENT)] = data[list(_PERCENT)] * 100
    by = "variant" if data["variant"].nunique() <= len(PALETTE) else "method"  # colours stay distinguishable
    groups = list(dict.fromkeys(data[by]))
    figure, axes = plt.subplots(2, 2, figsize=(2 * COLUMN_WIDTH, 5.0))
    for axis, (x, y) in zip(axes.flat, pairs(trials)):
        for index, group in enumerate(groups):
            part = data[data[by] == group]
            axis.scatter(part[x], part[y], s=14, color=colour(index), label=group, alpha=0.85, edgecolor="none")
        fits = {subset: correlations(part[x].to_numpy(float), part[y].to_numpy(float)) for subset, part in _subsets(data)}
        if math.isfinite(fits["all"]["slope"]):
            grid = np.linspace(data[x].min(), data[x].max(), 50)
            axis.plot(grid, fits["all"]["slope"] * grid + fits["all"]["intercept"], color="0.3", lw=1, ls="--")
        axis.set_xlabel(LABELS[x])
        axis.set_ylabel(LABELS[y])
        axis.set_title("\n".join(describe(fit, subset) for subset, fit in fits.items()), fontsize=6)
        if x.startswith("sigma_min"):
            axis.ticklabel_format(axis="x", style="sci", scilimits=(-3, 3))
    handles, labels = axes.flat[0].get_legend_handles_labels()
    figure_legend(figure, handles, labels)
    return figure


@styled
def before_after_figure(trials: pd.DataFrame) -> plt.Figure:
    """sigma_min (scale-free where recorded) of the pre-trained vs the fine-tuned model per variant,
    mean and 95% t-interval over seeds."""
    finetuned, pretrained = sigma_columns(trials)
    grouped = trials.groupby("variant", sort=False)[[pretrained, finetuned]]
    mean = grouped.mean()
    half = grouped.agg(lambda values: t_halfwidth(values.dropna().to_numpy()))  # NaN: one trial, no bar
    positions = np.arange(len(mean))
    figure, axis = plt.subplots(figsize=(COLUMN_WIDTH, 2.4))
    for offset, column, label, fill in ((-0.2, pretrained, "pre-trained", "0.7"), (0.2, finetuned, "fine-tuned", colour(0))):
        axis.bar(positions + offset, mean[column], 0.4, yerr=half[column], color=fill, label=label, capsize=2)
    axis.set_xticks(positions, mean.index, rotation=30, ha="right")
    axis.set_ylabel(LABELS[finetuned].replace(" of ID embedding covariance", " (ID embeddings)"))
    axis.ticklabel_format(axis="y", style="sci", scilimits=(-3, 3))
    axis.legend(frameon=False, ncol=2, loc="lower center", bbox_to_anchor=(0.5, 1.02))
    figure.tight_layout()
    return figure
