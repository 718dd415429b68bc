"""What a sweep tells the job of one trial besides its run config: its sweep, its row, and how to prune it."""

from __future__ import annotations

from harness.core.config import StrictModel
from harness.sweep.spec import Pruner


class PruningContext(StrictModel):
    """Where the trial reports per-epoch values, and the rule that may stop it."""

    storage: str
    study: str
    trial_number: int
    pruner: Pruner


class TrialContext(StrictModel):
    sweep: str  # the W&B group of the sweep's runs
    wandb_dir: str  # where offline W&B runs are written (the sweep's output dir)
    variant: str | None = None  # the ablation row, for W&B tags
    setting: str | None = None  # the benchmark and model of a study across settings, for W&B tags
    pruning: PruningContext | None = None
