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
from harness.models.clip import check_orthogonality, require_known_model

log = logging.getLogger(__name__)


def train_size(data: DataConfig) -> int | None:
    """The training set's size when it is known without reading the data in full: fixed by an embedded benchmark,
    listed from a benchmark file's folders or CSVs (no image opened); None for a registered benchmark read from
    disk (ImageNet)."""
    if is_benchmark_file(data.benchmark):
        return training_size(read_benchmark_file(data.benchmark, data, check=False))
    return known_train_size(data.benchmark)


def _check_batch(config: RunConfig, size: int | None) -> None:
    """A training method needs at least one full batch per epoch."""
    if METHODS[config.method].trains and size is not None and size < config.optim.batch_size:
        raise UsageError(f"optim.batch_size ({config.optim.batch_size}) exceeds the training set ({size} images of "
                         f"{config.data.benchmark}); lower it for method {config.method}")


def uses_projection(config: RunConfig) -> bool:
    """Whether the trial's loss reads the visual projection (CaRot's orthogonality or cross term)."""
    return config.loss.oc_weight > 0 or config.loss.cross_weight > 0


def preflight(configs: Iterable[RunConfig]) -> None:
    """Check every distinct model and data section among ``configs``; raises ``UsageError`` on the first problem."""
    configs = list(configs)
    models, data_sections, projections = {}, {}, set()
    for config in configs:
        models[(config.model.name, config.model.pretrained)] = config.model
        data_sections[config.data.model_dump_json()] = config.data
        if uses_projection(config):
            projections.add(config.model.name)
    for name, pretrained in models:
        require_known_model(name, pretrained)
    for name in sorted(projections):
        check_orthogonality(name)
    sizes = {key: check_benchmark(data) for key, data in data_sections.items()}
    for config in configs:
        _check_batch(config, sizes[config.data.model_dump_json()])
    log.debug("preflight: %d model(s), %d data section(s) checked", len(models), len(data_sections))
