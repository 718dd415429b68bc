"""Throughput telemetry: time waiting for a batch is counted as data wait, not compute, and each epoch's
figures follow from the step times (checked against a loader that sleeps a known time per image)."""

from __future__ import annotations

import time

import pytest
import torch
from torch.utils.data import Dataset

from harness.core.config import load_run_config
from harness.data import Benchmark, ImageSet
from harness.trial.callbacks import TrainCallbacks
from harness.trial.trainer import Trainer

SLEEP_S = 0.02  # per image, read in this process (data.num_workers=0)
BATCH, IMAGES = 4, 12  # 3 steps an epoch


class _SlowImages(Dataset):
    """Images served one by one, each after a pause: a loader that starves training."""

    def __init__(self, images: ImageSet):
        self.images, self.labels = images, images.labels

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int):
        time.sleep(SLEEP_S)
        return self.images[index]


class _Throughputs(TrainCallbacks):
    def __init__(self) -> None:
        self.seen = []

    def on_throughput(self, step, throughput) -> None:
        self.seen.append((step, throughput))


def _benchmark() -> Benchmark:
    generator = torch.Generator().manual_seed(0)
    images = ImageSet(torch.randint(0, 256, (IMAGES, 32, 32), dtype=torch.uint8, generator=generator),
                      torch.arange(IMAGES) % 2)
    return Benchmark(name="slow", classnames=["zero", "one"], templates=["{}"], zeroshot_templates=["{}"],
                     pretrain=images, train=_SlowImages(images), val=images, tests={"id": images}, id_test="id")


def test_a_sleeping_loader_shows_as_data_wait(tmp_path):
    config = load_run_config(None, ["method=flyp", "model.name=digit-vit-t", "model.pretrained=null",
                                    f"optim.batch_size={BATCH}", "optim.epochs=2", "data.num_workers=0",
                                    f"run_dir={tmp_path}"])
    callbacks = _Throughputs()
    trainer = Trainer(config, _benchmark(), tmp_path, callbacks)
    trainer.train(progress=False)
    meter = trainer.throughput
    assert meter.steps == 6 and [step for step, _ in callbacks.seen] == [3, 6]
    assert meter.data_wait_s >= 6 * BATCH * SLEEP_S  # every image's pause, in the wait
    assert meter.data_wait_s + meter.compute_s == pytest.approx(sum(trainer.step_seconds), rel=1e-9)
    for epoch, (_, throughput) in enumerate(callbacks.seen, start=1):
        assert (throughput.epoch, throughput.steps) == (epoch, 3)
        assert throughput.samples_per_s == throughput.samples_per_s_per_process  # one process
        assert throughput.data_wait_share >= 3 * BATCH * SLEEP_S * throughput.samples_per_s / (3 * BATCH)
        assert throughput.peak_memory_gb is None  # CPU
    epochs_seconds = [3 * BATCH / t.samples_per_s for _, t in callbacks.seen]
    assert sum(epochs_seconds) == pytest.approx(sum(trainer.step_seconds), rel=1e-6)
    summary = meter.summary()
    assert summary["samples_per_s"] == pytest.approx(6 * BATCH / sum(trainer.step_seconds), rel=1e-6)
    assert len(summary["throughput"]) == 2
