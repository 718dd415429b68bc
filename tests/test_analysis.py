import json
import math

import numpy as np
import pytest
from PIL import Image
from scipy import stats

from analysis import tables
from analysis.comparison import pareto_mask
from analysis.figures import main as figures_main
from analysis.load import NoResultsError, load
from analysis.reliability import pooled_bins
from analysis.spectrum import correlations

SETS = ["val", "mnist", "uci", "rendered"]


def _bins(accuracy, confidence, count):
    return {"lower": [0.0, 0.5], "upper": [0.5, 1.0], "count": count, "accuracy": accuracy, "confidence": confidence}


def _record(method, seed, sd, ls, values, rng):
    tests = {}
    for name in SETS:
        acc, ece = values[name]
        tests[name] = {"acc": acc, "ece": ece, "mce": ece, "adaptive_ece": ece, "classwise_ece": ece / 10, "nll": 1.0,
                       "brier": 0.2, "confidence": acc, "n": 100,
                       "reliability": _bins([None, acc], [None, min(1.0, acc + ece)], [0, 100])}
    ood = ["uci", "rendered"]
    summary = {"val_acc": values["val"][0], "val_ece": values["val"][1], "val_nll": 1.0,
               "id_acc": values["mnist"][0], "id_ece": values["mnist"][1],
               "ood_acc": float(np.mean([values[n][0] for n in ood])), "ood_ece": float(np.mean([values[n][1] for n in ood])),
               "sigma_min": float(rng.uniform(1e-6, 9e-6)), "sigma_min_pretrained": 5e-6}
    return {"schema": 1, "status": "ok", "method": method, "id_test": "mnist", "ood_tests": ood,
            "config": {"method": method, "seed": seed, "run_dir": f"r/{method}-{seed}",
                       "loss": {"sd_weight": sd, "label_smoothing": ls}, "ema": {"period": 5}},
            "summary": summary, "tests": tests,
            "wise_ft": [{"alpha": a, "summary": summary, "tests": {}} for a in (0.0, 1.0)]}


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    """A hand-made sweep: flyp and a 2x2 carot grid over sd_weight x label_smoothing, 3 seeds, with known numbers."""
    root = tmp_path_factory.mktemp("sweep") / "ablation"
    root.mkdir()
    rng = np.random.default_rng(0)
    variants = [("flyp", 0.0, 0.0)] + [("carot", sd, ls) for sd in (0.5, 1.0) for ls in (0.0, 0.1)]
    lines, expected = [], {}
    for number, (method, sd, ls) in enumerate((v for v in variants for _ in range(3))):
        seed = number % 3
        values = {name: (float(rng.uniform(0.5, 0.95)), float(rng.uniform(0.01, 0.1))) for name in SETS}
        record = _record(method, seed, sd, ls, values, rng)
        path = root / f"trial-{number}" / "record.json"
        path.parent.mkdir()
        path.write_text(json.dumps(record))
        expected.setdefault((method, sd, ls), []).append(values)
        lines.append(json.dumps({"trial": number, "state": "COMPLETE", "params": {}, "seed": seed,
                                 "summary": record["summary"], "record": f"trial-{number}/record.json"}))
    lines.append('{"trial": 99, "state": "COMPLETE", "rec')  # a line cut off by a crash
    lines.append(json.dumps({"trial": 100, "state": "FAIL", "params": {}, "seed": 0, "record": None}))
    (root / "results.jsonl").write_text("\n".join(lines) + "\n")
    return root, expected


def test_load_reads_trials_and_reports_bad_lines(sweep):
    root, expected = sweep
    results = load([root])
    assert len(results.trials) == 15 and len(results.sets) == 15 * len(SETS)
    assert any("results.jsonl:16: not valid JSON" in p for p in results.problems)
    assert any("trial fail" in p for p in results.problems)
    assert results.trials["variant"].nunique() == 5
    assert "carot (label_smoothing=0.1, sd_weight=0.5)" in set(results.trials["variant"])


def test_table_statistics_equal_an_independent_computation(sweep):
    root, expected = sweep
    statistics = tables.cell_statistics(load([root])).set_index(["variant", "column"])
    values = [100 * v["uci"][1] for v in expected[("carot", 1.0, 0.1)]]
    row = statistics.loc[("carot (label_smoothing=0.1, sd_weight=1.0)", "uci ECE")]
    assert row["mean"] == pytest.approx(np.mean(values))
    assert row["std"] == pytest.approx(np.std(values, ddof=1))
    assert row["ci95"] == pytest.approx(stats.t.ppf(0.975, 2) * np.std(values, ddof=1) / math.sqrt(3))
    id_acc = {key: np.mean([100 * v["mnist"][0] for v in runs]) for key, runs in expected.items()}
    best = statistics.xs("ID acc", level="column")["best"]
    assert best.sum() == 1 and best.idxmax().startswith(max(id_acc, key=id_acc.get)[0])
    id_ece = {key: np.mean([100 * v["mnist"][1] for v in runs]) for key, runs in expected.items()}
    best_ece = statistics.xs("ID ECE", level="column")
    assert best_ece.loc[best_ece["best"], "mean"].item() == pytest.approx(min(id_ece.values()))


def test_latex_table_is_well_formed(sweep):
    latex = tables.to_latex(tables.cell_statistics(load([sweep[0]])))
    lines = latex.splitlines()
    assert lines[0] == r"\begin{table}[t]" and lines[-1] == r"\end{table}"
    assert latex.count(r"\toprule") == latex.count(r"\midrule") == latex.count(r"\bottomrule") == 1
    body = [line for line in lines if line.endswith(r"\\")]
    assert len(body) == 1 + 5 and len({line.count("&") for line in body}) == 1
    assert latex.count("{") == latex.count("}")
    assert r"\textbf{" in latex and "_" not in latex.replace(r"\_", "")


def test_correlations_equal_numpy():
    rng = np.random.default_rng(1)
    x = rng.normal(size=40)
    y = 2 * x + rng.normal(size=40)
    result = correlations(x, y)
    assert result["pearson_r"] == pytest.approx(np.corrcoef(x, y)[0, 1])
    ranks = lambda v: np.argsort(np.argsort(v))  # noqa: E731  (no ties in continuous data)
    assert result["spearman_rho"] == pytest.approx(np.corrcoef(ranks(x), ranks(y))[0, 1])
    slope, intercept = np.linalg.lstsq(np.stack([x, np.ones_like(x)], 1), y, rcond=None)[0]
    assert result["slope"] == pytest.approx(slope) and result["intercept"] == pytest.approx(intercept)


def test_pareto_mask_by_hand():
    accuracy = np.array([90, 85, 92, 80, 92])
    ece = np.array([5, 3, 6, 4, 7])
    assert pareto_mask(accuracy, ece).tolist() == [True, True, True, False, False]


def test_pooled_bins_weight_by_count():
    records = [{"tests": {"s": {"reliability": _bins([None, 0.8], [None, 0.9], [0, 10])}}},
               {"tests": {"s": {"reliability": _bins([0.2, 0.5], [0.3, 0.7], [10, 30])}}}]
    pooled = pooled_bins(records, "s")
    assert pooled["count"].tolist() == [10, 40]
    assert pooled["accuracy"][1] == pytest.approx((0.8 * 10 + 0.5 * 30) / 40)
    assert pooled["confidence"][0] == pytest.approx(0.3)


def _not_blank(path):
    pixels = np.asarray(Image.open(path).convert("L"), float)
    return pixels.std() > 5


def test_cli_writes_every_supported_figure(sweep, tmp_path, capsys):
    out = tmp_path / "figures"
    assert figures_main([str(sweep[0]), "--out", str(out)]) == 0
    for name in ("headline", "reliability", "sigma_min_evidence", "sigma_min_before_after", "sensitivity_heatmaps",
                 "tradeoff", "pareto"):
        assert (out / f"{name}.pdf").stat().st_size > 1000, name
        assert _not_blank(out / f"{name}.png"), name
    report = (out / "report.md").read_text()
    assert "![Headline comparison](headline.png)" in report and "results.jsonl:16" in report
    printed = capsys.readouterr()
    assert "skipped EMA-period curves: ema.period does not vary" in printed.out
    assert "not valid JSON" in printed.err


def test_cli_on_an_empty_directory_exits_2(tmp_path, capsys):
    assert figures_main([str(tmp_path)]) == 2
    assert "error: no finished trials" in capsys.readouterr().err
    with pytest.raises(NoResultsError, match="no such directory"):
        load([tmp_path / "absent"])


def test_ema_period_curves_are_drawn(tmp_path):
    import pandas as pd

    from analysis.sensitivity import period_figure
    from analysis.style import save

    rows = [{"ema.period": p, "ood_acc": 0.6 + 0.01 * s, "ood_ece": 0.05, "id_acc": 0.9, "id_ece": 0.03 + 0.001 * s}
            for p in (1, 5, 20) for s in range(3)]
    png, pdf = save(period_figure(pd.DataFrame(rows)), tmp_path, "period")
    assert _not_blank(png) and pdf.stat().st_size > 1000


def test_load_from_an_optuna_storage_equals_load_from_the_results_file(sweep, tmp_path):
    import optuna

    root, _ = sweep
    storage = f"sqlite:///{tmp_path / 'study.db'}"
    study = optuna.create_study(study_name="ablation", storage=storage)
    for line in (root / "results.jsonl").read_text().splitlines():
        try:
            entry = json.loads(line)
        except json.JSONDecodeError:
            continue
        trial = study.ask()
        if entry.get("record"):
            trial.set_user_attr("record", str(root / entry["record"]))
            study.tell(trial, entry["summary"]["val_acc"])
        else:
            study.tell(trial, state=optuna.trial.TrialState.FAIL)
    from_storage, from_file = load([storage]), load([root])
    assert len(from_storage.trials) == len(from_file.trials) == 15
    assert sorted(from_storage.trials["ood_ece"]) == sorted(from_file.trials["ood_ece"])


def test_wandb_source_fails_clearly_without_network(monkeypatch, tmp_path):
    monkeypatch.setenv("WANDB_API_KEY", "")
    monkeypatch.setenv("WANDB_CONFIG_DIR", str(tmp_path))
    monkeypatch.setenv("HOME", str(tmp_path))
    with pytest.raises(NoResultsError, match="wandb:me/carot: W&B's API is unreachable"):
        load(["wandb:me/carot"])
