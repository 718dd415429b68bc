"""Across settings: paired differences, correlations and their random-effects pooling, checked against hand
computations on made-up numbers; the report's figures and per-setting tables."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from scipy import optimize, stats
from test_analysis import OOD, ablation_trials, write_sweep

from analysis import settings
from analysis.figures import main as figures_main
from analysis.load import load


def test_pooled_correlation_is_paule_mandel_by_hand():
    """tau² solves sum w*(z - mu*)² = k - 1 with w* = 1 / (v + tau²) (Paule and Mandel, 1982); I² = (Q - df) / Q."""
    r, n = np.array([0.3, 0.6, -0.1]), np.array([20, 15, 30])
    z, v = np.arctanh(r), 1 / (n - 3)
    w = 1 / v
    fixed = (w * z).sum() / w.sum()
    q = (w * (z - fixed) ** 2).sum()

    def excess(tau2):
        weights = 1 / (v + tau2)
        mean = (weights * z).sum() / weights.sum()
        return (weights * (z - mean) ** 2).sum() - (len(z) - 1)

    tau2 = optimize.brentq(excess, 0.0, 10.0)
    w_star = 1 / (v + tau2)
    pooled = (w_star * z).sum() / w_star.sum()
    half = stats.norm.ppf(0.975) / math.sqrt(w_star.sum())
    result = settings.pooled_correlation(r, n)
    assert result["r"] == pytest.approx(math.tanh(pooled))
    assert (result["low"], result["high"]) == pytest.approx((math.tanh(pooled - half), math.tanh(pooled + half)))
    assert result["tau2"] == pytest.approx(tau2, rel=1e-4)  # statsmodels iterates to a tolerance
    assert result["i2"] == pytest.approx(max(0.0, (q - 2) / q))


def test_identical_settings_pool_without_heterogeneity():
    result = settings.pooled_correlation(np.array([0.5, 0.5]), np.array([10, 40]))
    assert result["r"] == pytest.approx(0.5) and result["tau2"] == 0 and result["i2"] == 0


def _trials() -> pd.DataFrame:
    rng = np.random.default_rng(3)
    rows = []
    for setting, ls_effect in (("A", 0.02), ("B", -0.01)):
        for seed in range(4):
            shift = rng.normal(0, 0.01)
            for variant, effect in (("flyp", 0.0), ("flyp+LS", ls_effect), ("carot", -0.03)):
                rows.append({"setting": setting, "variant": variant, "method": variant.split("+")[0], "seed": seed,
                             "id_ece": 0.05 + effect / 2 + shift + rng.normal(0, 0.002), "ood_ece": 0.1 + effect + shift + rng.normal(0, 0.002),
                             "ood_acc": 0.7 - effect + rng.normal(0, 0.01), "sigma_min_rel": rng.uniform(0.1, 0.5)})
    return pd.DataFrame(rows)


def test_paired_differences_per_setting_are_the_mean_per_seed_difference_with_its_t_interval():
    trials = _trials()
    paired = settings.paired_by_setting(trials)
    for setting in ("A", "B"):
        part = trials[trials["setting"] == setting]
        ls = part[part["variant"] == "flyp+LS"].set_index("seed")["ood_ece"]
        flyp = part[part["variant"] == "flyp"].set_index("seed")["ood_ece"]
        difference = (ls - flyp).to_numpy()
        half = stats.t.ppf(0.975, len(difference) - 1) * difference.std(ddof=1) / math.sqrt(len(difference))
        row = paired[(paired["setting"] == setting) & (paired["question"] == "label smoothing")
                     & (paired["metric"] == "ood_ece")].iloc[0]
        assert row["n"] == 4 and row["mean"] == pytest.approx(difference.mean())
        assert (row["low"], row["high"]) == pytest.approx((difference.mean() - half, difference.mean() + half))
    outcomes = paired[(paired["question"] == "label smoothing") & (paired["metric"] == "ood_ece")]["outcome"].tolist()
    assert outcomes == ["higher", "lower"]  # made-up effects of +2 and -1 points, seed noise cancelled by pairing


def test_correlations_per_setting_are_pearsons_and_the_pooled_row_follows():
    trials = _trials()
    table = settings.correlations_by_setting(trials)
    sigma = table[(table["question"] == "sigma_min") & (table["y"] == "ood_error")]
    assert list(sigma["setting"]) == ["A", "B", settings.POOLED]
    for setting in ("A", "B"):
        part = trials[trials["setting"] == setting]
        expected = np.corrcoef(part["sigma_min_rel"], 1 - part["ood_acc"])[0, 1]
        row = sigma[sigma["setting"] == setting].iloc[0]
        assert row["r"] == pytest.approx(expected) and row["n"] == 12
        z, half = np.arctanh(expected), stats.norm.ppf(0.975) / math.sqrt(12 - 3)
        assert (row["low"], row["high"]) == pytest.approx((math.tanh(z - half), math.tanh(z + half)))
    pooled = sigma.iloc[2]
    by_hand = settings.pooled_correlation(sigma["r"].to_numpy()[:2], np.array([12, 12]))
    assert pooled["r"] == pytest.approx(by_hand["r"]) and pooled["n"] == 24


def test_a_report_over_several_settings_holds_the_four_figures_and_each_settings_tables(tmp_path):
    trials = [t | {"setting": "digits / vit"} for t in ablation_trials(0)]
    trials += [t | {"setting": "icons / rn"} for t in ablation_trials(1)]
    for trial in trials:  # the generalization study's rows: flyp+LS from the ablation's flyp+OC
        if trial["variant"] == "flyp+OC":
            trial["variant"] = "flyp+LS"
    root = write_sweep(tmp_path / "generalization", trials)
    out = tmp_path / "figures"
    assert figures_main([str(root), "--out", str(out)]) == 0
    for name in ("settings_label_smoothing", "settings_sigma_min", "settings_id_calibration", "settings_carot"):
        assert (out / f"{name}.png").stat().st_size > 1000, name
    for name in ("table-digits_vit", "table-icons_rn", "paired-digits_vit", "settings_paired", "settings_correlations"):
        assert {(out / f"{name}.{suffix}").exists() for suffix in ("md", "tex", "csv")} == {True}, name
    paired = pd.read_csv(out / "settings_paired.csv")
    row = paired[(paired["setting"] == "icons / rn") & (paired["question"] == "CaRot vs FLYP")
                 & (paired["metric"] == "ood_ece")].iloc[0]
    by_seed = {}
    for trial in trials:
        if trial["setting"] == "icons / rn" and trial["variant"] in ("carot", "flyp"):
            by_seed.setdefault(trial["seed"], {})[trial["variant"]] = np.mean([trial["values"][s][1] for s in OOD])
    differences = [v["carot"] - v["flyp"] for v in by_seed.values() if len(v) == 2]  # carot lacks seed 3
    assert row["n"] == 4 and row["mean"] == pytest.approx(np.mean(differences))
    report = (out / "report.md").read_text()
    assert "## Label smoothing across settings" in report and "Results table: icons / rn" in report
    assert "the results hold 2 settings" in report
    assert load([root]).trials["setting"].nunique() == 2


def test_the_sweeps_closing_table_pairs_rows_within_each_setting(tmp_path):
    from analysis.tables import console_report

    trials = [t | {"setting": "digits / vit"} for t in ablation_trials(0)]
    trials += [t | {"setting": "icons / rn"} for t in ablation_trials(1)]
    text = console_report(write_sweep(tmp_path / "two", trials))
    digits, icons = text.split("setting icons / rn")
    assert digits.startswith("setting digits / vit")
    flyp = [t for t in trials if t["setting"] == "icons / rn" and t["variant"] == "flyp"]
    mean_id_acc = 100 * np.mean([t["values"]["mnist"][0] for t in flyp])
    assert next(line for line in icons.splitlines() if line.startswith("flyp ")).split()[2].startswith(f"{mean_id_acc:.1f}")
