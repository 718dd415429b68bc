"""Paired comparisons of ablation rows: is a row's difference to a reference larger than the seed noise?

A seed fixes data order and initialisation across methods, so two rows' trials with the same seed
share those sources of variance; the differences within a seed are what separates the methods.
For every row and reference this computes the per-seed differences (row - reference), their mean,
the 95% t-interval (``scipy.stats.ttest_rel``) and the p-value of "no difference". A reference
evaluated once without training (zero-shot: deterministic, run for one seed) is paired with every
seed of the other row (``scipy.stats.ttest_1samp`` of the differences); otherwise seeds present on
one side only are dropped. Differences are in the metrics' own units (fractions for accuracy and ECE).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import pandas as pd
from scipy import stats

from harness.core.methods import METHODS

METRICS = ("id_acc", "ood_acc", "id_ece", "ood_ece", "id_nll", "ood_nll", "id_brier", "ood_brier")
HIGHER_IS_BETTER = frozenset({"id_acc", "ood_acc"})
COLUMNS = ("variant", "reference", "metric", "pairing", "n", "mean", "low", "high", "p", "excludes_zero", "outcome")


@dataclass(frozen=True)
class PairedOptions:
    """Which rows are references, on which metrics, and the zero-shot question ("does fine-tuning lose OOD calibration?")."""

    references: tuple[str, ...] = ("flyp", "ft")
    metrics: tuple[str, ...] = METRICS
    zeroshot: str = "zeroshot"
    zeroshot_metrics: tuple[str, ...] = ("ood_ece",)
    confidence: float = 0.95


def _deterministic(group: pd.DataFrame) -> bool:
    """One trial of a method that trains nothing: its value does not depend on the seed."""
    if len(group) != 1:
        return False
    method = group["method"].iloc[0]
    return method in METHODS and not METHODS[method].trains


def _per_seed(group: pd.DataFrame, metric: str) -> pd.Series:
    """The metric by seed; trials repeating a seed of one row (two sweeps loaded together) are averaged first."""
    return group.dropna(subset=["seed", metric]).groupby("seed")[metric].mean()


def paired_difference(row: pd.DataFrame, reference: pd.DataFrame, metric: str, confidence: float = 0.95) -> dict:
    """Mean of ``row - reference`` on ``metric`` over paired seeds, its t-interval, p-value and n.

    Both frames need ``seed``, ``method`` and ``metric`` columns; trials with a NaN metric are unpaired.
    """
    row, reference = row.dropna(subset=[metric]), reference.dropna(subset=[metric])
    if _deterministic(reference) != _deterministic(row):
        single, other = (reference, row) if _deterministic(reference) else (row, reference)
        sign = 1.0 if single is reference else -1.0
        pairing = "single reference" if single is reference else "single row"
        difference = sign * (other[metric].to_numpy(float) - single[metric].iloc[0])
        test = stats.ttest_1samp(difference, 0.0) if len(difference) >= 2 else None
    else:
        both = pd.concat([_per_seed(row, metric), _per_seed(reference, metric)], axis=1, join="inner").to_numpy(float)
        pairing, difference = "seed", both[:, 0] - both[:, 1]
        test = stats.ttest_rel(both[:, 0], both[:, 1]) if len(both) >= 2 else None
    result = {"pairing": pairing, "n": len(difference), "mean": float(difference.mean()) if len(difference) else math.nan,
              "low": math.nan, "high": math.nan, "p": math.nan}
    if test is not None:
        interval = test.confidence_interval(confidence)
        result |= {"low": float(interval.low), "high": float(interval.high), "p": float(test.pvalue)}
    return result


def _outcome(metric: str, low: float, high: float) -> str:
    if not (low > 0 or high < 0):
        return "no clear difference"
    higher = low > 0
    better = higher == (metric in HIGHER_IS_BETTER)
    return f"{'higher' if higher else 'lower'} ({'better' if better else 'worse'})"


def paired_differences(trials: pd.DataFrame, options: PairedOptions = PairedOptions()) -> pd.DataFrame:
    """Tidy frame (COLUMNS): every row against every present reference on ``options.metrics``, and against zero-shot
    on ``options.zeroshot_metrics``; ``excludes_zero`` where the interval lies on one side of 0."""
    rows = list(dict.fromkeys(trials["variant"]))
    comparisons = [(reference, options.metrics) for reference in options.references if reference in rows]
    if options.zeroshot in rows:
        comparisons.append((options.zeroshot, options.zeroshot_metrics))
    by_variant = {variant: group for variant, group in trials.groupby("variant", sort=False)}
    out = []
    for reference, metrics in comparisons:
        for variant in rows:
            if variant == reference:
                continue
            for metric in metrics:
                if metric not in trials:
                    continue
                result = paired_difference(by_variant[variant], by_variant[reference], metric, options.confidence)
                if result["n"] == 0:
                    continue
                excludes = bool(result["low"] > 0 or result["high"] < 0)
                out.append({"variant": variant, "reference": reference, "metric": metric, **result,
                            "excludes_zero": excludes, "outcome": _outcome(metric, result["low"], result["high"])})
    return pd.DataFrame(out, columns=list(COLUMNS))
