"""Early stopping of sweep trials from inside their jobs, through the study's shared storage.

Single-objective studies use the Optuna pruner of the spec (median, successive halving,
Hyperband) through ``trial.report``/``should_prune``. Optuna does not support intermediate
values in multi-objective studies, so there a median rule on the spec's pruning metric is
applied by hand: each trial stores its per-epoch value as a user attribute, and a trial whose
value after ``warmup_epochs`` is worse than the median of the other trials at that epoch stops.
"""

from __future__ import annotations

import statistics
from typing import Any

import optuna

from harness.sweep.study import make_pruner, open_storage

_MIN_OTHERS = 2  # the median of fewer trials says nothing


class StudyPruner:
    def __init__(self, study: dict[str, Any]):
        warmup = study.get("prune_warmup", 1)
        loaded = optuna.load_study(study_name=study["name"], storage=open_storage(study["storage"]),
                                   pruner=make_pruner(study.get("pruner", "median"), warmup))
        self.study = loaded
        self.trial_id = loaded._storage.get_trial_id_from_study_id_trial_number(loaded._study_id, study["trial_number"])
        self.metric, self.maximize = study["prune_metric"], study["prune_metric"] == "val_acc"
        self.warmup = warmup
        self.trial = optuna.trial.Trial(loaded, self.trial_id) if len(loaded.directions) == 1 else None

    def should_stop(self, epoch: int, value: float) -> bool:
        """Report ``value`` for ``epoch``; True when the trial should stop."""
        if self.trial is not None:
            self.trial.report(value, epoch)
            return self.trial.should_prune()
        key = f"epoch_{self.metric}.{epoch}"
        self.study._storage.set_trial_user_attr(self.trial_id, key, value)
        if epoch <= self.warmup:
            return False
        others = [t.user_attrs[key] for t in self.study.get_trials(deepcopy=False)
                  if t._trial_id != self.trial_id and key in t.user_attrs]
        if len(others) < _MIN_OTHERS:
            return False
        median = statistics.median(others)
        return value < median if self.maximize else value > median
