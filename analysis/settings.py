"""Across settings (a benchmark with a model): does what holds in one setting hold in the others?

Four questions, each answered per setting with a 95% interval and, for correlations, pooled:
- label smoothing: FLYP+LS − FLYP on ID and OOD ECE, paired by seed;
- sigma_min: its Pearson correlation with OOD ECE and with OOD error over a setting's trials;
- ID calibration: the correlation of ID ECE with OOD ECE;
- CaRot − FLYP on OOD ECE and OOD accuracy, paired by seed.

Paired intervals are ``analysis.paired.paired_difference`` (scipy's t-tests). A correlation's interval is
scipy's (``pearsonr(...).confidence_interval``, Fisher z). Correlations are pooled across settings by a
random-effects meta-analysis of their Fisher z values (``statsmodels.stats.meta_analysis.combine_effects``,
variance 1/(n − 3)), which also gives the between-setting heterogeneity: tau² (in z units) and I² (the share
of the spread between settings that is not sampling noise, 0 when Q < its degrees of freedom). tau² is
Paule–Mandel's estimate (``method_re="iterated"``): statsmodels' DerSimonian–Laird (``"dl"``) does not stop
tau² at zero, and with settings that agree more than their sampling noise predicts it returns a negative
variance and nonsense weights. A setting's trials
share seeds and a pre-trained model, so its points are not independent draws; the intervals treat them
as such and are narrower than the truth.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import stats

from analysis.paired import paired_difference
from analysis.spectrum import estimate_text, sigma_columns
from analysis.style import COLUMN_WIDTH, plt, styled

POOLED = "pooled (random effects)"


@dataclass(frozen=True)
class PairedQuestion:
    """``row − reference`` on ``metrics`` in every setting that has both rows."""

    name: str
    row: str
    reference: str
    metrics: tuple[str, ...]


@dataclass(frozen=True)
class CorrelationQuestion:
    name: str
    x: str  # a trials column; "sigma" means the scale-free sigma_min where recorded
    y: str


PAIRED_QUESTIONS = (
    PairedQuestion("label smoothing", "flyp+LS", "flyp", ("id_ece", "ood_ece")),
    PairedQuestion("CaRot vs FLYP", "carot", "flyp", ("ood_ece", "ood_acc")),
)
CORRELATION_QUESTIONS = (
    CorrelationQuestion("sigma_min", "sigma", "ood_ece"),
    CorrelationQuestion("sigma_min", "sigma", "ood_error"),
    CorrelationQuestion("ID calibration", "id_ece", "ood_ece"),
)
PAIRED_COLUMNS = ("question", "setting", "row", "reference", "metric", "n", "mean", "low", "high", "p", "outcome")
CORRELATION_COLUMNS = ("question", "setting", "x", "y", "n", "r", "low", "high", "tau2", "i2")


def paired_by_setting(trials: pd.DataFrame, questions: tuple[PairedQuestion, ...] = PAIRED_QUESTIONS) -> pd.DataFrame:
    """One row per question, setting and metric (PAIRED_COLUMNS); differences in the metric's units."""
    out = []
    for question in questions:
        for setting, group in trials.groupby("setting", sort=False):
            rows = {variant: part for variant, part in group.groupby("variant")}
            if question.row not in rows or question.reference not in rows:
                continue
            for metric in question.metrics:
                result = paired_difference(rows[question.row], rows[question.reference], metric)
                excludes = result["low"] > 0 or result["high"] < 0
                direction = "higher" if result["mean"] > 0 else "lower"
                out.append({"question": question.name, "setting": setting, "row": question.row,
                            "reference": question.reference, "metric": metric, **result,
                            "outcome": direction if excludes else "no clear difference"})
    return pd.DataFrame(out, columns=list(PAIRED_COLUMNS))


def pearson(x: np.ndarray, y: np.ndarray, confidence: float = 0.95) -> tuple[int, float, float, float]:
    """(n, r, low, high) over the finite pairs; NaN where fewer than 4 points or a constant side."""
    keep = np.isfinite(x) & np.isfinite(y)
    x, y = x[keep], y[keep]
    n = len(x)
    if n < 4 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return n, math.nan, math.nan, math.nan
    result = stats.pearsonr(x, y)
    interval = result.confidence_interval(confidence)
    return n, float(result.statistic), float(interval.low), float(interval.high)


def pooled_correlation(r: np.ndarray, n: np.ndarray, confidence: float = 0.95) -> dict[str, float]:
    """Random-effects (Paule–Mandel) pooling of correlations ``r`` over ``n`` points each: the pooled r with its
    interval (back from Fisher z), tau² (z units) and I²."""
    from statsmodels.stats.meta_analysis import combine_effects

    z, variance = np.arctanh(r), 1.0 / (n - 3.0)
    with np.errstate(divide="ignore"):  # I² = 1 - df / Q divides by Q = 0 when the settings agree exactly
        combined = combine_effects(z, variance, method_re="iterated", alpha=1 - confidence)
    row = combined.summary_frame().loc["random effect"]
    return {"r": math.tanh(row["eff"]), "low": math.tanh(row["ci_low"]), "high": math.tanh(row["ci_upp"]),
            "tau2": float(combined.tau2), "i2": max(0.0, float(combined.i2))}


def correlations_by_setting(trials: pd.DataFrame,
                            questions: tuple[CorrelationQuestion, ...] = CORRELATION_QUESTIONS) -> pd.DataFrame:
    """Per question: each setting's Pearson r over its trials, then the pooled row (CORRELATION_COLUMNS)."""
    data = trials.assign(ood_error=1 - trials["ood_acc"], sigma=trials[sigma_columns(trials)[0]])
    out = []
    for question in questions:
        rows = []
        for setting, group in data.groupby("setting", sort=False):
            n, r, low, high = pearson(group[question.x].to_numpy(float), group[question.y].to_numpy(float))
            rows.append({"question": question.name, "setting": setting, "x": question.x, "y": question.y, "n": n,
                         "r": r, "low": low, "high": high, "tau2": math.nan, "i2": math.nan})
        usable = [row for row in rows if math.isfinite(row["r"])]
        if len(usable) >= 2:
            pooled = pooled_correlation(np.array([row["r"] for row in usable]), np.array([row["n"] for row in usable]))
            rows.append({"question": question.name, "setting": POOLED, "x": question.x, "y": question.y,
                         "n": sum(row["n"] for row in usable), **pooled})
        out += rows
    return pd.DataFrame(out, columns=list(CORRELATION_COLUMNS))


_LABELS = {"id_ece": "ID ECE", "ood_ece": "OOD ECE", "ood_acc": "OOD accuracy", "ood_error": "OOD error",
           "sigma": "sigma_min (scale-free)"}


def _points(value: float, metric: str) -> float:
    return 100 * value if metric in ("id_ece", "ood_ece", "ood_acc", "id_acc") else value


def paired_rows(paired: pd.DataFrame) -> tuple[list[str], list[list[str]]]:
    header = ["question", "setting", "metric", "n", "Δ (points) [95%]", "p", "outcome"]
    body = [[row.question, row.setting, _LABELS.get(row.metric, row.metric), str(row.n),
             estimate_text(*(_points(v, row.metric) for v in (row.mean, row.low, row.high)), digits=1),
             "–" if math.isnan(row.p) else f"{row.p:.3f}", row.outcome] for row in paired.itertuples()]
    return header, body


def correlation_rows(table: pd.DataFrame) -> tuple[list[str], list[list[str]]]:
    header = ["question", "x", "y", "setting", "n", "Pearson r [95%]", "tau²", "I²"]
    body = [[row.question, _LABELS.get(row.x, row.x), _LABELS.get(row.y, row.y), row.setting, str(row.n),
             estimate_text(row.r, row.low, row.high),
             "" if math.isnan(row.tau2) else f"{row.tau2:.3f}", "" if math.isnan(row.i2) else f"{100 * row.i2:.0f}%"]
            for row in table.itertuples()]
    return header, body


def _forest(axis: plt.Axes, labels: list[str], mean: np.ndarray, low: np.ndarray, high: np.ndarray,
            pooled: np.ndarray | None = None) -> None:
    """Estimates with their intervals, one row per label (top to bottom), a zero line; pooled rows as diamonds."""
    pooled = np.zeros(len(labels), bool) if pooled is None else pooled
    where = np.arange(len(labels))[::-1]
    for y, m, lo, hi, is_pooled in zip(where, mean, low, high, pooled):
        colour = "0.15" if is_pooled else "C0"
        if np.isfinite(lo):
            axis.plot([lo, hi], [y, y], color=colour, lw=1.2)
        axis.plot([m], [y], marker="D" if is_pooled else "o", color=colour, ms=5 if is_pooled else 4)
    axis.axvline(0, color="0.5", lw=0.8, ls=":")
    axis.set_yticks(where, labels)


@styled
def paired_figure(paired: pd.DataFrame, question: str) -> plt.Figure:
    """One panel per metric of ``question``: each setting's paired difference (points) with its 95% interval."""
    part = paired[paired["question"] == question]
    metrics = list(dict.fromkeys(part["metric"]))
    figure, axes = plt.subplots(1, len(metrics), figsize=(2 * COLUMN_WIDTH, 0.45 * part["setting"].nunique() + 1.2),
                                sharey=True, squeeze=False)
    for axis, metric in zip(axes[0], metrics):
        rows = part[part["metric"] == metric]
        values = [np.array([_points(v, metric) for v in rows[c]]) for c in ("mean", "low", "high")]
        _forest(axis, list(rows["setting"]), *values)
        first = rows.iloc[0]
        axis.set_xlabel(f"Δ {_LABELS.get(metric, metric)}, {first['row']} − {first['reference']} (points)")
    figure.tight_layout()
    return figure


@styled
def correlation_figure(table: pd.DataFrame, question: str) -> plt.Figure:
    """One panel per (x, y) of ``question``: each setting's Pearson r with its interval and the pooled r (diamond),
    I² in the panel's title."""
    part = table[table["question"] == question]
    pairs = list(dict.fromkeys(zip(part["x"], part["y"])))
    figure, axes = plt.subplots(1, len(pairs), figsize=(2 * COLUMN_WIDTH, 0.45 * part["setting"].nunique() + 1.3),
                                sharey=True, squeeze=False)
    for axis, (x, y) in zip(axes[0], pairs):
        rows = part[(part["x"] == x) & (part["y"] == y)]
        pooled = (rows["setting"] == POOLED).to_numpy()
        _forest(axis, list(rows["setting"]), rows["r"].to_numpy(float), rows["low"].to_numpy(float),
                rows["high"].to_numpy(float), pooled)
        axis.set_xlim(-1.05, 1.05)
        axis.set_xlabel(f"Pearson r, {_LABELS.get(x, x)} vs {_LABELS.get(y, y)}")
        i2 = rows.loc[rows["setting"] == POOLED, "i2"]
        if len(i2):
            axis.set_title(f"between-setting heterogeneity I² = {100 * i2.iloc[0]:.0f}%")
    figure.tight_layout()
    return figure
