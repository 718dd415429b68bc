import optuna

from harness.core.config import load_run_config
from harness.core.record import TrialOutcome
from harness.sweep.context import PruningContext
from harness.sweep.driver import Sweep
from harness.sweep.pruning import StudyPruner
from harness.sweep.spec import Pruner, SweepSpec
from harness.sweep.study import tell_result
from harness.trial.callbacks import TrainCallbacks, TrialPruned
from harness.trial.runner import run


def _study(tmp_path, directions):
    storage = f"sqlite:///{tmp_path / 'study.db'}"
    study = optuna.create_study(study_name="p", storage=storage, directions=directions)
    return study, storage


def test_multi_objective_median_rule(tmp_path):
    study, storage = _study(tmp_path, ["maximize", "minimize"])
    for value in (0.8, 0.9):
        trial = study.ask()
        trial.set_user_attr("epoch_val_acc.2", value)
        study.tell(trial, [value, 0.1])
    number = study.ask().number
    pruner = StudyPruner(PruningContext(storage=storage, study="p", trial_number=number,
                                      pruner=Pruner(name="median", metric="val_acc", warmup_epochs=1)))
    assert not pruner.should_stop(1, 0.1)  # warm-up epoch: never
    assert pruner.should_stop(2, 0.5)  # below the median 0.85 of the others
    assert not pruner.should_stop(2, 0.86)
    assert study.trials[-1].user_attrs["epoch_val_acc.2"] == 0.86


def test_single_objective_uses_the_optuna_pruner(tmp_path):
    study, storage = _study(tmp_path, ["maximize"])
    for value in (0.8, 0.9, 0.85, 0.7, 0.95):
        trial = study.ask()
        trial.report(value, 1)
        study.tell(trial, value)
    number = study.ask().number
    pruner = StudyPruner(PruningContext(storage=storage, study="p", trial_number=number,
                                      pruner=Pruner(name="median", metric="val_acc", warmup_epochs=0)))
    assert pruner.should_stop(1, 0.5)  # Optuna's median pruner: below the median 0.85 of 5 finished trials
    assert study.trials[-1].intermediate_values == {1: 0.5}


class _PruneAtFirstEpoch(TrainCallbacks):
    def on_epoch(self, epoch, metrics):
        raise TrialPruned("test")


def test_pruned_trial_is_recorded_as_pruned_in_record_study_and_results(tmp_path, digitshift):
    config = load_run_config(None, ["model.name=digit-vit-t", "model.pretrained=null", "method=ft", "optim.epochs=2",
                                    "optim.batch_size=200", "eval.every_epoch=true", f"run_dir={tmp_path / 'run'}"])
    record = run(config, callbacks=_PruneAtFirstEpoch(), progress=False)
    assert record.status == "pruned" and record.pruned_at_step == 10 and len(record.history) == 1
    spec = SweepSpec(name="pruned", search={"method": {"grid": ["ft"]}})
    sweep = Sweep(spec, tmp_path, tmp_path / "out", f"sqlite:///{tmp_path / 'out.db'}")
    (tmp_path / "out").mkdir()
    study = sweep.open_study()
    trial = study.ask()
    trial.set_user_attr("point", "p")
    tell_result(study, sweep.store, spec, trial.number, TrialOutcome.of(record))  # what the job returns
    frozen = study.trials[0]
    assert frozen.state == optuna.trial.TrialState.PRUNED
    sweep.record_missing(study)
    assert '"state": "PRUNED"' in (tmp_path / "out" / "results.jsonl").read_text()
