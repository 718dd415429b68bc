"""Paired differences, the tables built on them and the sweep's closing console table, against hand computations."""

import json
import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats
from test_analysis import (
    ABLATION_ROWS,
    OOD,
    ablation_trials,
    random_values,
    write_sweep,
)

from analysis import tables
from analysis.load import load
from analysis.paired import (
    METRICS,
    PairedOptions,
    paired_difference,
    paired_differences,
)


@pytest.fixture(scope="module")
def ablation(tmp_path_factory):
    trials = ablation_trials()
    root = write_sweep(tmp_path_factory.mktemp("paired") / "ablation", trials)
    return root, trials, load([root])


def _by_seed(trials, variant, metric):
    """metric per seed of one row, computed from the written values (not from the loaded frame)."""
    out = {}
    for trial in trials:
        if trial["variant"] == variant:
            values = trial["values"]
            out[trial["seed"]] = {"id_acc": values["mnist"][0], "id_ece": values["mnist"][1],
                                  "ood_acc": np.mean([values[n][0] for n in OOD]),
                                  "ood_ece": np.mean([values[n][1] for n in OOD])}[metric]
    return out


def _t_interval(differences):
    """Mean, 95% t-interval and two-sided p of differences, written out."""
    d = np.asarray(differences, float)
    n, mean, sd = len(d), d.mean(), d.std(ddof=1)
    half = stats.t.ppf(0.975, n - 1) * sd / math.sqrt(n)
    p = 2 * stats.t.sf(abs(mean / (sd / math.sqrt(n))), n - 1)
    return mean, mean - half, mean + half, p


def _row(paired, variant, reference, metric):
    match = paired[(paired["variant"] == variant) & (paired["reference"] == reference) & (paired["metric"] == metric)]
    assert len(match) == 1
    return match.iloc[0]


def test_seed_pairing_drops_unpaired_seeds(ablation):
    _, trials, results = ablation
    paired = paired_differences(results.trials)
    carot, flyp = _by_seed(trials, "carot", "ood_ece"), _by_seed(trials, "flyp", "ood_ece")
    common = sorted(set(carot) & set(flyp))
    assert common == [0, 1, 2, 4]  # carot's seed 3 is missing
    mean, low, high, p = _t_interval([carot[s] - flyp[s] for s in common])
    row = _row(paired, "carot", "flyp", "ood_ece")
    assert row["pairing"] == "seed" and row["n"] == 4
    assert (row["mean"], row["low"], row["high"], row["p"]) == pytest.approx((mean, low, high, p))
    assert row["excludes_zero"] and row["outcome"] == "lower (better)"  # the designed effect (-0.025) is found


def test_paired_interval_is_narrower_than_the_unpaired_one(ablation):
    """The seed shift is shared across rows, so pairing removes it: the point of pairing."""
    _, trials, results = ablation
    row = _row(paired_differences(results.trials), "flyp+OC", "flyp", "id_acc")
    a, b = _by_seed(trials, "flyp+OC", "id_acc"), _by_seed(trials, "flyp", "id_acc")
    unpaired = stats.ttest_ind(list(a.values()), list(b.values())).confidence_interval(0.95)
    assert row["high"] - row["low"] < (unpaired.high - unpaired.low) / 3


def test_a_single_deterministic_reference_pairs_with_every_seed(ablation):
    _, trials, results = ablation
    paired = paired_differences(results.trials)
    zeroshot = _by_seed(trials, "zeroshot", "ood_ece")[0]
    for variant in ("ft", "flyp", "flyp+OC", "carot"):
        values = _by_seed(trials, variant, "ood_ece")
        mean, low, high, p = _t_interval([v - zeroshot for v in values.values()])
        row = _row(paired, variant, "zeroshot", "ood_ece")
        assert row["pairing"] == "single reference" and row["n"] == len(values)
        assert (row["mean"], row["low"], row["high"], row["p"]) == pytest.approx((mean, low, high, p))
    assert set(paired.loc[paired["reference"] == "zeroshot", "metric"]) == {"ood_ece"}


def test_a_single_deterministic_row_against_a_seeded_reference(ablation):
    _, trials, results = ablation
    zeroshot = _by_seed(trials, "zeroshot", "id_acc")[0]
    ft = _by_seed(trials, "ft", "id_acc")
    mean, low, high, p = _t_interval([zeroshot - v for v in ft.values()])
    row = _row(paired_differences(results.trials), "zeroshot", "ft", "id_acc")
    assert row["pairing"] == "single row" and row["n"] == 5
    assert (row["mean"], row["low"], row["high"], row["p"]) == pytest.approx((mean, low, high, p))
    assert row["outcome"] == "lower (worse)"


def test_every_row_against_every_reference_on_every_metric(ablation):
    _, _, results = ablation
    paired = paired_differences(results.trials)
    rows = list(ABLATION_ROWS)
    for reference in ("flyp", "ft"):
        part = paired[paired["reference"] == reference]
        assert sorted(set(part["variant"])) == sorted(r for r in rows if r != reference)
        assert all(sorted(group["metric"]) == sorted(METRICS) for _, group in part.groupby("variant"))
    assert set(paired.loc[paired["reference"] == "zeroshot", "variant"]) == set(rows) - {"zeroshot"}
    assert (paired["excludes_zero"] == ((paired["low"] > 0) | (paired["high"] < 0))).all()
    nll = _row(paired, "carot", "flyp", "ood_nll")  # NLL = 1.5 - acc in the synthetic records
    assert nll["mean"] == pytest.approx(-_row(paired, "carot", "flyp", "ood_acc")["mean"])


def test_a_trained_row_with_one_seed_is_paired_by_seed_not_broadcast():
    frame = pd.DataFrame([{"variant": "flyp", "method": "flyp", "seed": s, "ood_ece": 0.1 + 0.01 * s} for s in range(5)]
                         + [{"variant": "ft", "method": "ft", "seed": 2, "ood_ece": 0.2},
                            {"variant": "zeroshot", "method": "zeroshot", "seed": 0, "ood_ece": float("nan")}])
    result = paired_difference(frame[frame["variant"] == "ft"], frame[frame["variant"] == "flyp"], "ood_ece")
    assert result["pairing"] == "seed" and result["n"] == 1 and result["mean"] == pytest.approx(0.2 - 0.12)
    assert math.isnan(result["low"]) and math.isnan(result["p"])
    paired = paired_differences(frame, PairedOptions(metrics=("ood_ece",)))
    assert "zeroshot" not in set(paired["variant"]) | set(paired["reference"])  # its only value is missing
    assert not _row(paired, "ft", "flyp", "ood_ece")["excludes_zero"]


def test_paired_markdown_marks_exactly_the_intervals_that_exclude_zero(ablation):
    _, _, results = ablation
    paired = paired_differences(results.trials)
    markdown = tables.paired_to_markdown(paired)
    lines = [line for line in markdown.splitlines() if line.startswith("| ") and " − " in line and "Δ" not in line]
    assert len(lines) == len(paired.groupby(["variant", "reference"]))
    cells = [cell.strip() for line in lines for cell in line.strip("|").split("|")[1:-1]]
    assert sum(cell.endswith("*") for cell in cells) == paired["excludes_zero"].sum()
    row = _row(paired, "carot", "flyp", "ood_ece")
    carot = next(line for line in lines if line.startswith("| carot − flyp |"))
    assert f"{100 * row['mean']:+.1f} [{100 * row['low']:.1f}, {100 * row['high']:.1f}]*" in carot
    assert "better: " in carot and "OOD ECE" in carot.split("better: ")[1]
    zeroshot_line = next(line for line in lines if line.startswith("| carot − zeroshot |"))
    assert zeroshot_line.count("–") == len(METRICS) - 1  # only OOD ECE against zero-shot


def test_paired_latex_bolds_the_intervals_that_exclude_zero(ablation):
    _, _, results = ablation
    paired = paired_differences(results.trials)
    latex = tables.paired_to_latex(paired)
    body = [line for line in latex.splitlines() if line.endswith(r"\\")]
    assert len(body) == 1 + len(paired.groupby(["variant", "reference"])) and len({b.count("&") for b in body}) == 1
    assert latex.count(r"\textbf{") == paired["excludes_zero"].sum()
    assert latex.count("{") == latex.count("}") and "_" not in latex.replace(r"\_", "") and "−" not in latex


def test_console_table_against_hand_computation(ablation):
    _, trials, results = ablation
    text = tables.console_table(results)
    lines = text.splitlines()
    assert lines[0].split()[:2] == ["row", "n"] and "Δ OOD acc vs flyp" in lines[0] and "Δ OOD ECE vs flyp" in lines[0]
    carot = next(line for line in lines if line.startswith("carot "))
    id_acc = 100 * np.array(list(_by_seed(trials, "carot", "id_acc").values()))
    half = stats.t.ppf(0.975, 3) * id_acc.std(ddof=1) / 2
    assert carot.split()[1] == "4" and carot.split()[2] == f"{id_acc.mean():.1f}±{half:.1f}"
    carot_ece, flyp_ece = _by_seed(trials, "carot", "ood_ece"), _by_seed(trials, "flyp", "ood_ece")
    mean, low, high, _ = _t_interval([100 * (carot_ece[s] - flyp_ece[s]) for s in (0, 1, 2, 4)])
    assert f"{mean:+.1f} [{low:.1f}, {high:.1f}]*" in carot
    assert "Δ OOD ECE vs zeroshot" in lines[0]  # last column: every seed paired with the one zero-shot trial
    zeroshot_ece = _by_seed(trials, "zeroshot", "ood_ece")[0]
    mean, low, high, _ = _t_interval([100 * (value - zeroshot_ece) for value in carot_ece.values()])
    cell = f"{mean:+.1f} [{low:.1f}, {high:.1f}]"
    assert carot.endswith(cell) or carot.endswith(cell + "*")
    zeroshot = next(line for line in lines if line.startswith("zeroshot "))
    assert zeroshot.split()[1] == "1" and zeroshot.split()[2] == f"{100 * _by_seed(trials, 'zeroshot', 'id_acc')[0]:.1f}"
    flyp = next(line for line in lines if line.startswith("flyp "))
    assert flyp.split()[-5:-3] == ["–", "–"]  # no difference to itself; then its difference to zero-shot
    floors = [t["floors"] for t in trials]
    id_floor = np.mean([100 * f["mnist"] for f in floors])
    ood_floor = np.mean([100 * np.mean([f[n] for n in OOD]) for f in floors])
    assert lines[-1] == f"ECE noise floor (mean over trials, %): ID {id_floor:.1f}, OOD {ood_floor:.1f}"


def test_console_table_without_a_reference_or_floors(tmp_path):
    rng = np.random.default_rng(5)
    root = write_sweep(tmp_path / "old", [{"method": "carot", "seed": s, "values": random_values(rng), "schema": 1}
                                          for s in range(2)])
    text = tables.console_table(load([root]))
    assert "Δ" not in text and text.splitlines()[-1].startswith("ECE noise floor: not recorded")


def test_console_report(ablation, tmp_path):
    root, _, results = ablation
    assert tables.console_report(root) == tables.console_table(results)
    failed = tmp_path / "failed"
    failed.mkdir()
    (failed / "results.jsonl").write_text("".join(
        json.dumps({"trial": n, "state": "FAIL", "params": {"variant": "carot"}, "seed": n, "record": None}) + "\n"
        for n in range(3)))
    for out_dir in (failed, tmp_path / "absent", tmp_path):
        text = tables.console_report(out_dir)
        assert text.startswith("no results table: ") and "\n" not in text, text
    assert "3 problems" in tables.console_report(failed)


def test_console_report_mentions_failed_trials(tmp_path):
    trials = [t for t in ablation_trials() if t["variant"] in ("flyp", "carot")]
    root = write_sweep(tmp_path / "partial", trials,
                       [json.dumps({"trial": 99, "state": "FAIL", "params": {"variant": "carot"}, "seed": 3,
                                    "record": None})])
    text = tables.console_report(root)
    assert text.splitlines()[-1].startswith("1 trial(s) or lines left out: ") and "trial fail" in text
