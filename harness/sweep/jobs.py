"""Launching trials with submitit: executors (local processes, in-process debug, SLURM profiles) and the job body.

A job runs ``harness.trial.runner.run`` on one trial's config and returns a small dict (status, summary,
record path, error). With a pruner, the job reports per-epoch validation values to the study's
storage and stops when Optuna says so. On SLURM, jobs are ``Checkpointable``: on preemption or
time-out submitit requeues them and ``run`` resumes from the trial's own checkpoint.
"""

from __future__ import annotations

import os
import shlex
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import submitit
import yaml
from pydantic import Field

from harness.core.config import StrictModel, build
from harness.core.errors import ConfigError, UsageError
from harness.core.record import TrialOutcome
from harness.sweep.context import TrialContext
from harness.sweep.spec import PROFILE_SUFFIXES

if TYPE_CHECKING:
    from harness.data import LoadedBenchmarks

PROFILE_DIR = Path(__file__).resolve().parent / "profiles"  # package data: gpu-1, gpu-2, gpu-8


class DriverResources(StrictModel):
    """What the sweep's driver gets when it runs as a SLURM job of its own (``--driver-job``): a few CPUs for hours,
    requeued when its time runs out; partition, account and QoS default to the profile's."""

    partition: str | None = Field(None, description="null: the profile's partition (a CPU partition suits)")
    cpus_per_task: int = Field(2, ge=1, description="CPUs of the driver (pre-training what the trials share runs there)")
    mem_gb: int = Field(8, ge=1, description="memory of the driver's job")
    timeout_min: int = Field(24 * 60, ge=1, description="then requeued (max_timeouts times), adopting its trials")
    max_timeouts: int = Field(30, ge=0, description="requeues after time-outs before the driver's job is given up")


class SlurmProfile(StrictModel):
    """A cluster's resources for one trial (and for the driver, when it runs as a job); see slurm/README.md."""

    partition: str | None = Field(None, description="sbatch --partition; null: the cluster's default")
    account: str | None = Field(None, description="sbatch --account")
    qos: str | None = Field(None, description="sbatch --qos")
    constraint: str | None = Field(None, description="sbatch --constraint, e.g. a100 or h100")
    gpus_per_node: int = Field(0, ge=0, description="GPUs of one trial")
    tasks_per_node: int = Field(1, ge=1, description="processes per trial (one per GPU): DDP over all of them")
    cpus_per_task: int = Field(2, ge=1, description="CPUs per process (data loading: CPUs - 1 loader workers)")
    mem_gb: int = Field(8, ge=1, description="memory per node, for all of a trial's processes")
    timeout_min: int = Field(60, ge=1, description="time limit of one job (then requeued, resuming from its checkpoint)")
    signal_delay_s: int = Field(120, ge=1, description="SIGUSR2 this long before the time limit, to checkpoint")
    max_timeouts: int = Field(3, ge=0, description="requeues after time-outs before a trial is given up")
    array_parallelism: int = Field(64, ge=1, description="trials of one job array running at once (also capped by "
                                   "the sweep's parallelism)")
    setup: list[str] = Field(default_factory=list, description="shell lines before the job, e.g. module loads")
    driver: DriverResources = Field(default_factory=DriverResources, description="the driver's own job, with "
                                    "--driver-job")


def load_profile(name: str, folder: Path = PROFILE_DIR) -> SlurmProfile:
    """A profile shipped with the package, by name (``gpu-1``), or any profile file (``mycluster.yaml``)."""
    path = Path(name) if name.endswith(PROFILE_SUFFIXES) else folder / f"{name}.yaml"
    if not path.is_file():
        available = ", ".join(sorted(p.stem for p in folder.glob("*.yaml"))) or "none"
        raise ConfigError(f"launcher.profile: no SLURM profile {name!r} (shipped: {available}; or a path to a "
                          ".yaml file of your own)")
    return build(SlurmProfile, yaml.safe_load(path.read_text()) or {}, source=str(path))


def slurm_parameters(profile: SlurmProfile, parallelism: int) -> dict[str, Any]:
    """The profile in submitit's ``SlurmExecutor`` parameter names (sbatch's): the one mapping behind submitting
    (``make_executor``) and rendering (``render_sbatch``), so that a dry run shows exactly what would be submitted."""
    p = profile
    extra = {key: value for key, value in (("account", p.account), ("qos", p.qos), ("constraint", p.constraint)) if value}
    parameters = {
        "partition": p.partition, "gpus_per_node": p.gpus_per_node, "ntasks_per_node": p.tasks_per_node,
        "cpus_per_task": p.cpus_per_task, "mem": f"{p.mem_gb}GB", "time": p.timeout_min,
        "signal_delay_s": p.signal_delay_s, "array_parallelism": min(parallelism, p.array_parallelism),
        "setup": p.setup, "additional_parameters": extra,
    }
    return {key: value for key, value in parameters.items() if value is not None}


def make_executor(kind: str, folder: Path, parallelism: int, profile: str | None) -> submitit.Executor:
    if kind == "slurm":
        return slurm_executor(load_profile(profile or ""), folder, parallelism)
    executor = _auto_executor(folder, kind)
    executor.update_parameters(timeout_min=24 * 60)
    return executor


def slurm_executor(profile: SlurmProfile, folder: Path, parallelism: int) -> submitit.Executor:
    """A SLURM executor submitting jobs with ``profile``'s resources, requeued up to its ``max_timeouts``."""
    executor = _auto_executor(folder, "slurm", slurm_max_num_timeout=profile.max_timeouts)
    executor.update_parameters(**{f"slurm_{key}": value for key, value in slurm_parameters(profile, parallelism).items()})
    return executor


def _auto_executor(folder: Path, kind: str, **options: Any) -> submitit.Executor:
    try:
        return submitit.AutoExecutor(folder=folder, cluster=kind, **options)
    except RuntimeError as exc:  # submitit's way of saying SLURM's commands are missing here
        raise UsageError(f"launcher {kind}: {exc}") from exc


def render_sbatch(profile: str | SlurmProfile, folder: Path, parallelism: int = 1, array_size: int = 1,
                  job_name: str = "submitit") -> str:
    """The sbatch script submitit would submit for one wave of ``array_size`` trials (one job, or a job array), for
    ``--dry-run`` on any machine: ``SlurmExecutor`` cannot even be built where ``srun`` is missing."""
    folder = Path(folder).expanduser().absolute()  # as submitit's executors hold it
    command = f"{shlex.quote(sys.executable)} -u -m submitit.core._submit {shlex.quote(str(folder))}"
    resources = load_profile(profile) if isinstance(profile, str) else profile
    return _submitit_sbatch(command=command, folder=folder, map_count=array_size if array_size > 1 else None,
                            job_name=job_name, **slurm_parameters(resources, parallelism))


def _submitit_sbatch(**parameters: Any) -> str:
    """submitit's sbatch template, ``submitit.slurm.slurm._make_sbatch_string``: private, and with no public form.
    tests/test_cluster_files.py checks that it still takes the parameters passed here and renders what a
    ``SlurmExecutor`` submits, so that a change in submitit fails there rather than in a dry run."""
    from submitit.slurm.slurm import _make_sbatch_string

    return _make_sbatch_string(**parameters)


class TrialJob(submitit.helpers.Checkpointable):
    """The body of one job; requeued as is on preemption (the trial resumes from its run dir)."""

    def __call__(self, config: dict[str, Any], context: TrialContext | None, threads: int) -> TrialOutcome:
        return run_trial(config, context, threads)


def run_trial(config: dict[str, Any], context: TrialContext | None, threads: int,
              benchmarks: LoadedBenchmarks | None = None) -> TrialOutcome:
    """One trial with its tracking and pruning callbacks: what a job (or a warm worker) runs. ``benchmarks``: a
    ``LoadedBenchmarks`` the process keeps between its trials."""
    import torch

    from harness.core.config import RunConfig
    from harness.sweep.tracking import tracker_for
    from harness.trial.callbacks import TrainCallbacks
    from harness.trial.distributed import environment_from_env
    from harness.trial.runner import run

    torch.set_num_threads(job_threads(threads))
    run_config = RunConfig.model_validate(config)
    env = environment_from_env()  # several tasks per job: one trial over all of them (submitit returns task 0's)
    callbacks = tracker_for(run_config, context) if env.is_main else TrainCallbacks()
    record = run(run_config, callbacks=callbacks, progress=False, env=env, benchmarks=benchmarks)
    if env.is_main:
        callbacks.finish(record)
    return TrialOutcome.of(record)


def threads_per_job(parallelism: int) -> int:
    return max(1, (os.cpu_count() or 1) // parallelism)


def job_threads(default: int) -> int:
    """Torch threads of a running job: its SLURM allocation per task when it has one (the driver's share of the login
    node's CPUs says nothing about a compute node), else ``default``, the driver's share of this machine's CPUs."""
    return int(os.environ.get("SLURM_CPUS_PER_TASK", default))
