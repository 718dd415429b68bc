"""Trial jobs of a driver: submit claimed trials, notice their jobs end, and adopt the trials of a dead driver."""

from __future__ import annotations

import os
import socket
import subprocess
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna

from harness.core.record import RunRecord, TrialOutcome, UnreadableRecordError
from harness.sweep.claims import INTERRUPTED, Claim
from harness.sweep.context import PruningContext, TrialContext
from harness.sweep.jobs import TrialJob, make_executor, threads_per_job
from harness.sweep.plan import Plan
from harness.sweep.spec import SETTING, VARIANT
from harness.sweep.warm import WarmPool

_QUEUE_CHECK_SECONDS = 10.0
_SLURM_ENDED = ("", "COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "BOOT_FAIL",
                "DEADLINE", "PREEMPTED")


@dataclass
class Running:
    """The job of trial ``number``, submitted by this driver."""

    number: int
    job: Any
    next_queue_check: float = 0.0


class Launcher:
    """Submits trials through the launcher of the plan's spec (local processes, in-process debug, SLURM)."""

    def __init__(self, plan: Plan, storage: str):
        self.plan, self.storage = plan, storage
        self._executor: Any = None
        self._pool: WarmPool | None = None

    def start_workers(self) -> None:
        """Before the driver's checks: start the warm local workers (if any), to import while the driver checks."""
        spec = self.plan.spec
        if spec.launcher.kind == "local" and spec.launcher.warm:
            self._pool = WarmPool(self.plan.out / "jobs" / "workers", spec.launcher.parallelism,
                                  tracking=spec.tracking.mode != "disabled")
            self._pool.start()

    def start(self) -> None:
        """After the checks: the warm workers log under OUT, or the executor is built (SLURM: refused where its
        commands are missing)."""
        launcher = self.plan.spec.launcher
        if self._pool is not None:
            self._pool.keep_logs()
        else:
            self._executor = make_executor(launcher.kind, self.plan.out / "jobs", launcher.parallelism, launcher.profile)

    def close(self) -> None:
        """Let warm workers exit (a busy one after its trial)."""
        if self._pool is not None:
            self._pool.close()

    def submit(self, claims: list[Claim]) -> list[Running]:
        """Submit claimed trials; on SLURM several at once go out as one job array (one sbatch for the wave)."""
        spec = self.plan.spec
        submissions = []
        for claim in claims:
            config = self.plan.config(claim.params, claim.seed, claim.run_dir)
            claim.trial.set_user_attr("run_dir", str(claim.run_dir))
            pruning = None if spec.pruner.name == "none" else PruningContext(
                storage=self.storage, study=spec.name, trial_number=claim.trial.number, pruner=spec.pruner)
            context = TrialContext(sweep=spec.name, wandb_dir=str(self.plan.out), variant=claim.params.get(VARIANT),
                                   setting=claim.params.get(SETTING), pruning=pruning)
            submissions.append((config.model_dump(mode="json"), context))
        threads = threads_per_job(spec.launcher.parallelism)
        if self._pool is not None:
            jobs = [self._pool.submit(config, info, threads) for config, info in submissions]
        else:
            wave = self._executor.batch() if spec.launcher.kind == "slurm" and len(submissions) > 1 else nullcontext()
            with wave:
                jobs = [self._executor.submit(TrialJob(), config, info, threads) for config, info in submissions]
        for claim, job in zip(claims, jobs):  # job ids exist once the wave is submitted
            claim.trial.set_user_attr("launcher", spec.launcher.kind)
            claim.trial.set_user_attr("job_id", str(job.job_id))
        return [Running(claim.trial.number, job) for claim, job in zip(claims, jobs)]

    def job_ended(self, item: Running) -> bool:
        """submitit learns that a SLURM job ended from its result file or from sacct; without accounting, and for a
        job killed before writing a result, only squeue can tell, so ask it now and then."""
        if item.job.done():
            return True
        if self.plan.spec.launcher.kind != "slurm" or time.monotonic() < item.next_queue_check:
            return False
        item.next_queue_check = time.monotonic() + _QUEUE_CHECK_SECONDS
        return _slurm_job_gone(str(item.job.job_id))

    @staticmethod
    def result(item: Running) -> TrialOutcome:
        """What the ended job returned, or a failure saying how the job itself died."""
        try:
            return item.job.results()[0]  # a multi-task job returns one result per task; rank 0 holds the record
        except Exception as exc:  # the job itself died (killed, out of memory, import error)
            return TrialOutcome.failed(f"job {item.job.job_id} died: {type(exc).__name__}: {str(exc)[:300]}",
                                       str(item.job.paths.stderr))

    @staticmethod
    def cancel(item: Running) -> None:
        item.job.cancel(check=False)

    @staticmethod
    def adopt(trial: optuna.trial.FrozenTrial) -> TrialOutcome | None:
        """The result of a running trial that nobody will tell (its driver died and its job is over): the record its
        job left, else a failure; None while its driver or its job may still be alive."""
        if not _abandoned(trial):
            return None
        if "run_dir" not in trial.user_attrs:  # the driver died between asking and submitting: nothing ran
            return TrialOutcome.failed(f"{INTERRUPTED} before launch")
        try:
            return TrialOutcome.of(RunRecord.read(Path(trial.user_attrs["run_dir"]) / "record.json"))
        except (FileNotFoundError, UnreadableRecordError):  # never written, or cut short with its job
            return TrialOutcome.failed("its driver and job died")


def _abandoned(trial: optuna.trial.FrozenTrial) -> bool:
    """True when no live driver owns the trial and its job is over; unknowable cases count as alive."""
    attrs = trial.user_attrs
    host, _, pid = attrs.get("driver", "").rpartition(":")
    here = host == socket.gethostname()
    if "driver" not in attrs:
        driver_alive: bool | None = False
    elif here:
        driver_alive = int(pid) != os.getpid() and _alive(int(pid))
    else:
        driver_alive = None  # a driver on another machine: only its job's state can tell
    if driver_alive:
        return False
    job, launcher = attrs.get("job_id"), attrs.get("launcher")
    if job is not None and launcher == "slurm":
        return _slurm_job_gone(job)
    if job is not None and launcher == "local":
        return here and not _alive(int(job))
    return driver_alive is False  # no job yet, or an in-process (debug) job that died with its driver


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, PermissionError):
        return False
    return True


def _slurm_job_gone(job_id: str) -> bool:
    """SLURM forgets a job some minutes after it ends (``squeue`` then says "Invalid job id"); until then it lists it."""
    try:
        listed = subprocess.run(["squeue", "-h", "-j", job_id, "-o", "%T"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return False  # no way to tell: leave the trial to a driver that can
    if listed.returncode == 0:
        return listed.stdout.strip() in _SLURM_ENDED
    return "Invalid job id" in listed.stderr
