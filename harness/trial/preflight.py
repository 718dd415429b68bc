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

from harness.core.config import RunConfig
from harness.data import check_benchmark
from harness.models.clip import check_orthogonality, require_known_model

log = logging.getLogger(__name__)


def uses_projection(config: RunConfig) -> bool:
    """Whether the trial's loss reads the visual projection (CaRot's orthogonality or cross term)."""
    return config.loss.oc_weight > 0 or config.loss.cross_weight > 0


def preflight(configs: Iterable[RunConfig]) -> None:
    """Check every distinct model and data section among ``configs``; raises ``UsageError`` on the first problem."""
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
    for data in data_sections.values():
        check_benchmark(data)
    log.debug("preflight: %d model(s), %d data section(s) checked", len(models), len(data_sections))
