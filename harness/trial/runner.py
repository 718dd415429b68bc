"""One trial: fine-tune, evaluate, record.

    python -m harness.train [CONFIG.yaml] [key=value ...]

``run(config)`` seeds everything, builds the model from its pre-trained weights and trains the
method's stages (``harness.trial.trainer``), evaluates every test set (student, EMA teacher for
CaRot, temperature-scaled, WiSE-FT) and measures the ID embedding spectrum
(``harness.trial.evaluation``), saves weights as ``state_dict``s and writes
``RUN_DIR/record.json`` atomically. A run killed at any moment and started again with the same
run directory continues from ``RUN_DIR/checkpoint.pt``; all randomness is derived from
(seed, epoch, step), so it ends with the same metrics as an uninterrupted run.
"""

from __future__ import annotations

import platform
import subprocess
import time
import traceback
from pathlib import Path
from typing import Any

import numpy as np
import torch

import harness
from harness.core.config import RunConfig, belongs_to, build, resolve_run_dir, trial_digest
from harness.core.errors import UsageError
from harness.core.record import SCHEMA, RunRecord
from harness.core.storage import atomic_torch_save
from harness.data import Benchmark, LoadedBenchmarks, require_known_benchmark
from harness.data.benchmark_file import benchmark_digest
from harness.data.pipeline import clip_preprocess
from harness.trial.callbacks import TrainCallbacks, TrialPruned
from harness.trial.compute import check_precision, resolve_device
from harness.trial.distributed import (
    SINGLE_PROCESS,
    DistributedEnvironment,
    destroy_process_group,
    init_process_group,
)
from harness.trial.pretrain import check_model
from harness.trial.set_reports import format_table
from harness.trial.evaluation import evaluate_trial
from harness.trial.trainer import Trainer


def _seed_everything(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed)


def _versions() -> dict[str, str]:
    import open_clip

    return {"harness": harness.__version__, "torch": torch.__version__, "open_clip": open_clip.__version__,
            "numpy": np.__version__, "python": platform.python_version()}


def _git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def _base_record(config: RunConfig, run_dir: Path) -> dict[str, Any]:
    return {
        "schema": SCHEMA,
        "status": "running",
        "error": None,
        "config": config.model_dump(mode="json"),
        "config_digest": trial_digest(config),
        "method": config.method,
        "versions": _versions(),
        "git_commit": _git_commit(),
        "paths": {"run_dir": str(run_dir), "record": str(run_dir / "record.json")},
    }


def _finished_record(run_dir: Path, config: RunConfig) -> RunRecord | None:
    """The existing successful record of this exact config and data, if any; another config's record is an error,
    and so is a record of a benchmark file whose data has changed since."""
    path = run_dir / "record.json"
    if not path.exists():
        return None
    record = RunRecord.read(path)
    if not belongs_to(record.config_digest, config):
        raise UsageError(f"{run_dir} holds another trial (config digest {record.config_digest}); use another run_dir")
    if record.data_digest is not None:
        now = benchmark_digest(config.data.benchmark, config.data)
        if now != record.data_digest:
            raise UsageError(f"{run_dir} holds a trial on other data (data digest {record.data_digest}, now {now}: "
                             f"{config.data.benchmark} changed); use another run_dir")
    return record if record.status == "ok" else None


def run(config: RunConfig, callbacks: TrainCallbacks | None = None, progress: bool = True,
        env: DistributedEnvironment = SINGLE_PROCESS, benchmarks: LoadedBenchmarks | None = None) -> RunRecord:
    """Run (or resume, or return the finished record of) one trial; leaves a record.json unless the input is bad.

    Bad input (``UsageError``) propagates before any record is written; any other error, from loading the data
    to the last evaluation, is recorded as ``status: failed`` (with the traceback in ``error.txt``). With a
    multi-process ``env`` every rank trains and evaluates its share of each batch and set, every rank
    returns the record, and rank 0 alone writes it and the weights. ``benchmarks``: the process's loaded
    benchmarks, shared with the trials it ran before (a warm worker's); by default the benchmark is loaded anew.
    """
    config = build(RunConfig, config.model_dump(), source="config")  # again: model_copy skips the validators
    run_dir = resolve_run_dir(config)
    finished = _finished_record(run_dir, config)
    if finished is not None:
        return finished
    check_model(config.model)
    require_known_benchmark(config.data.benchmark)
    _seed_everything(config.seed)
    run_dir.mkdir(parents=True, exist_ok=True)
    record = _base_record(config, run_dir) | {"rank": env.rank, "world_size": env.world_size}
    progress = progress and env.is_main
    try:
        device = resolve_device(config.compute, env)
        check_precision(config.compute, device)
        benchmark = (benchmarks or LoadedBenchmarks()).load(config.data, progress=progress)
        record |= {"benchmark": benchmark.name, "benchmark_file": benchmark.file, "data_digest": benchmark.digest,
                   "id_test": benchmark.id_test, "ood_tests": benchmark.ood_tests, "device": str(device)}
        init_process_group(env, device)
        try:
            return _train_and_record(config, benchmark, run_dir, callbacks or TrainCallbacks(), progress, env, device,
                                     record)
        finally:
            destroy_process_group()
    except UsageError:
        raise
    except Exception as exc:  # before training could start: nothing to resume from
        return _failed(record, exc, None, env, run_dir)


def _failed(record: dict[str, Any], exc: Exception, step: int | None, env: DistributedEnvironment,
            run_dir: Path) -> RunRecord:
    """The failed trial's record, saying why (the traceback in error.txt); a checkpoint is kept for a later resume."""
    record |= {"status": "failed", "error": f"{type(exc).__name__}: {exc}", "failed_at_step": step}
    if env.is_main:
        (run_dir / "error.txt").write_text(traceback.format_exc())
        record["paths"]["error"] = str(run_dir / "error.txt")
    return _written(RunRecord.model_validate(record), env)


def _train_and_record(config: RunConfig, benchmark: Benchmark, run_dir: Path, callbacks: TrainCallbacks,
                      progress: bool, env: DistributedEnvironment, device: torch.device, record: dict[str, Any]) -> RunRecord:
    trainer: Trainer | None = None
    try:
        trainer = Trainer(config, benchmark, run_dir, callbacks, env, device)
        # sets read from files get the model's preprocessing, known once the model is built
        benchmark.set_transforms(clip_preprocess(trainer.model, train=True), clip_preprocess(trainer.model))
        started = time.perf_counter()
        record["resumed_from_step"] = trainer.step if trainer.load_checkpoint() else None
        trainer.train(progress)
        train_seconds = time.perf_counter() - started
        evaluation = evaluate_trial(trainer)  # every rank: the sets are shared out among them
        paths = _save_weights(trainer, run_dir) if env.is_main else {}
    except UsageError:
        raise
    except TrialPruned:
        return _written(RunRecord.model_validate(record | {"status": "pruned", "pruned_at_step": trainer.step,
                                                          "history": trainer.history}), env)
    except Exception as exc:  # the trial failed; say why, keep the checkpoint for a later resume
        return _failed(record, exc, trainer.step if trainer is not None else None, env, run_dir)
    record |= evaluation | {
        "status": "ok",
        "history": trainer.history,
        "timings": {
            "train_s": train_seconds,
            "eval_s": time.perf_counter() - started - train_seconds,
            "steps": trainer.total_steps,
            "ema_period_steps": trainer.ema_period if trainer.teacher is not None else None,
        } | trainer.throughput.summary(),
    }
    record["paths"] |= paths
    finished = _written(RunRecord.model_validate(record), env)
    if env.is_main:
        trainer.checkpoint_path.unlink(missing_ok=True)  # the final weights supersede it
    return finished


def _written(record: RunRecord, env: DistributedEnvironment) -> RunRecord:
    """Rank 0 writes the record; every rank returns it."""
    if env.is_main:
        record.write(Path(record.paths.record))
    return record


def _save_weights(trainer: Trainer, run_dir: Path) -> dict[str, str]:
    paths = {"model": str(atomic_torch_save(trainer.model.state_dict(), run_dir / "model.pt"))}
    if trainer.method.head == "linear":
        paths["head"] = str(atomic_torch_save(trainer.head.state_dict(), run_dir / "head.pt"))
    if trainer.teacher is not None:
        paths["teacher"] = str(atomic_torch_save(trainer.teacher.state_dict(), run_dir / "teacher.pt"))
    return paths


def format_record(record: RunRecord) -> str:
    """The result table of a finished trial (student; teacher and temperature-scaled ECE when present)."""
    lines = [format_table({name: report.model_dump(exclude_none=True) for name, report in record.tests.items()},
                           record.id_test)]
    summary = record.summary
    lines.append(
        f"summary: val acc {summary['val_acc']:.2%} | ID acc {summary['id_acc']:.2%} ECE {summary['id_ece']:.4f}"
        f" | OOD acc {summary['ood_acc']:.2%} ECE {summary['ood_ece']:.4f} | sigma_min_rel {summary['sigma_min_rel']:.3g}"
        f" (pre-trained {summary['sigma_min_rel_pretrained']:.3g})"
    )
    if "ts_temperature" in summary:
        lines.append(f"temperature scaling: T={summary['ts_temperature']:.3f}, ID ECE {summary['ts_id_ece']:.4f},"
                     f" OOD ECE {summary['ts_ood_ece']:.4f}")
    if "teacher_id_acc" in summary:
        lines.append(f"EMA teacher: ID acc {summary['teacher_id_acc']:.2%} ECE {summary['teacher_id_ece']:.4f},"
                     f" OOD acc {summary['teacher_ood_acc']:.2%} ECE {summary['teacher_ood_ece']:.4f}")
    return "\n".join(lines)
