"""Sweeps through a real SLURM: the one-node cluster tests/slurm/start-local-cluster.sh starts (.ci/run does)."""

import json
import sqlite3
import subprocess
import sys
import time
from contextlib import closing
from pathlib import Path

import optuna
import pytest
import submitit
import torch
import yaml

from harness.commands.sweep import main as sweep_main
from harness.core.config import RunConfig
from harness.trial.runner import run

pytestmark = pytest.mark.slow  # a real SLURM cluster: minutes

ROOT = Path(__file__).resolve().parent.parent



def _results(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]


def test_smoke_sweep_through_slurm(slurm_cluster, tmp_path, private_cache):
    out = tmp_path / "out"
    assert sweep_main([str(ROOT / "sweeps" / "smoke.yaml"), "--launcher", "slurm", "--profile", str(slurm_cluster),
                       "--out", str(out)]) == 0
    lines = _results(out)
    assert sorted(line["params"]["method"] for line in lines) == ["carot", "flyp"]
    assert all(line["state"] == "COMPLETE" for line in lines)
    trials = optuna.load_study(study_name="smoke", storage=f"sqlite:///{out / 'study.db'}").trials
    assert {t.user_attrs["launcher"] for t in trials} == {"slurm"}
    array_ids = {t.user_attrs["job_id"].split("_")[0] for t in trials}  # SLURM job ids ARRAY_INDEX, not local pids
    assert len(array_ids) == 1 and sorted(t.user_attrs["job_id"].split("_")[1] for t in trials) == ["0", "1"]


def _job_ids(out: Path) -> list[str]:
    """The SLURM job ids the driver has recorded in the study so far.

    Read-only SQL: opening the study with Optuna would create its schema, racing the driver that is creating it.
    """
    if not (out / "study.db").exists():
        return []
    try:
        with closing(sqlite3.connect(f"file:{out / 'study.db'}?mode=ro", uri=True)) as db:
            rows = db.execute("SELECT value_json FROM trial_user_attributes WHERE key = 'job_id'").fetchall()
    except sqlite3.OperationalError:  # schema not created yet, or the driver holds a write lock
        return []
    return [json.loads(value) for (value,) in rows]


def _submit_driver(command: list[str]) -> str:
    """Run the submitting command; the driver's SLURM job id it prints."""
    done = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return done.stdout.split("SLURM job ")[1].split(",")[0]


def _wait_for(condition, timeout_s: float, what: str) -> None:
    deadline = time.time() + timeout_s
    while not condition():
        assert time.time() < deadline, f"{what}: not within {timeout_s} s"
        time.sleep(0.5)


def _in_queue(job_id: str) -> bool:
    return job_id in subprocess.run(["squeue", "-h", "-o", "%i"], capture_output=True, text=True).stdout.split()


def test_a_driver_job_cancelled_mid_sweep_is_resubmitted_and_adopts_its_trials(slurm_cluster, tmp_path, private_cache):
    """The driver runs as a SLURM job (--driver-job); scancel it once both trial jobs are submitted; the same
    command again submits a new driver job, which waits for the running trial jobs (squeue) and takes their records:
    every point once, nothing submitted twice."""
    out = tmp_path / "out"
    command = [sys.executable, "-m", "harness.sweep", str(ROOT / "sweeps" / "smoke.yaml"), "--launcher", "slurm",
               "--profile", str(slurm_cluster), "--out", str(out), "--driver-job"]
    first = _submit_driver(command)
    _wait_for(lambda: len(_job_ids(out)) == 2, 180, "the driver job submitting both trial jobs")
    subprocess.run(["scancel", first], check=True)
    _wait_for(lambda: not _in_queue(first), 60, "the cancelled driver job leaving the queue")
    second = _submit_driver(command)
    _wait_for(lambda: not _in_queue(second), 300, "the resubmitted driver job finishing")
    trials = optuna.load_study(study_name="smoke", storage=f"sqlite:///{out / 'study.db'}").trials
    assert len(trials) == 2 and {t.state.name for t in trials} == {"COMPLETE"}
    assert len(list((out / "jobs").glob("*_submitted.pkl"))) == 2  # nothing was submitted again
    assert sorted(line["params"]["method"] for line in _results(out)) == ["carot", "flyp"]
    assert submitit.SlurmJob(folder=out / "driver", job_id=second).result() == 0  # the driver job's exit code


def _signal_at_first_checkpoint(out: Path, timeout_s: float = 240) -> list[str]:
    """Once the trial has written its first checkpoint, send its job SIGUSR2, as SLURM does before a time limit
    (``--signal``) or a preemption; returns the job ids signalled (none if no checkpoint came in time)."""
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        submitted = sorted((out / "jobs").glob("*_submitted.pkl")) if (out / "jobs").exists() else []
        if submitted and list(out.glob("**/checkpoint.pt")):
            job_ids = [path.name.split("_")[0] for path in submitted]
            subprocess.run(["scancel", "--signal=USR2", *job_ids], check=True)
            return job_ids
        time.sleep(0.1)
    return []


def test_a_signalled_trial_is_requeued_and_resumes_to_the_same_result(slurm_cluster, tmp_path, private_cache):
    """SIGUSR2 mid-training, as SLURM sends it before a job's time limit: submitit checkpoints, SLURM requeues the
    job and the trial resumes from its own checkpoint; its record equals that of the same trial run without
    interruption. (The signal is sent once the trial's first checkpoint exists, rather than waiting for SLURM's
    1-minute minimum limit, whose signal comes 10-40 s in and made this test take 8-15 minutes of requeues.)"""
    from concurrent.futures import ThreadPoolExecutor

    profile = tmp_path / "short.yaml"
    profile.write_text(yaml.safe_dump({"cpus_per_task": 2, "mem_gb": 4, "timeout_min": 5, "signal_delay_s": 20,
                                       "max_timeouts": 3}))
    base = {"model": {"name": "digit-vit-t", "pretrained": None}, "data": {"benchmark": "digitshift-small"},
            "optim": {"epochs": 3, "batch_size": 100, "warmup_steps": 2, "checkpoint_every": 4},
            "eval": {"batch_size": 500}}
    spec = tmp_path / "timeout.yaml"
    out = tmp_path / "out"
    spec.write_text(yaml.safe_dump({"name": "timeout", "base": base, "search": {"method": {"grid": ["flyp"]}},
                                    "seeds": [0], "launcher": {"kind": "slurm", "profile": str(profile),
                                                               "parallelism": 1},
                                    "tracking": {"mode": "disabled"}, "out": str(out)}))
    with ThreadPoolExecutor(1) as pool:
        signalled = pool.submit(_signal_at_first_checkpoint, out)
        assert sweep_main([str(spec)]) == 0
        assert signalled.result(), "the trial wrote no checkpoint in time"
    (line,) = _results(out)
    assert line["state"] == "COMPLETE"
    record = json.loads((tmp_path / "out" / line["record"]).read_text())
    assert record["resumed_from_step"] > 0, "the job was not requeued mid-training (it finished within one attempt)"

    import torch

    torch.set_num_threads(2)  # as the job ran: threads_per_job(1) on this 2-core machine
    config = RunConfig.model_validate({**record["config"], "run_dir": str(tmp_path / "reference")})
    reference = run(config, progress=False)
    assert reference.resumed_from_step in (0, None)
    for key, value in reference.summary.items():
        assert record["summary"][key] == pytest.approx(value, abs=1e-6), key


def _flat(state: dict) -> torch.Tensor:
    return torch.cat([value.float().flatten() for key, value in sorted(state.items()) if value.is_floating_point()])


def test_a_two_task_trial_trains_one_model_over_both_tasks(slurm_cluster, tmp_path, private_cache):
    """A profile with tasks_per_node=2: the trial runs as 2 DDP processes (gloo), each on half of every batch, and
    rank 0 alone writes the record; the weights equal one process's on whole batches up to float noise, which is
    small next to the training update (a rank training alone on its halves is off by more than half of it)."""
    from harness.models.clip import create_model
    from harness.trial.runner import _seed_everything

    profile = tmp_path / "two.yaml"
    profile.write_text(yaml.safe_dump({"tasks_per_node": 2, "cpus_per_task": 1, "mem_gb": 4, "timeout_min": 10}))
    base = {"model": {"name": "digit-vit-t", "pretrained": None}, "data": {"benchmark": "digitshift-small"},
            "eval": {"batch_size": 500},
            "optim": {"epochs": 1, "batch_size": 200, "warmup_steps": 2, "lr": 1e-3}}
    spec = tmp_path / "two.yaml.spec"
    spec.write_text(yaml.safe_dump({"name": "two-tasks", "base": base, "search": {"method": {"grid": ["carot"]}},
                                    "launcher": {"kind": "slurm", "profile": str(profile), "parallelism": 1},
                                    "tracking": {"mode": "disabled"}, "out": str(tmp_path / "out")}))
    assert sweep_main([str(spec)]) == 0
    (line,) = _results(tmp_path / "out")
    record = json.loads((tmp_path / "out" / line["record"]).read_text())
    assert line["state"] == "COMPLETE" and record["world_size"] == 2 and record["rank"] == 0

    torch.set_num_threads(1)
    config = RunConfig.model_validate({**record["config"], "run_dir": str(tmp_path / "reference")})
    reference = run(config, progress=False)
    _seed_everything(config.seed)
    initial = _flat(create_model("digit-vit-t", None)[0].state_dict())
    two_tasks = _flat(torch.load(record["paths"]["model"], weights_only=True))
    one = _flat(torch.load(reference.paths.model, weights_only=True))
    update = (one - initial).norm()
    assert update / initial.norm() < 0.05  # `initial` is the run's start: a different init would be ~140% away
    # Adam turns float noise into visible differences: measured here, 1 vs 2 threads in one process differ by 0.9% of
    # the update, this 2-task trial by 2.7%, and a process training on half batches alone by 57%.
    assert (two_tasks - one).norm() / update < 0.1
