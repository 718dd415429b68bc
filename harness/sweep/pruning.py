"""Early stopping of sweep trials from inside their jobs, through the study's shared storage.

Single-objective studies use the Optuna pruner of the spec (median, successive halving,
Hyperband): the job stores each epoch's value as the trial's intermediate value and asks the
pruner about the trial as stored, as ``Trial.report``/``should_prune`` would. Optuna does not support
intermediate values in multi-objective studies, so there a median rule on the spec's pruning metric is
applied by hand: each trial stores its per-epoch value as a user attribute, and a trial whose
value after ``warmup_epochs`` is worse than the median of the other trials at that epoch stops.
"""

from __future__ import annotations

import statistics

import optuna

from harness.sweep.context import PruningContext
from harness.sweep.study import TrialStore, make_pruner, open_storage

_MIN_OTHERS = 2  # the median of fewer trials says nothing


class StudyPruner:
    """The pruning side of one running trial."""

    def __init__(self, context: PruningContext):
        self.warmup = context.pruner.warmup_epochs
        self.pruner = make_pruner(context.pruner.name, self.warmup)
        backend = open_storage(context.storage)
        self.study = optuna.load_study(study_name=context.study, storage=backend, pruner=self.pruner)
        self.storage, self.number = backend, context.trial_number
        self.trial_id = TrialStore(backend, context.study).trial_id(self.number)
        self.metric, self.maximize = context.pruner.metric, context.pruner.metric == "val_acc"

    def should_stop(self, epoch: int, value: float) -> bool:
        """Report ``value`` for ``epoch``; True when the trial should stop."""
        if len(self.study.directions) == 1:
            return self._optuna_prunes(epoch, value)
        key = f"epoch_{self.metric}.{epoch}"
        self.storage.set_trial_user_attr(self.trial_id, key, value)
        if epoch <= self.warmup:
            return False
        others = [t.user_attrs[key] for t in self.study.get_trials(deepcopy=False)
                  if t.number != self.number and key in t.user_attrs]
        if len(others) < _MIN_OTHERS:
            return False
        median = statistics.median(others)
        return value < median if self.maximize else value > median

    def _optuna_prunes(self, epoch: int, value: float) -> bool:
        """``Trial.report`` then ``Trial.should_prune``, in public API: an epoch reported already (a requeued job
        repeating it) keeps its first value; the pruner judges the trial as stored, with this epoch's value."""
        if epoch not in self.storage.get_trial(self.trial_id).intermediate_values:
            self.storage.set_trial_intermediate_value(self.trial_id, epoch, float(value))
        return self.pruner.prune(self.study, self.storage.get_trial(self.trial_id))
