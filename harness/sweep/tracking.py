"""What a trial reports while it runs: W&B (offline by default) and, in sweeps with a pruner, Optuna.

The local record.json stays the source of truth; W&B mirrors it. One W&B run per trial, grouped
by sweep, its id kept in the run dir so a requeued trial continues the same run. Nothing from the
environment (API keys, tokens) is logged: only the run config and metrics.
"""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

from harness.core.config import RunConfig, flatten, resolve_run_dir
from harness.core.record import RunRecord
from harness.sweep.pruning import StudyPruner
from harness.trial.callbacks import TrainCallbacks, TrialPruned

_BIN_COLUMNS = ("lower", "upper", "count", "confidence", "accuracy")


class TrialCallbacks(TrainCallbacks):
    """Per-step losses and per-epoch validation to W&B; per-epoch values to an Optuna pruner."""

    def __init__(self, wandb_run: Any = None, pruner: Any = None, prune_metric: str = "val_acc"):
        self.wandb_run, self.pruner, self.prune_metric = wandb_run, pruner, prune_metric

    def on_step(self, step: int, losses: dict[str, float], lr: float) -> None:
        if self.wandb_run is not None and step % 5 == 0:
            self.wandb_run.log({**{f"train/{k}": v for k, v in losses.items()}, "train/lr": lr}, step=step)

    def on_epoch(self, epoch: int, metrics: dict[str, float]) -> None:
        if self.wandb_run is not None:
            self.wandb_run.log({f"epoch/{k}": v for k, v in metrics.items()}, step=metrics["step"])
        if self.pruner is not None and self.pruner.should_stop(epoch, metrics[self.prune_metric]):
            raise TrialPruned(f"pruned at epoch {epoch}")

    def finish(self, record: RunRecord) -> None:
        if self.wandb_run is None:
            return
        self.wandb_run.summary.update({"status": record.status, **record.summary})
        import wandb

        for name, report in record.tests.items():
            bins = report.reliability
            table = wandb.Table(columns=list(_BIN_COLUMNS), data=[list(row) for row in zip(*(getattr(bins, k) for k in _BIN_COLUMNS))])
            self.wandb_run.log({f"reliability/{name}": table, f"test/{name}/acc": report.acc,
                                f"test/{name}/ece": report.ece})
        self.wandb_run.finish()


def _wandb_run(config: RunConfig, group: str | None, folder: Path) -> Any:
    import wandb

    # In a W&B sweep agent (harness.sweep.wandb_sweep) the trial's run already exists: log there; setdefaults adds the
    # full config and keeps the sweep's keys. Only a sweep's run: one a crashed trial left open is finished below.
    if wandb.run is not None and wandb.run.sweep_id:
        wandb.run.config.setdefaults(flatten(config.model_dump(mode="json")))
        return wandb.run
    run_dir = resolve_run_dir(config)
    run_dir.mkdir(parents=True, exist_ok=True)
    id_file = run_dir / "wandb_id.txt"
    run_id = id_file.read_text().strip() if id_file.exists() else uuid.uuid4().hex[:12]
    id_file.write_text(run_id)
    folder.mkdir(parents=True, exist_ok=True)
    return wandb.init(project=config.tracking.project, entity=config.tracking.entity, group=group,
                      job_type=config.method, config=flatten(config.model_dump(mode="json")), dir=str(folder),
                      id=run_id, resume="allow", mode=config.tracking.mode, name=run_dir.name, reinit="finish_previous")


def tracker_for(config: RunConfig, study: dict[str, Any] | None) -> TrialCallbacks:
    """The callbacks of one sweep trial (``study``: name, storage, trial number, pruner metric, wandb dir)."""
    study = study or {}
    wandb_run = None
    if config.tracking.mode != "disabled":
        wandb_run = _wandb_run(config, study.get("sweep"), Path(study.get("wandb_dir") or resolve_run_dir(config)))
    pruner = StudyPruner(study) if study.get("prune_metric") else None
    return TrialCallbacks(wandb_run, pruner, study.get("prune_metric") or "val_acc")
