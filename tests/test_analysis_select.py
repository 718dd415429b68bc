"""Selection of a sweep's parameter point on ID validation data (python -m analysis.select)."""

import subprocess
import sys

import numpy as np
import pytest
from test_analysis import nll_of, random_values, write_sweep

from analysis.select import main
from harness.core.cli import run_cli

# val NLL per (sd_weight, seed): sd 0.5 holds the single best trial (0.30) but sd 1.5 the best mean.
VAL_NLL = {(0.5, 0): 0.30, (0.5, 1): 0.50, (1.5, 0): 0.35, (1.5, 1): 0.36}


def _spec(path, out=None):
    lines = ["name: tiny", "base: {method: carot}", "search:", "  loss.sd_weight: {grid: [0.5, 1.5]}", "seeds: [0, 1]",
             "objectives:", "  - {key: val_nll, direction: minimize}", "  - {key: val_acc, direction: maximize}"]
    if out:
        lines.append(f"out: {out}")
    path.write_text("\n".join(lines) + "\n")
    return path


def _results(root):
    rng = np.random.default_rng(0)
    trials = []
    for (sd, seed), nll in VAL_NLL.items():
        values = random_values(rng)
        values["val"] = (1.5 - nll, 0.05)  # the records' val_nll is nll_of(val acc) = 1.5 - acc
        assert nll_of(values["val"][0]) == pytest.approx(nll)
        trials.append({"method": "carot", "seed": seed, "values": values, "loss": {"sd_weight": sd},
                       "ema": {"period": "2%"}})
    return write_sweep(root, trials)


def _run(argv, capsys):
    with pytest.raises(SystemExit) as exit_info:
        run_cli(main, argv)
    captured = capsys.readouterr()
    return exit_info.value.code, captured.out, captured.err


def test_selects_the_best_mean_over_seeds_not_the_best_trial(tmp_path, capsys):
    out = _results(tmp_path / "outputs" / "tiny")
    code, printed, _ = _run([str(_spec(tmp_path / "tiny.yaml")), "--out", str(out)], capsys)
    assert code == 0
    lines = printed.splitlines()
    means = {sd: np.mean([VAL_NLL[(sd, s)] for s in (0, 1)]) for sd in (0.5, 1.5)}
    stds = {sd: np.std([VAL_NLL[(sd, s)] for s in (0, 1)], ddof=1) for sd in (0.5, 1.5)}
    assert lines[0] == (f"chosen on val_nll (minimize, mean over seeds): loss.sd_weight=1.5  val_nll "
                        f"{means[1.5]:.4f} ± {stds[1.5]:.4f} (n=2 seeds)")
    ranked = [line.split() for line in lines[3:]]
    assert [row[0] for row in ranked] == ["1", "2"]
    assert [row[1] for row in ranked] == ["loss.sd_weight=1.5", "loss.sd_weight=0.5"]
    assert ranked[1][2:] == [f"{means[0.5]:.4f}", "±", f"{stds[0.5]:.4f}", "2"]


def test_output_dir_from_the_spec(tmp_path, capsys, monkeypatch):
    out = _results(tmp_path / "elsewhere")
    code, printed, _ = _run([str(_spec(tmp_path / "tiny.yaml", out=out))], capsys)
    assert code == 0 and "loss.sd_weight=1.5" in printed.splitlines()[0]
    monkeypatch.chdir(tmp_path)  # default: outputs/<name>, relative to the working directory
    _results(tmp_path / "outputs" / "tiny")
    code, printed, _ = _run([str(_spec(tmp_path / "tiny2.yaml"))], capsys)
    assert code == 0 and printed.startswith("chosen on val_nll")


def test_bad_input_exits_2_with_one_line(tmp_path, capsys):
    code, printed, err = _run([str(tmp_path / "absent.yaml")], capsys)
    assert code == 2 and err.startswith("error: ") and err.count("\n") == 1 and "no such file" in err and not printed
    spec = _spec(tmp_path / "tiny.yaml")
    code, _, err = _run([str(spec), "--out", str(tmp_path / "empty")], capsys)
    assert code == 2 and err.count("\n") == 1 and "no such directory" in err
    (tmp_path / "bad.yaml").write_text("name: tiny\nbase: {method: carot}\nsearch:\n  loss.sd_weight: {grid: []}\n")
    code, _, err = _run([str(tmp_path / "bad.yaml")], capsys)
    assert code == 2 and err.count("\n") == 1 and "empty grid" in err


def test_an_objective_no_trial_records_exits_2(tmp_path, capsys):
    out = _results(tmp_path / "run")
    spec = tmp_path / "ts.yaml"
    spec.write_text(_spec(tmp_path / "x.yaml").read_text().replace("{key: val_nll,", "{key: ts_val_nll,"))
    code, _, err = _run([str(spec), "--out", str(out)], capsys)
    assert code == 2 and err.splitlines()[-1] == "error: objective ts_val_nll: no finished trial records it in its summary"


def test_a_warning_is_printed_once(tmp_path):
    """As a user runs it: choosing on a test-set key warns, once (one handler on the root logger)."""
    out = _results(tmp_path / "run")
    spec = tmp_path / "id.yaml"
    spec.write_text(_spec(tmp_path / "x.yaml").read_text().replace("{key: val_nll,", "{key: id_nll,"))
    done = subprocess.run([sys.executable, "-m", "analysis.select", str(spec), "--out", str(out)],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stderr.count("is not an ID-validation key") == 1, done.stderr
