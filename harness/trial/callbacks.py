"""The hooks a trial calls while it trains: the contract that trackers and pruners (harness.sweep) implement."""

from __future__ import annotations

from harness.core.record import EpochThroughput


class TrialPruned(Exception):
    """Raised by a callback (e.g. an Optuna pruner) to stop a trial early; recorded as status 'pruned'."""


class TrainCallbacks:
    """Hooks for trackers and pruners; the default does nothing. ``on_epoch`` may raise to stop a trial."""

    def on_step(self, step: int, losses: dict[str, float], lr: float) -> None:
        pass

    def on_epoch(self, epoch: int, metrics: dict[str, float]) -> None:
        pass

    def on_throughput(self, step: int, throughput: EpochThroughput) -> None:
        """After every epoch (with or without validation), ``step`` optimizer steps in: how fast it trained."""
