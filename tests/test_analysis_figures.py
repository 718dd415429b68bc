"""Figures checked for content (panels, plotted values, labels) against independent computations."""

import itertools
import math

import numpy as np
import pandas as pd
import pytest
from matplotlib.image import AxesImage
from scipy import stats
from test_analysis import ablation_trials, write_sweep

from analysis import comparison, sensitivity, spectrum
from analysis.figures import main as figures_main
from analysis.load import load
from analysis.style import plt


@pytest.fixture(scope="module")
def ablation(tmp_path_factory):
    root = write_sweep(tmp_path_factory.mktemp("figures") / "ablation", ablation_trials())
    return root, load([root])


@pytest.fixture(autouse=True)
def close_figures():
    yield
    plt.close("all")


def _half(values):
    values = np.asarray(values, float)
    if len(values) < 2:
        return math.nan
    return stats.t.ppf(0.975, len(values) - 1) * values.std(ddof=1) / math.sqrt(len(values))


def _errorbar_halves(container):
    """Half-length of each bar's error bar; NaN where none is drawn."""
    segments = container.errorbar.lines[2][0].get_segments()
    return [abs(s[1][1] - s[0][1]) / 2 if len(s) else math.nan for s in segments]


def test_headline_bars_intervals_and_noise_floors(ablation):
    _, results = ablation
    trials = results.trials
    figure = comparison.headline_figure(trials)
    accuracy, ece = figure.axes
    variants = list(dict.fromkeys(trials["variant"]))
    for axis, kind in ((accuracy, "acc"), (ece, "ece")):
        assert [t.get_text() for t in axis.get_xticklabels()] == variants
        containers = [c for c in axis.containers if hasattr(c, "patches")]
        assert [c.get_label() for c in containers] == ["ID", "OOD"]
        for container, role in zip(containers, ("id", "ood")):
            groups = [trials.loc[trials["variant"] == v, f"{role}_{kind}"].to_numpy() for v in variants]
            assert [p.get_height() for p in container.patches] == pytest.approx([100 * g.mean() for g in groups])
            np.testing.assert_allclose(_errorbar_halves(container), [100 * _half(g) for g in groups], equal_nan=True)
    assert math.isnan(_errorbar_halves([c for c in accuracy.containers if hasattr(c, "patches")][0])[0])  # zero-shot: one trial, no error bar
    floors = {line.get_label(): line.get_ydata()[0] for line in ece.get_lines() if "floor" in line.get_label()}
    assert floors == pytest.approx({"ID noise floor": 100 * trials["id_ece_floor"].mean(),
                                    "OOD noise floor": 100 * trials["ood_ece_floor"].mean()})
    assert ece.get_ylim()[0] == 0


def test_evidence_figure_uses_the_scale_free_sigma_and_shows_both_subsets(ablation):
    _, results = ablation
    trials = results.trials
    figure = spectrum.evidence_figure(trials)
    assert len(figure.axes) == 4
    data = trials.assign(ood_error=1 - trials["ood_acc"])
    trained = data[data["method"] != "zeroshot"]
    for axis, (x, y) in zip(figure.axes, spectrum.pairs(trials)):
        offsets = np.concatenate([c.get_offsets() for c in axis.collections])
        assert len(offsets) == len(trials) and np.isfinite(offsets).all()
        scale = 100 if x == "id_ece" else 1
        assert sorted(offsets[:, 0]) == pytest.approx(sorted(scale * data[x]))
        title = axis.get_title().splitlines()
        r_all, r_trained = np.corrcoef(data[x], data[y])[0, 1], np.corrcoef(trained[x], trained[y])[0, 1]
        assert title[0].startswith(f"all (n={len(data)}): r={r_all:.2f} [")
        assert title[1].startswith(f"without zeroshot (n={len(trained)}): r={r_trained:.2f} [")
    assert spectrum.pairs(trials)[0] == ("sigma_min_rel", "ood_ece")
    assert "tr" in figure.axes[0].get_xlabel()


def test_evidence_table_has_intervals_with_and_without_zeroshot_and_keeps_the_raw_sigma(ablation):
    _, results = ablation
    trials = results.trials
    table = spectrum.evidence_table(trials).set_index(["x", "y", "subset"])
    assert {x for x, _, _ in table.index} == {"sigma_min_rel", "sigma_min", "id_ece"}
    trained = trials[trials["method"] != "zeroshot"]
    row = table.loc[("sigma_min_rel", "ood_ece", "without zeroshot")]
    assert row["n"] == len(trained) == len(trials) - 1
    r = np.corrcoef(trained["sigma_min_rel"], trained["ood_ece"])[0, 1]
    z, se = np.arctanh(r), 1 / math.sqrt(len(trained) - 3)
    assert (row["pearson_r"], row["pearson_low"], row["pearson_high"]) == pytest.approx(
        (r, np.tanh(z - 1.959964 * se), np.tanh(z + 1.959964 * se)))
    raw = table.loc[("sigma_min", "ood_error", "all")]
    assert raw["spearman_rho"] == pytest.approx(stats.spearmanr(trials["sigma_min"], 1 - trials["ood_acc"]).statistic)
    assert (table["spearman_low"] <= table["spearman_rho"]).all() and (table["spearman_rho"] <= table["spearman_high"]).all()


def test_before_after_uses_the_scale_free_sigma(ablation):
    _, results = ablation
    trials = results.trials
    axis = spectrum.before_after_figure(trials).axes[0]
    variants = list(dict.fromkeys(trials["variant"]))
    pretrained, finetuned = [c for c in axis.containers if hasattr(c, "patches")]
    groups = [trials.loc[trials["variant"] == v] for v in variants]
    assert [p.get_height() for p in finetuned.patches] == pytest.approx([g["sigma_min_rel"].mean() for g in groups])
    assert [p.get_height() for p in pretrained.patches] == pytest.approx(
        [g["sigma_min_rel_pretrained"].mean() for g in groups])
    assert "tr" in axis.get_ylabel()


def _sensitivity_trials():
    """carot: sd x ls x period grid; other: sd x ls grid; mixed: sd x ls plus oc_weight varying (ablation-like);
    fixed: nothing swept; pairs: sd and period varying together (two ablation rows). Three seeds each."""
    rng = np.random.default_rng(7)
    rows = []

    def add(method, **config):
        for seed in range(3):
            rows.append({"method": method, "seed": seed, "loss.oc_weight": 0.2, "ema.period": 5, **config,
                         **{k: float(rng.uniform(0, 1)) for k in ("id_acc", "ood_acc", "id_ece", "ood_ece")}})

    for sd, ls, period in itertools.product((0.5, 1.5), (0.0, 0.1), (10, 2, "5%", "2%")):
        add("carot", **{"loss.sd_weight": sd, "loss.label_smoothing": ls, "ema.period": period})
    for sd, ls in itertools.product((0.5, 1.0, 1.5), (0.0, 0.1)):
        add("other", **{"loss.sd_weight": sd, "loss.label_smoothing": ls})
    for sd, ls, oc in ((0.5, 0.0, 0.0), (1.5, 0.1, 0.2), (0.5, 0.1, 0.2), (1.5, 0.0, 0.0)):
        add("mixed", **{"loss.sd_weight": sd, "loss.label_smoothing": ls, "loss.oc_weight": oc})
    add("fixed", **{"loss.sd_weight": 0.0, "loss.label_smoothing": 0.0})
    for sd, period in ((0.0, 5), (0.5, "2%")):
        add("pairs", **{"loss.sd_weight": sd, "loss.label_smoothing": 0.0, "ema.period": period})
    return pd.DataFrame(rows)


KEYS = ["ema.period", "loss.label_smoothing", "loss.oc_weight", "loss.sd_weight"]


def test_eligibility_is_per_method_and_explained():
    trials = _sensitivity_trials()
    methods, reasons = sensitivity.eligible_methods(trials, KEYS, sensitivity.HEATMAP_KEYS)
    assert methods == ["carot", "other"]
    assert "loss.oc_weight also varies" in reasons["mixed"]
    assert reasons["fixed"] == "loss.sd_weight, loss.label_smoothing not swept"
    assert reasons["pairs"].startswith("loss.label_smoothing not swept")
    methods, reasons = sensitivity.eligible_methods(trials, KEYS, sensitivity.PERIOD_KEYS)
    assert methods == ["carot"]
    assert "vary together, not as a grid" in reasons["pairs"] and "not swept" in reasons["other"]


def test_heatmaps_are_one_row_per_method_with_per_method_means():
    trials = _sensitivity_trials()
    figure = sensitivity.heatmap_figure(trials, ["carot", "other"])
    panels = [axis for axis in figure.axes if any(isinstance(a, AxesImage) for a in axis.images)]
    assert len(panels) == 4
    for axis, (method, metric) in zip(panels, itertools.product(("carot", "other"), ("ood_acc", "ood_ece"))):
        assert axis.get_title().startswith(f"{method}: OOD {'accuracy' if metric == 'ood_acc' else 'ECE'}")
        part = trials[trials["method"] == method]
        sds, lss = sorted(part["loss.sd_weight"].unique()), sorted(part["loss.label_smoothing"].unique())
        expected = [[100 * part.loc[(part["loss.sd_weight"] == sd) & (part["loss.label_smoothing"] == ls), metric].mean()
                     for ls in lss] for sd in sds]
        np.testing.assert_allclose(axis.images[0].get_array(), expected)
        assert [t.get_text() for t in axis.get_yticklabels()] == [f"{v:g}" for v in sds]
        assert len(axis.texts) == len(sds) * len(lss)


def test_period_curves_are_categorical_and_per_method():
    trials = _sensitivity_trials()
    figure = sensitivity.period_figure(trials, ["carot"])
    assert len(figure.axes) == 2
    part = trials[trials["method"] == "carot"]
    order = [10, 2, "5%", "2%"]
    order.sort(key=sensitivity.period_order)
    assert order == [2, 10, "2%", "5%"]
    for axis, kind in zip(figure.axes, ("acc", "ece")):
        assert [t.get_text() for t in axis.get_xticklabels()] == ["2", "10", "2%", "5%"]
        assert [c.get_label() for c in axis.containers] == ["ID", "OOD"]
        for container, role in zip(axis.containers, ("id", "ood")):
            groups = [100 * part.loc[part["ema.period"] == p, f"{role}_{kind}"].to_numpy() for p in order]
            line = container.lines[0]
            assert list(line.get_xdata()) == [0, 1, 2, 3]
            assert line.get_ydata() == pytest.approx([g.mean() for g in groups])
            segments = container.lines[2][0].get_segments()
            assert [abs(s[1][1] - s[0][1]) / 2 for s in segments] == pytest.approx([_half(g) for g in groups])


def test_report_on_the_ablation_skips_sensitivity_with_reasons_and_shows_the_statistics(ablation, tmp_path, capsys):
    root, _ = ablation
    out = tmp_path / "figures"
    assert figures_main([str(root), "--out", str(out)]) == 0
    report = (out / "report.md").read_text()
    skipped = report.split("## Skipped")[1]
    assert "- Sensitivity to lambda_SD and label smoothing: no method has a grid of its own" in skipped
    assert "carot: ema.period, loss.sd_weight vary together, not as a grid" in skipped
    assert not (out / "sensitivity_heatmaps.png").exists() and not (out / "sensitivity_ema_period.png").exists()
    assert "| carot − zeroshot | – |" in report and "| zeroshot − flyp |" in report
    assert "| sigma_min_rel | ood_ece | without zeroshot | 19 |" in report
    flyp_floor = np.mean([100 * t["floors"]["mnist"] for t in ablation_trials() if t["variant"] == "flyp"])
    assert f"- flyp: ID {flyp_floor:.1f}, uci " in report
    rows = [line for line in report.split("## Results table")[1].splitlines() if line.startswith("| ")]
    assert "±" not in next(r for r in rows if r.startswith("| zeroshot |"))  # one trial: the value only
    assert next(r for r in rows if r.startswith("| flyp |")).count("±") == 8


def _leet_records(path):
    import json
    import subprocess
    import sys
    from pathlib import Path

    wandb = Path(sys.executable).with_name("wandb")
    out = subprocess.run([str(wandb), "leet", "inspect", "--json", str(path)], capture_output=True, text=True,
                         timeout=120, check=True).stdout
    return [json.loads(line) for line in out.splitlines() if line.startswith("{")]


def test_the_wandb_analysis_run_holds_the_table_figures_and_report(ablation, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("WANDB_SILENT", "true")
    root, results = ablation
    out = tmp_path / "figures"
    assert figures_main([str(root), "--out", str(out), "--wandb"]) == 0
    runs = list((out / "wandb").glob("offline-run-*/run-*.wandb"))
    assert len(runs) == 1  # the trials' own tracking mode (offline by default)
    records = _leet_records(runs[0])
    run = next(r["run"] for r in records if r.get("type") == "run")
    assert run["job_type"] == "analysis" and run["run_group"] == "ablation" and run["display_name"] == "ablation-analysis"
    logged = {key for r in records if r.get("type") == "history" for key in r["history"]["item"]}
    assert {"tables/table._type", "tables/paired._type", "figures/headline._type", "figures/reliability._type"} <= logged
    table = next(runs[0].parent.glob("files/media/table/tables/table_*.table.json"))
    import json

    logged_table = json.loads(table.read_text())
    rows = {(row[0], row[1]): float(row[2]) for row in logged_table["data"]}
    carot = results.trials[results.trials["variant"] == "carot"]
    assert rows[("carot", "ID acc")] == pytest.approx(100 * carot["id_acc"].mean())  # the mean over its seeds
    assert (next(iter(runs[0].parent.glob("files/media/images/figures/headline_*.png")))).stat().st_size > 1000
    artifacts = [r for r in records if r.get("type") == "artifact"]
    assert any("report.md" in json.dumps(a) for a in artifacts)
