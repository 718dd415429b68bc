import json
import os
import signal
import subprocess
import sys
import time

import optuna
import pytest
import torch
import yaml

from harness.commands.sweep import main as sweep_main
from harness.models.clip import create_model
from harness.sweep.spec import grid_points, load_spec

TINY = {"model": {"name": "digit-vit-t", "pretrained": None}, "data": {"benchmark": "digitshift-small"},
        "optim": {"epochs": 1, "batch_size": 200, "warmup_steps": 2}, "eval": {"batch_size": 500}}


def _spec(tmp_path, name="s", **fields):
    data = {"name": name, "base": TINY, "search": {"method": {"grid": ["flyp", "ft"]}}, "seeds": [0],
            "launcher": {"kind": "local", "parallelism": 2}, "tracking": {"mode": "disabled"},
            "out": str(tmp_path / "out"), **fields}
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def _results(out):
    return [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]


def _study(out, name):
    return optuna.load_study(study_name=name, storage=f"sqlite:///{out / 'study.db'}")


def test_variant_seeds_give_a_deterministic_row_one_trial(tmp_path):
    spec = load_spec(_spec(tmp_path, variants={"zs": ["method=zeroshot"], "ft": ["method=ft"]},
                           search={"variant": {"grid": ["zs", "ft"]}}, seeds=[0, 1, 2], variant_seeds={"zs": [0]}))
    assert grid_points(spec) == [({"variant": "zs"}, 0), ({"variant": "ft"}, 0), ({"variant": "ft"}, 1),
                                 ({"variant": "ft"}, 2)]


def test_grid_points_cross_seeds(tmp_path):
    spec = load_spec(_spec(tmp_path, search={"method": {"grid": ["flyp", "carot"]},
                                             "loss.label_smoothing": {"grid": [0.0, 0.1]}}, seeds=[0, 1]))
    points = grid_points(spec)
    assert len(points) == 8
    assert points[:2] == [({"method": "flyp", "loss.label_smoothing": 0.0}, 0),
                          ({"method": "flyp", "loss.label_smoothing": 0.0}, 1)]
    assert len({json.dumps(p, sort_keys=True) + str(s) for p, s in points}) == 8


@pytest.mark.parametrize("fields, words", [
    ({"colour": "red"}, "colour: unknown key"),
    ({"search": {"loss.sd_weight": {"low": 2.0, "high": 1.0}}, "sampler": {"name": "random"}, "n_trials": 2},
     "low < high"),
    ({"search": {"method": {"grid": []}}}, "empty grid"),
    ({"search": {"method": {"grid": ["flyp", "sgd"]}}}, "method"),
    ({"search": {"loss.sd_weight": {"low": 0.1, "high": 1.0}}}, "sampler grid cannot search the ranges"),
    ({"search": {"optim.lrr": {"grid": [1e-3]}}}, "optim.lrr: unknown key"),
    ({"launcher": {"kind": "slurm", "profile": "no-such-cluster"}}, "no SLURM profile 'no-such-cluster'"),
    ({"storage": "mysql://user:secret@127.0.0.1/studies"}, "'mysql://user:***@127.0.0.1/studies': sweeps support"),
    ({"objectives": [{"key": "val_accuracy", "direction": "maximize"}]}, "'val_accuracy' is not a summary key"),
    ({"objectives": [{"key": "teacher_id_acc", "direction": "maximize"}]}, "not a summary key of the trials of method=flyp"),
    ({"pruner": {"name": "median", "metric": "ood_acc"}}, "pruner.metric: Input should be 'val_acc', 'val_ece' or 'val_nll'"),
    ({"variants": {"a": ["method=flyp"]}, "search": {"variant": {"grid": ["a"]}}, "variant_seeds": {"b": [0]}},
     "variant_seeds names ['b'] missing from variants"),
])
def test_bad_specs_exit_2_before_anything_starts(tmp_path, capsys, fields, words):
    path = _spec(tmp_path, **fields)
    with pytest.raises(SystemExit) as exit_info:
        from harness.core.cli import run_cli

        run_cli(sweep_main, [str(path)])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and words in err[0], err
    assert not (tmp_path / "out" / "study.db").exists()


def test_dry_run_launches_nothing(tmp_path, capsys):
    assert sweep_main([str(_spec(tmp_path)), "--dry-run", "--parallelism", "3"]) == 0
    out = capsys.readouterr().out
    assert "2 trials, launcher local (parallelism 3)" in out and "method='ft' | seed=0" in out
    assert not (tmp_path / "out").exists()


@pytest.fixture(scope="module")
def finished_sweep(tmp_path_factory, private_cache):
    tmp_path = tmp_path_factory.mktemp("sweep")
    path = _spec(tmp_path, name="local")
    assert sweep_main([str(path)]) == 0
    return tmp_path, path


@pytest.mark.slow
def test_local_sweep_end_to_end(finished_sweep):
    tmp_path, _ = finished_sweep
    out = tmp_path / "out"
    lines = _results(out)
    assert sorted(line["params"]["method"] for line in lines) == ["flyp", "ft"]
    assert all(line["state"] == "COMPLETE" and line["values"] == [line["summary"]["val_acc"]] for line in lines)
    for line in lines:
        record = json.loads((out / line["record"]).read_text())
        assert record["status"] == "ok" and record["method"] == line["params"]["method"]
        assert record["summary"]["val_acc"] == line["summary"]["val_acc"]


@pytest.mark.slow
def test_rerunning_a_finished_sweep_repeats_nothing(finished_sweep, capsys):
    tmp_path, path = finished_sweep
    out = tmp_path / "out"
    assert sweep_main([str(path)]) == 0
    assert len(_results(out)) == 2 and len(_study(out, "local").trials) == 2
    printed = capsys.readouterr().out.splitlines()  # the closing results table, from the records
    assert any(line.startswith("flyp ") for line in printed) and any(line.startswith("ECE noise floor") for line in printed)


@pytest.mark.slow
def test_a_different_sweep_under_the_same_name_is_refused(finished_sweep, capsys):
    tmp_path, path = finished_sweep
    data = yaml.safe_load(path.read_text())
    data["seeds"] = [0, 1]
    path.with_name("changed.yaml").write_text(yaml.safe_dump(data))
    from harness.core.cli import run_cli

    with pytest.raises(SystemExit) as info:
        run_cli(sweep_main, [str(path.with_name("changed.yaml"))])
    assert info.value.code == 2
    assert "a different study named 'local' already exists" in capsys.readouterr().err
    assert len(_results(tmp_path / "out")) == 2


@pytest.mark.slow
def test_failing_trial_is_recorded_retried_and_named(tmp_path, caplog):
    torch.manual_seed(0)
    model, _ = create_model("digit-vit-t", None)
    state = model.state_dict()
    state["logit_scale"] = torch.tensor(float("nan"))
    torch.save(state, tmp_path / "nan.pt")
    path = _spec(tmp_path, name="failing", variants={"broken": [f"model.pretrained={tmp_path / 'nan.pt'}"], "fine": []},
                 search={"variant": {"grid": ["broken", "fine"]}, "method": {"grid": ["flyp"]}},
                 launcher={"kind": "local", "parallelism": 2, "max_retries": 1})
    assert sweep_main([str(path)]) == 1
    lines = _results(tmp_path / "out")
    broken = [line for line in lines if line["params"]["variant"] == "broken"]
    assert [line["state"] for line in broken] == ["FAIL", "FAIL"]  # first try + one retry
    assert "non-finite loss" in broken[0]["error"]
    assert [line["state"] for line in lines if line["params"]["variant"] == "fine"] == ["COMPLETE"]
    assert "failed trials: trial" in caplog.text
    assert "--set launcher.max_retries=2 runs them again" in caplog.text  # how to go on, once the cause is fixed
    caplog.clear()
    assert sweep_main([str(path), "--set", "launcher.max_retries=2"]) == 1  # as it says: one more try (still NaN)
    broken = [line for line in _results(tmp_path / "out") if line["params"]["variant"] == "broken"]
    assert [line["state"] for line in broken] == ["FAIL", "FAIL", "FAIL"]


@pytest.mark.slow
def test_killed_driver_resumes_without_losing_or_repeating(tmp_path):
    path = _spec(tmp_path, name="killed", search={"method": {"grid": ["flyp", "ft", "lp"]}},
                 launcher={"kind": "local", "parallelism": 1})
    out = tmp_path / "out"
    env = {**os.environ}
    driver = subprocess.Popen([sys.executable, "-m", "harness.sweep", str(path)], env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 240
    while time.time() < deadline and not ((out / "results.jsonl").exists() and _results(out)):
        time.sleep(0.5)
    assert _results(out), "the first trial did not finish in time"
    driver.send_signal(signal.SIGKILL)
    driver.wait()
    assert sweep_main([str(path)]) == 0
    lines = _results(out)
    complete = [line for line in lines if line["state"] == "COMPLETE"]
    assert sorted(line["params"]["method"] for line in complete) == ["flyp", "ft", "lp"]
    assert len({line["trial"] for line in lines}) == len(lines)
    states = [t.state.name for t in _study(out, "killed").trials]
    assert states.count("COMPLETE") == 3


@pytest.mark.slow
def test_sampled_points_run_once_per_seed(tmp_path):
    path = _spec(tmp_path, name="sampled", search={"optim.lr": {"low": 1e-5, "high": 1e-3, "log": True}},
                 base={**TINY, "method": "ft"}, sampler={"name": "random", "seed": 3}, n_trials=2, seeds=[0, 1])
    assert sweep_main([str(path)]) == 0
    lines = _results(tmp_path / "out")
    assert len(lines) == 4 and all(line["state"] == "COMPLETE" for line in lines)
    by_lr = {}
    for line in lines:
        by_lr.setdefault(line["params"]["optim.lr"], []).append(line["seed"])
    assert sorted(map(sorted, by_lr.values())) == [[0, 1], [0, 1]]
    for line in lines:
        record = json.loads((tmp_path / "out" / line["record"]).read_text())
        assert record["config"]["optim"]["lr"] == line["params"]["optim.lr"] and record["config"]["seed"] == line["seed"]


def test_slurm_launcher_without_slurm_is_a_usage_error(tmp_path, monkeypatch):
    from harness.core.errors import UsageError
    from harness.sweep.jobs import make_executor

    monkeypatch.setenv("PATH", str(tmp_path))  # no srun, sbatch, squeue
    with pytest.raises(UsageError, match='launcher slurm: Could not detect "srun"'):
        make_executor("slurm", tmp_path, 2, "gpu-1")


@pytest.mark.slow
def test_resume_after_a_driver_died_between_enqueueing_asking_and_submitting(tmp_path):
    from harness.sweep.driver import Sweep
    from harness.sweep.study import open_study

    path = _spec(tmp_path, name="torn", search={"method": {"grid": ["flyp", "ft", "lp"]}})
    spec = load_spec(path)
    out = tmp_path / "out"
    out.mkdir()
    sweep = Sweep(spec, tmp_path, out, f"sqlite:///{out / 'study.db'}")
    study = open_study(spec, sweep.storage)
    (first, seed), (second, _), _ = grid_points(spec)
    study.enqueue_trial(first, user_attrs={"point": "method='flyp' | seed=0", "seed": seed})
    study.ask()  # asked, never submitted
    study.enqueue_trial(second, user_attrs={"point": "method='ft' | seed=0", "seed": seed})  # never asked
    assert sweep_main([str(path)]) == 0
    complete = [line for line in _results(out) if line["state"] == "COMPLETE"]
    assert sorted(line["params"]["method"] for line in complete) == ["flyp", "ft", "lp"]
    failed = [line for line in _results(out) if line["state"] == "FAIL"]
    assert [(line["point"], line["error"]) for line in failed] == [("method='flyp' | seed=0", "interrupted before launch")]
    assert len(_study(out, "torn").trials) == 4  # the waiting point was run as it was, not queued again
