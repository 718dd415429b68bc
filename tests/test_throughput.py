"""Throughput telemetry: time waiting for a batch is counted as data wait, not compute, and each epoch's
figures agree with what the test can time itself: a loader that sleeps a known time per image, and the wall
clock around the training."""

from __future__ import annotations

import time

import pytest
import torch
from item_sets import ItemByItem

from harness.core.config import load_run_config
from harness.data import Benchmark, ImageSet
from harness.trial.callbacks import TrainCallbacks
from harness.trial.trainer import Trainer

SLEEP_S = 0.02  # per image, read in this process (data.num_workers=0)
BATCH, IMAGES = 4, 12  # 3 steps an epoch


class _SlowImages(ItemByItem):
    """Images served one by one, each after a pause: a loader that starves training."""

    def __getitem__(self, index: int):
        time.sleep(SLEEP_S)
        return super().__getitem__(index)


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
    started = time.perf_counter()
    trainer.train(progress=False)
    wall = time.perf_counter() - started
    meter = trainer.throughput
    assert meter.steps == 6 and [step for step, _ in callbacks.seen] == [3, 6]
    assert meter.data_wait_s >= 6 * BATCH * SLEEP_S  # every image's pause, in the wait
    assert meter.data_wait_s + meter.compute_s <= wall  # the steps, inside the training's own wall time
    for epoch, (_, throughput) in enumerate(callbacks.seen, start=1):
        assert (throughput.epoch, throughput.steps) == (epoch, 3)
        assert throughput.samples_per_s == throughput.samples_per_s_per_process  # one process
        # an epoch's 12 images took at least their pauses and at most the whole training
        assert 3 * BATCH / wall <= throughput.samples_per_s <= 1 / SLEEP_S
        epoch_seconds = 3 * BATCH / throughput.samples_per_s
        assert throughput.data_wait_share >= 3 * BATCH * SLEEP_S / epoch_seconds
        assert throughput.peak_memory_gb is None  # CPU
    summary = meter.summary()
    assert 6 * BATCH / wall <= summary["samples_per_s"] <= 1 / SLEEP_S
    assert BATCH * SLEEP_S <= summary["step_s_median"] <= wall / 3  # a step waits for 4 images; 6 steps in the wall
    assert len(summary["throughput"]) == 2
