"""The sweep's driver as a SLURM job of its own (``python -m harness.sweep SPEC --launcher slurm --driver-job``),
so that no process has to live on a login node for the days a sweep takes.

The command checks the spec, its trials' models and data, as always, then submits one small job (the profile's
``driver`` resources: a few CPUs, no GPU) that runs the same command, without ``--driver-job``, in the same working
directory, and returns. That job pre-trains what the trials share, submits the trials' jobs and collects their
records. When its time limit comes, submitit requeues it (up to ``driver.max_timeouts`` times); killed or cancelled,
it is resubmitted by running the same command again. Either way the new driver adopts the trial jobs still queued or
running (``squeue``), retries the ones that died, and repeats none that finished, as a driver restarted on a login
node does.
"""

from __future__ import annotations

import os
from pathlib import Path

import submitit

from harness.sweep.jobs import SlurmProfile, load_profile, render_sbatch, slurm_executor
from harness.sweep.spec import SweepSpec

DRIVER_FLAG = "--driver-job"


def driver_profile(profile: SlurmProfile) -> SlurmProfile:
    """The resources of the driver's job: the profile's partition (or ``driver.partition``), account, QoS and
    set-up lines, and the ``driver`` section's CPUs, memory and time; no GPU, one task."""
    driver = profile.driver
    return profile.model_copy(update={
        "partition": driver.partition or profile.partition, "constraint": None, "gpus_per_node": 0,
        "tasks_per_node": 1, "cpus_per_task": driver.cpus_per_task, "mem_gb": driver.mem_gb,
        "timeout_min": driver.timeout_min, "max_timeouts": driver.max_timeouts})


class DriverJob(submitit.helpers.Checkpointable):
    """The job's body: the sweep command in the directory it was given in; requeued as is (``checkpoint``)."""

    def __call__(self, argv: list[str], cwd: str) -> int:
        from harness.commands.sweep import main

        os.chdir(cwd)  # relative paths of the command (spec, --out, storage) as the user meant them
        return main(argv)


def driver_folder(out: Path) -> Path:
    return out / "driver"


def driver_job_name(spec: SweepSpec) -> str:
    return f"{spec.name}-driver"


def submit_driver(spec: SweepSpec, argv: list[str], out: Path) -> submitit.Job:
    """Submit the driver of ``spec`` (``argv``: the command's arguments, without ``--driver-job``)."""
    profile = driver_profile(load_profile(spec.launcher.profile or ""))
    executor = slurm_executor(profile, driver_folder(out), 1)
    executor.update_parameters(name=driver_job_name(spec))
    return executor.submit(DriverJob(), argv, os.getcwd())


def render_driver_sbatch(spec: SweepSpec, out: Path) -> str:
    """The driver job's sbatch script, for ``--dry-run``."""
    return render_sbatch(driver_profile(load_profile(spec.launcher.profile or "")), driver_folder(out),
                         job_name=driver_job_name(spec))
