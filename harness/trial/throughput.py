"""Where a trial's training time goes: per step, waiting for the batch versus computing it; per epoch, samples
per second (per process and in all) and, on CUDA, peak memory. A trial starved by its data loader shows a
large data-wait share; one that fits its GPU poorly, its peak memory."""

from __future__ import annotations

import statistics

import torch

from harness.core.record import EpochThroughput

_GB = 1024**3


class ThroughputMeter:
    """Sums step times as the trainer reports them; ``end_epoch`` closes an epoch's account and starts the next."""

    def __init__(self, batch_size: int, world_size: int, device: torch.device):
        self.batch_size, self.world_size, self.device = batch_size, world_size, device
        self.data_wait_s = self.compute_s = 0.0
        self.step_seconds: list[float] = []  # this process's steps, data wait and compute together
        self.epochs: list[EpochThroughput] = []
        self._epoch_start = (0, 0.0, 0.0)  # steps, data wait, compute at the epoch's start
        self._reset_peak()

    def _reset_peak(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)

    @property
    def steps(self) -> int:
        return len(self.step_seconds)

    def add_step(self, data_wait_s: float, compute_s: float) -> None:
        self.step_seconds.append(data_wait_s + compute_s)
        self.data_wait_s += data_wait_s
        self.compute_s += compute_s

    def epoch_so_far(self, epoch: int) -> EpochThroughput:
        """The current epoch's figures from its first step (in this process) to now."""
        steps0, wait0, compute0 = self._epoch_start
        steps, wait, compute = self.steps - steps0, self.data_wait_s - wait0, self.compute_s - compute0
        seconds = wait + compute
        per_process = steps * self.batch_size / self.world_size / seconds if seconds > 0 else 0.0
        peak = torch.cuda.max_memory_allocated(self.device) / _GB if self.device.type == "cuda" else None
        return EpochThroughput(epoch=epoch, steps=steps, samples_per_s=per_process * self.world_size,
                               samples_per_s_per_process=per_process,
                               data_wait_share=wait / seconds if seconds > 0 else 0.0, peak_memory_gb=peak)

    def end_epoch(self, epoch: int) -> EpochThroughput:
        throughput = self.epoch_so_far(epoch)
        self.epochs.append(throughput)
        self._epoch_start = (self.steps, self.data_wait_s, self.compute_s)
        self._reset_peak()
        return throughput

    def summary(self) -> dict[str, object]:
        """The record's timings fields."""
        seconds = self.data_wait_s + self.compute_s
        return {"step_s_median": statistics.median(self.step_seconds) if self.step_seconds else None,
                "data_wait_s": self.data_wait_s, "compute_s": self.compute_s,
                "samples_per_s": self.steps * self.batch_size / seconds if seconds > 0 else None,
                "throughput": [epoch.model_dump() for epoch in self.epochs]}
