"""What a trial reports while it runs: W&B (offline by default) and, in sweeps with a pruner, Optuna.

The local record.json stays the source of truth; W&B mirrors it. One W&B run per trial, grouped
by sweep, its id kept in the run dir so a requeued trial continues the same run. Nothing from the
environment (API keys, tokens) is logged: only the run config and metrics.
"""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any, Callable

import numpy as np

from harness.core.config import RunConfig, flatten, resolve_run_dir
from harness.core.plots import draw_reliability, draw_spectrum, pooled_bins
from harness.core.record import EpochThroughput, RunRecord
from harness.sweep.context import TrialContext
from harness.sweep.pruning import StudyPruner
from harness.trial.callbacks import TrainCallbacks, TrialPruned

_BIN_COLUMNS = ("lower", "upper", "count", "confidence", "accuracy")
STEP = "optimizer_step"  # the x-axis of every chart: per-step losses, per-epoch validation and the final tests
_LOSS_EVERY = 5  # optimizer steps between logged losses
# What a run's summary of a logged series means (W&B's default is its last value).
_EPOCH_SUMMARIES = {"epoch/val_acc": "max", "epoch/val_ece": "min", "epoch/val_nll": "min"}


class TrialCallbacks(TrainCallbacks):
    """Per-step losses and per-epoch validation to W&B; per-epoch values to an Optuna pruner."""

    def __init__(self, wandb_run: Any = None, pruner: StudyPruner | None = None, prune_metric: str = "val_acc"):
        self.wandb_run, self.pruner, self.prune_metric = wandb_run, pruner, prune_metric

    def on_step(self, step: int, losses: dict[str, float], lr: float) -> None:
        if self.wandb_run is not None and step % _LOSS_EVERY == 0:
            self.wandb_run.log({**{f"train/{k}": v for k, v in losses.items()}, "train/lr": lr, STEP: step})

    def on_epoch(self, epoch: int, metrics: dict[str, float]) -> None:
        if self.wandb_run is not None:
            self.wandb_run.log({**{f"epoch/{k}": v for k, v in metrics.items()}, STEP: metrics["step"]})
        if self.pruner is not None and self.pruner.should_stop(epoch, metrics[self.prune_metric]):
            raise TrialPruned(f"pruned at epoch {epoch}")

    def on_throughput(self, step: int, throughput: EpochThroughput) -> None:
        if self.wandb_run is not None:
            values = throughput.model_dump(exclude={"steps"}, exclude_none=True)
            self.wandb_run.log({**{f"throughput/{k}": v for k, v in values.items()}, STEP: step})

    def finish(self, record: RunRecord) -> None:
        """At the final step: every test set's metrics, reliability table and diagram, the spectrum; the summary."""
        if self.wandb_run is None:
            return
        import wandb

        final: dict[str, Any] = {STEP: record.timings.steps if record.timings else 0}
        for name, report in record.tests.items():
            bins = report.reliability
            final[f"reliability/{name}"] = wandb.Table(columns=list(_BIN_COLUMNS),
                                                       data=[list(row) for row in zip(*(getattr(bins, k) for k in _BIN_COLUMNS))])
            final[f"reliability_diagram/{name}"] = wandb.Image(_reliability_image(record, name))
            final |= {f"test/{name}/{metric}": getattr(report, metric) for metric in ("acc", "ece", "nll", "brier")}
        if record.spectrum is not None:
            final["spectrum"] = wandb.Image(_figure((4, 3), lambda axis: draw_spectrum(axis, record.spectrum)))
        self.wandb_run.log(final)  # one step: the images and tables close the run's charts at its last step
        self.wandb_run.summary.update({"status": record.status, **record.summary})
        self.wandb_run.finish()


def _pixels(figure: Any) -> np.ndarray:
    """The figure drawn by Agg into an RGB array: no pyplot, no change to the process's matplotlib backend."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    canvas = FigureCanvasAgg(figure)
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[..., :3].copy()


def _figure(size: tuple[float, float], draw: Callable[[Any], None]) -> np.ndarray:
    """One panel drawn by ``draw`` on a matplotlib Figure (no pyplot), as RGB pixels."""
    from matplotlib.figure import Figure

    figure = Figure(figsize=size, dpi=100)
    draw(figure.subplots())
    figure.tight_layout()
    return _pixels(figure)


def _reliability_image(record: RunRecord, name: str) -> np.ndarray:
    role = "ID" if name == record.id_test else "validation" if name == "val" else "OOD"
    return _figure((3, 3), lambda axis: draw_reliability(axis, pooled_bins([record], name), record.tests[name].ece,
                                                         f"{name} ({role})"))


def _define_metrics(run: Any) -> None:
    """The optimizer step as every chart's x-axis; the best validation value as the epoch series' summary."""
    run.define_metric(STEP)
    for pattern in ("train/*", "epoch/*", "test/*", "reliability*", "spectrum"):
        run.define_metric(pattern, step_metric=STEP)
    for key, summary in _EPOCH_SUMMARIES.items():
        run.define_metric(key, step_metric=STEP, summary=summary)


def _wandb_run(config: RunConfig, context: TrialContext, folder: Path) -> Any:
    import wandb

    tags = [config.method, *(name for name in (context.variant, context.setting) if name)]
    # In a W&B sweep agent (harness.sweep.wandb_sweep) the trial's run already exists: log there; setdefaults adds the
    # full config and keeps the sweep's keys. Only a sweep's run: one a crashed trial left open is finished below.
    if wandb.run is not None and wandb.run.sweep_id:
        wandb.run.config.setdefaults(flatten(config.model_dump(mode="json")))
        wandb.run.tags = (*wandb.run.tags, *tags)
        _define_metrics(wandb.run)
        return wandb.run
    run_dir = resolve_run_dir(config)
    run_dir.mkdir(parents=True, exist_ok=True)
    id_file = run_dir / "wandb_id.txt"
    run_id = id_file.read_text().strip() if id_file.exists() else uuid.uuid4().hex[:12]
    id_file.write_text(run_id)
    folder.mkdir(parents=True, exist_ok=True)
    run = wandb.init(project=config.tracking.project, entity=config.tracking.entity, group=context.sweep,
                     job_type=config.method, tags=tags, config=flatten(config.model_dump(mode="json")), dir=str(folder),
                     id=run_id, resume="allow", mode=config.tracking.mode, name=run_dir.name, reinit="finish_previous")
    _define_metrics(run)
    return run


def tracker_for(config: RunConfig, context: TrialContext | None) -> TrialCallbacks:
    """The callbacks of one trial: W&B unless tracking is disabled, and the sweep's pruner when it has one."""
    context = context or TrialContext(sweep=resolve_run_dir(config).name, wandb_dir=str(resolve_run_dir(config)))
    wandb_run = _wandb_run(config, context, Path(context.wandb_dir)) if config.tracking.mode != "disabled" else None
    pruning = context.pruning
    return TrialCallbacks(wandb_run, StudyPruner(pruning) if pruning else None, pruning.pruner.metric if pruning else "val_acc")
