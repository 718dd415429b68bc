"""Warm workers of the local launcher: records equal to fresh processes', a killed worker's trial retried, a trial
that raises leaving its worker usable, nothing carried from one trial into the next, memory that stays bounded, and
workers started before the driver's checks that leave nothing behind on bad input and keep what they logged."""

from __future__ import annotations

import json
import logging
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from contextlib import closing
from pathlib import Path

import pytest
import torch
import yaml

from harness.commands.sweep import main as sweep_main
from harness.core.config import RunConfig
from harness.core.record import TrialOutcome
from harness.sweep.context import TrialContext
from harness.core.cli import run_cli
from harness.sweep.warm import WarmPool, _trial_scope, can_fork

TINY = {"model": {"name": "digit-vit-t", "pretrained": None}, "data": {"benchmark": "digitshift-small"},
        "optim": {"epochs": 1, "batch_size": 500, "warmup_steps": 2}, "eval": {"batch_size": 500, "bootstrap": 50}}


def _spec(tmp_path: Path, name: str, warm: bool, methods=("flyp", "carot", "ft"), parallelism: int = 1,
          **base) -> Path:
    spec = {"name": name, "base": {**TINY, **base}, "search": {"method": {"grid": list(methods)}}, "seeds": [0],
            "launcher": {"kind": "local", "parallelism": parallelism, "warm": warm},
            "tracking": {"mode": "disabled"}, "out": str(tmp_path / name)}
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def _records(out: Path) -> dict[str, dict]:
    lines = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    return {line["params"]["method"]: json.loads((out / line["record"]).read_text()) for line in lines
            if line["state"] == "COMPLETE"}


def _metrics(record: dict) -> dict:
    """Every result of a record: what must not depend on the process it ran in (timings and paths do)."""
    return {key: record[key] for key in ("status", "summary", "tests", "temperature_scaled", "teacher", "wise_ft",
                                         "spectrum", "history")}


@pytest.mark.slow
def test_warm_workers_give_the_records_of_fresh_processes(tmp_path, digitshift_small):
    """One worker runs two trials in turn (contrastive with a teacher, cross-entropy with a linear head); each record
    equals, metric for metric, the same trial's in its own process. The workers are new interpreters here: this
    process has run torch, so it must not fork them."""
    assert not can_fork()
    assert sweep_main([str(_spec(tmp_path, "warm", warm=True, methods=("carot", "ft")))]) == 0
    assert sweep_main([str(_spec(tmp_path, "fresh", warm=False, methods=("carot", "ft")))]) == 0
    warm, fresh = _records(tmp_path / "warm"), _records(tmp_path / "fresh")
    assert sorted(warm) == sorted(fresh) == ["carot", "ft"]
    assert len(list((tmp_path / "warm" / "jobs" / "workers").glob("worker-*.log"))) == 1  # both in one worker
    for method in warm:
        assert _metrics(warm[method]) == _metrics(fresh[method]), method


@pytest.mark.slow
@pytest.mark.skipif(sys.platform != "linux", reason="workers are forked on Linux only")
def test_workers_forked_by_the_command_give_fresh_records_and_exit_with_it(tmp_path, digitshift_small):
    """``python -m harness.sweep`` has run no torch op when it starts its workers, so it forks them: two workers run
    three trials whose records equal those of fresh processes (with as many threads), and every worker is gone soon
    after the command: a forked worker closes the driver's end of its socket, which it inherits, to see the driver
    leave."""
    methods = ("carot", "ft", "flyp")
    path = _spec(tmp_path, "forked", warm=True, methods=methods, parallelism=2)
    command = subprocess.run([sys.executable, "-m", "harness.sweep", str(path), "-v"], capture_output=True, text=True)
    assert command.returncode == 0, command.stderr[-2000:]
    assert command.stderr.count("forked warm worker") == 2, command.stderr[-2000:]
    assert sweep_main([str(_spec(tmp_path, "fresh", warm=False, methods=methods, parallelism=2))]) == 0  # same threads
    forked, fresh = _records(tmp_path / "forked"), _records(tmp_path / "fresh")
    assert sorted(forked) == sorted(fresh) == sorted(methods)
    for method in forked:
        assert _metrics(forked[method]) == _metrics(fresh[method]), method
    workers = {int(job) for job in _job_ids(tmp_path / "forked")}
    assert len(workers) == 2, workers
    deadline = time.time() + 30
    while time.time() < deadline and any(_running(pid) for pid in workers):
        time.sleep(0.1)
    assert not any(_running(pid) for pid in workers), "a forked worker outlived its driver"


def _running(pid: int) -> bool:
    """The process exists and is not a zombie (a forked worker's parent, the command, has exited: init reaps it)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def _job_ids(out: Path) -> list[str]:
    if not (out / "study.db").exists():
        return []
    try:
        with closing(sqlite3.connect(f"file:{out / 'study.db'}?mode=ro", uri=True)) as db:
            rows = db.execute("SELECT value_json FROM trial_user_attributes WHERE key = 'job_id'").fetchall()
    except sqlite3.OperationalError:
        return []
    return [json.loads(value) for (value,) in rows]


@pytest.mark.slow
def test_a_worker_killed_mid_trial_has_its_trial_retried(tmp_path, digitshift_small):
    out = tmp_path / "killed"
    path = _spec(tmp_path, "killed", warm=True, methods=("flyp",),
                 optim={**TINY["optim"], "epochs": 3, "batch_size": 100, "checkpoint_every": 5})
    killed: list[int] = []

    def kill_once_checkpointed():
        deadline = time.time() + 240
        while time.time() < deadline and not killed:
            runs = list((out / "runs").glob("*/checkpoint.pt")) if (out / "runs").exists() else []
            ids = _job_ids(out)
            if runs and ids:
                os.kill(int(ids[0]), signal.SIGKILL)
                killed.append(int(ids[0]))
            time.sleep(0.05)

    killer = threading.Thread(target=kill_once_checkpointed)
    killer.start()
    assert sweep_main([str(path)]) == 0
    killer.join()
    assert killed, "the worker was never seen with a checkpoint"
    lines = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    states = sorted(line["state"] for line in lines)
    assert states == ["COMPLETE", "FAIL"], states  # the killed attempt, then its retry
    failed = next(line for line in lines if line["state"] == "FAIL")
    assert f"warm worker {killed[0]} died" in failed["error"]
    record = json.loads((out / next(line for line in lines if line["state"] == "COMPLETE")["record"]).read_text())
    assert record["status"] == "ok" and record["resumed_from_step"] is not None and record["resumed_from_step"] > 0


def test_bad_input_found_while_the_workers_start_leaves_no_output_folder(tmp_path, capsys):
    """The workers start before the driver's checks; a missing weights file (found by the check, not the spec's
    validation) still exits 2 with one line, and nothing is written under OUT."""
    path = _spec(tmp_path, "bad", warm=True, parallelism=2, model={"name": "digit-vit-t",
                                                                    "pretrained": str(tmp_path / "missing.pt")})
    with pytest.raises(SystemExit) as exit_info:
        run_cli(sweep_main, [str(path)])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "missing.pt: no such weights file" in err[0], err
    assert not (tmp_path / "bad").exists()


def test_what_a_worker_logged_before_the_checks_passed_moves_to_its_log_file(tmp_path):
    """Until ``LogTo`` a worker writes to an anonymous temporary file; ``_log_to`` copies that into the log file and
    sends the rest there. Run in a child process, whose standard streams it may replace."""
    log = tmp_path / "worker-1.log"
    script = ("import sys; from pathlib import Path; from harness.sweep.warm import _log_to\n"
              "print('before the checks'); print('on stderr', file=sys.stderr)\n"
              f"_log_to(Path({str(log)!r}))\n"
              "print('after'); print('stderr after', file=sys.stderr)\n")
    with open(tmp_path / "early", "w+b") as early:
        subprocess.run([sys.executable, "-c", script], stdout=early, stderr=subprocess.STDOUT, check=True)
    assert log.read_text().splitlines() == ["before the checks", "on stderr", "after", "stderr after"]


def test_a_worker_that_dies_before_the_checks_pass_leaves_its_output_in_its_log(tmp_path):
    pool = WarmPool(tmp_path / "workers", 1)
    try:
        pool.start()
        worker = pool.workers[0]
        worker.process.kill()
        worker.process.wait()
        worker.early_log.write(b"Traceback: what killed it\n")  # the driver's handle on the worker's temporary log
        pool.keep_logs()
        assert worker.log.read_text() == "Traceback: what killed it\n"
    finally:
        pool.close()


def _config(tmp_path: Path, name: str, **changes) -> dict:
    return RunConfig.model_validate({**TINY, "method": "flyp", "tracking": {"mode": "disabled"},
                                     "optim": {**TINY["optim"], "batch_size": 1000},
                                     "eval": {"batch_size": 500, "bootstrap": 0, "temperature_scaling": False},
                                     "run_dir": str(tmp_path / name), **changes}).model_dump(mode="json")


def test_a_trial_that_raises_leaves_its_worker_able_to_run_the_next(tmp_path, digitshift_small):
    pool = WarmPool(tmp_path / "workers", 1)
    try:
        broken = _config(tmp_path, "broken")
        broken["optim"]["lr"] = -1.0  # fails the job body's validation, inside the worker
        job = pool.submit(broken, None, 2)
        while not job.done():
            time.sleep(0.05)
        with pytest.raises(RuntimeError, match="optim.lr"):
            job.results()
        again = pool.submit(_config(tmp_path, "next"), None, 2)
        while not again.done():
            time.sleep(0.05)
        outcome = again.results()[0]
        assert isinstance(outcome, TrialOutcome) and outcome.status == "ok", outcome.error
        assert again.job_id == job.job_id  # the same worker process
    finally:
        pool.close()


def test_nothing_a_trial_changes_reaches_the_next(tmp_path, monkeypatch):
    import wandb

    monkeypatch.setenv("WANDB_SILENT", "true")
    root, named = logging.getLogger(), logging.getLogger("harness.some.module")
    handlers, threads, level = list(root.handlers), torch.get_num_threads(), named.level
    with _trial_scope():
        os.environ["CAROT_LEAK"] = "1"
        torch.set_num_threads(1 if threads > 1 else 2)
        torch.set_grad_enabled(False)
        root.addHandler(logging.StreamHandler())
        named.setLevel(logging.CRITICAL)
        wandb.init(mode="offline", dir=str(tmp_path), project="leak")  # a trial that failed before finishing it
    assert "CAROT_LEAK" not in os.environ and torch.get_num_threads() == threads and torch.is_grad_enabled()
    assert root.handlers == handlers and named.level == level and wandb.run is None


def _rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError("no VmRSS")


@pytest.mark.slow
def test_memory_after_twenty_trials_stays_within_a_tenth_of_after_two(tmp_path, digitshift_small):
    pool = WarmPool(tmp_path / "workers", 1)
    sizes = {}
    try:
        for index in range(20):
            job = pool.submit(_config(tmp_path, f"run{index}", seed=index), None, 2)
            while not job.done():
                time.sleep(0.05)
            assert job.results()[0].status == "ok"
            if index + 1 in (2, 20):
                sizes[index + 1] = _rss_kib(int(job.job_id))
    finally:
        pool.close()
    assert sizes[20] <= 1.10 * sizes[2], sizes


@pytest.mark.slow
def test_offline_runs_of_one_worker_stay_readable_one_per_trial(tmp_path, digitshift_small):
    wandb_cli = Path(sys.executable).with_name("wandb")
    pool = WarmPool(tmp_path / "workers", 1)
    outcomes = []
    try:
        for method in ("flyp", "ft"):
            config = _config(tmp_path, method, method=method, tracking={"mode": "offline"})
            job = pool.submit(config, TrialContext(sweep="warm", wandb_dir=str(tmp_path)), 2)
            while not job.done():
                time.sleep(0.05)
            outcomes.append(job.results()[0])
    finally:
        pool.close()
    files = sorted((tmp_path / "wandb").glob("offline-run-*/run-*.wandb"))
    assert len(files) == 2
    for method, outcome in zip(("flyp", "ft"), outcomes):
        run_id = (tmp_path / method / "wandb_id.txt").read_text()
        file = next(f for f in files if f.name == f"run-{run_id}.wandb")
        state = json.loads(subprocess.run([str(wandb_cli), "leet", "inspect", "--json", "--summary", str(file)],
                                          capture_output=True, text=True, timeout=120, check=True).stdout)
        assert state["state"] == "finished" and state["config"]["method"] == method
        assert state["summary"]["val_acc"] == pytest.approx(outcome.summary["val_acc"])
