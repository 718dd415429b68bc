"""What a dry run shows before any work: the resolved base configuration, each setting's and variant's changes, the
resources."""

from __future__ import annotations

import os
from typing import Any

from harness.core.config import RunConfig, flatten
from harness.core.methods import METHODS
from harness.sweep.jobs import load_profile, threads_per_job
from harness.sweep.plan import Plan
from harness.sweep.spec import SETTING, VARIANT

# Keys that differ between the trials of one variant, or say nothing about what trains.
_PER_TRIAL = ("seed", "run_dir", "tracking.")


def _flat(config: RunConfig) -> dict[str, Any]:
    return {key: value for key, value in flatten(config.model_dump(mode="json")).items() if not key.startswith(_PER_TRIAL)}


def _steps(config: RunConfig, sizes: dict[str, int | None]) -> str:
    """Optimizer steps per epoch and in all, when the training set's size is known without reading all the data
    (``sizes``: the sizes found so far, by data section)."""
    key = config.data.model_dump_json()
    if key not in sizes:
        from harness.trial.preflight import train_size  # open_clip and the data readers: the dry run alone needs them

        sizes[key] = train_size(config.data)
    size = sizes[key]
    method = METHODS[config.method]
    if not method.trains:
        return "no training"
    epochs = sum(method.stage_epochs(config.optim.epochs, config.optim.lp_epochs))
    if size is None:
        return f"{epochs} epochs x (training images / {config.optim.batch_size}), known once the data is read"
    per_epoch = size // config.optim.batch_size
    return f"{per_epoch:,} per epoch ({size:,} training images / batch {config.optim.batch_size}) x {epochs} epochs = {per_epoch * epochs:,}"


def _batch(config: RunConfig, processes: int = 1) -> str:
    """The optimizer's (effective) batch and, when it is split, the rows of one forward."""
    batch, parts = config.optim.batch_size, config.optim.accum_steps
    if processes == 1 and parts == 1:
        return f"batch {batch}"
    split = [f"{processes} processes"] if processes > 1 else []
    split += [f"{parts} micro-batches"] if parts > 1 else []
    return f"batch {batch} = {' x '.join(split)} x {batch // (processes * parts)} images a forward"


def describe_base(config: RunConfig) -> list[str]:
    model, data, optim = config.model, config.data, config.optim
    root = f", data root {data.root}" if data.root else ""
    return [
        f"  model {model.name}, weights {model.pretrained}, benchmark {data.benchmark}{root}",
        f"  method {config.method}, epochs {optim.epochs}, {_batch(config)}, lr {optim.lr:g}, "
        f"weight decay {optim.weight_decay:g}, warmup {optim.warmup_steps} steps",
        f"  precision {config.compute.precision}, device {config.compute.device}",
    ]


def describe_resources(plan: Plan) -> str:
    launcher = plan.spec.launcher
    if launcher.kind != "slurm":
        return (f"  {launcher.kind}: {launcher.parallelism} trial(s) at once on this machine, one process each, "
                f"{threads_per_job(launcher.parallelism)} of its {os.cpu_count()} CPU threads per trial")
    p = load_profile(launcher.profile or "")
    processes = f"{p.tasks_per_node} processes (DDP)" if p.tasks_per_node > 1 else "1 process"
    base = plan.config({}, plan.spec.seeds[0], plan.out)
    return (f"  slurm profile {launcher.profile}: per trial {processes}, {_batch(base, p.tasks_per_node)}, "
            f"{p.gpus_per_node} GPU(s), {p.cpus_per_task} CPUs "
            f"per process, {p.mem_gb} GB, time limit {p.timeout_min} min (requeued up to {p.max_timeouts} times); "
            f"{launcher.parallelism} trial(s) at once")


def describe(plan: Plan, storage: str) -> str:
    """The base configuration every trial starts from, what each variant changes, the points and the resources."""
    spec = plan.spec
    base = plan.config({}, spec.seeds[0], plan.out)
    lines = ["base configuration:", *describe_base(base)]
    sizes: dict[str, int | None] = {}
    named = [(dimension, spec.search[dimension].grid) for dimension in (SETTING, VARIANT)
             if dimension in spec.search and spec.search[dimension].grid]
    if not named:
        lines.append(f"  steps: {_steps(base, sizes)}")
    flat_base = _flat(base)
    for dimension, names in named:
        lines.append(f"{dimension}s (changes from the base):")
        for name in names:
            config = plan.config({dimension: name}, spec.seeds[0], plan.out)
            changes = {key: value for key, value in _flat(config).items() if flat_base.get(key) != value}
            shown = ", ".join(f"{key}={value}" for key, value in changes.items()) or "none"
            lines.append(f"  {name}: {shown}; steps: {_steps(config, sizes)}")
    lines += ["resources:", describe_resources(plan), "", plan.describe(storage)]
    return "\n".join(lines)
