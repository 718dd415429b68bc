"""The keys a trial's record summary holds, known from its config before it runs.

Sweep specs are checked against them (an objective must be a summary key of every point, a pruner's
metric a per-epoch key), so a typo stops the sweep before any job instead of failing every trial.
``harness.train`` writes exactly these keys (a test holds the two together); docs/record.md
documents them.
"""

from __future__ import annotations

from harness.core.config import RunConfig
from harness.core.methods import METHODS

EPOCH_KEYS = ("val_acc", "val_ece", "val_nll")  # what eval.every_epoch records, and a pruner can watch
_EVALUATION = (*EPOCH_KEYS, *(f"{role}_{metric}" for metric in ("acc", "ece", "nll", "brier") for role in ("id", "ood")))
_UNCERTAINTY = ("id_ece_ci_low", "id_ece_ci_high", "ood_ece_ci_low", "ood_ece_ci_high", "id_ece_floor", "ood_ece_floor")
_SPECTRUM = ("sigma_min", "sigma_min_pretrained", "sigma_min_rel", "sigma_min_rel_pretrained", "effective_rank")
STUDENT_KEYS = (*_EVALUATION, *_UNCERTAINTY, *_SPECTRUM)  # every unprefixed key a (schema-2) summary can hold


def has_teacher(config: RunConfig) -> bool:
    """CaRot's self-distillation is on (λ_SD > 0), so the trial keeps an EMA teacher."""
    return METHODS[config.method].carot_terms and config.loss.sd_weight > 0


def teacher_evaluated(config: RunConfig) -> bool:
    """The trial has an EMA teacher and ``eval.teacher`` asks for its reports."""
    return has_teacher(config) and config.eval.teacher


def summary_keys(config: RunConfig) -> list[str]:
    """Every key of the summary of a finished trial of ``config``, in the order the record lists them."""
    evaluated = [*_EVALUATION, *(_UNCERTAINTY if config.eval.bootstrap else ())]
    keys = list(evaluated)
    if config.eval.temperature_scaling:
        keys += ["ts_temperature", *(f"ts_{key}" for key in evaluated)]
    if teacher_evaluated(config):
        keys += [f"teacher_{key}" for key in evaluated]
    return keys + list(_SPECTRUM)
