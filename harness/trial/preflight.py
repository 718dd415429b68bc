"""Checks of a run config that need no training and no data read in full, run before any work.

``harness.train`` runs them before it pre-trains or builds anything, the sweep before its dry-run
plan and before it submits a job: a bad model name, pretrained tag, weights file, hf-hub model that
is not cached, data root, benchmark file (folders, columns, classes, empty splits, a sample of
unreadable images) or an architecture the orthogonality term cannot handle stops the command with
exit code 2 and one line, instead of failing inside every submitted job.
"""

from __future__ import annotations

import logging
from typing import Iterable

from harness.core.config import DataConfig, RunConfig, is_benchmark_file
from harness.core.errors import UsageError
from harness.core.methods import METHODS
from harness.data import check_benchmark, known_train_size
from harness.data.benchmark_file import read_benchmark_file, training_size
from harness.models.clip import check_orthogonality
from harness.trial.pretrain import check_model

log = logging.getLogger(__name__)


def train_size(data: DataConfig) -> int | None:
    """The training set's size when it is known without reading the data in full: fixed by an embedded benchmark,
    listed from a benchmark file's folders or CSVs (no image opened); None for a registered benchmark read from
    disk (ImageNet)."""
    if is_benchmark_file(data.benchmark):
        return training_size(read_benchmark_file(data.benchmark, data, check=False))
    return known_train_size(data.benchmark)


def _check_batch(config: RunConfig, size: int | None, processes: int) -> None:
    """A training method needs at least one full batch per epoch, split evenly over processes and micro-batches."""
    optim = config.optim
    if not METHODS[config.method].trains:
        return
    if size is not None and size < optim.batch_size:
        raise UsageError(f"optim.batch_size ({optim.batch_size}) exceeds the training set ({size} images of "
                         f"{config.data.benchmark}); lower it for method {config.method}")
    if optim.batch_size % (processes * optim.accum_steps):
        raise UsageError(f"optim.batch_size ({optim.batch_size}) must be divisible by the processes of a trial "
                         f"({processes}) x optim.accum_steps ({optim.accum_steps})")


def uses_projection(config: RunConfig) -> bool:
    """Whether the trial's loss reads the visual projection (CaRot's orthogonality or cross term)."""
    return config.loss.oc_weight > 0 or config.loss.cross_weight > 0


def preflight(configs: Iterable[RunConfig], processes: int = 1) -> None:
    """Check every distinct model and data section among ``configs``, and that each batch splits over a trial's
    ``processes``; raises ``UsageError`` on the first problem."""
    configs = list(configs)
    models, data_sections, projections = {}, {}, set()
    for config in configs:
        models[(config.model.name, config.model.pretrained)] = config.model
        data_sections[config.data.model_dump_json()] = config.data
        if uses_projection(config):
            projections.add(config.model.name)
    for model in models.values():
        check_model(model)
    for name in sorted(projections):
        check_orthogonality(name)
    sizes = {key: check_benchmark(data) for key, data in data_sections.items()}
    for config in configs:
        _check_batch(config, sizes[config.data.model_dump_json()], processes)
    log.debug("preflight: %d model(s), %d data section(s) checked", len(models), len(data_sections))


def prepare_shared(configs: Iterable[RunConfig]) -> None:
    """After ``preflight``: build what the trials of ``configs`` share once, in this process, with visible progress,
    rather than in the first jobs, where it would run with a fraction of the cores and its progress in a log: each
    benchmark built or listed, the embedded model pre-trained, a tag's weights found or downloaded."""
    from harness.data import load_benchmark
    from harness.trial.pretrain import ensure_weights

    configs = list(configs)
    for data in {c.data.model_dump_json(): c.data for c in configs}.values():
        load_benchmark(data.benchmark, data=data)
    for model in {c.model.model_dump_json(): c.model for c in configs}.values():
        ensure_weights(model)
