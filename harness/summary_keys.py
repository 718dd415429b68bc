"""The keys a trial's record summary holds, known from its config before it runs.

Sweep specs are checked against them (an objective must be a summary key of every point, a pruner's
metric a per-epoch key), so a typo stops the sweep before any job instead of failing every trial.
``harness.train`` writes exactly these keys (a test holds the two together); docs/record.md
documents them.
"""

from __future__ import annotations

from harness.config import RunConfig
from harness.methods import METHODS

EPOCH_KEYS = ("val_acc", "val_ece", "val_nll")  # what eval.every_epoch records, and a pruner can watch
_EVALUATION = (*EPOCH_KEYS, *(f"{role}_{metric}" for metric in ("acc", "ece", "nll", "brier") for role in ("id", "ood")))
_UNCERTAINTY = ("id_ece_ci_low", "id_ece_ci_high", "ood_ece_ci_low", "ood_ece_ci_high", "id_ece_floor", "ood_ece_floor")
_SPECTRUM = ("sigma_min", "sigma_min_pretrained", "sigma_min_rel", "sigma_min_rel_pretrained", "effective_rank")


def teacher_evaluated(config: RunConfig) -> bool:
    """CaRot's EMA teacher exists (λ_SD > 0) and ``eval.teacher`` asks for its reports."""
    return METHODS[config.method].carot_terms and config.loss.sd_weight > 0 and config.eval.teacher


def summary_keys(config: RunConfig) -> list[str]:
    """Every key of the summary of a finished trial of ``config``, in the order the record lists them."""
    evaluated = [*_EVALUATION, *(_UNCERTAINTY if config.eval.bootstrap else ())]
    keys = list(evaluated)
    if config.eval.temperature_scaling:
        keys += ["ts_temperature", *(f"ts_{key}" for key in evaluated)]
    if teacher_evaluated(config):
        keys += [f"teacher_{key}" for key in evaluated]
    return keys + list(_SPECTRUM)
