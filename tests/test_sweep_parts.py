"""The parts of the sweep driver on their own: the results sink, the plan, adopting orphans, pruning in a job."""

import json
import logging
import os
import socket
import subprocess
from pathlib import Path

import optuna
import pytest
from optuna.distributions import FloatDistribution
from optuna.trial import TrialState, create_trial

from harness.core.record import ResultLine, RunRecord, TrialOutcome
from harness.sweep.context import PruningContext
from harness.sweep.driver import Sweep
from harness.sweep.launcher import Launcher
from harness.sweep.plan import Plan
from harness.sweep.pruning import StudyPruner
from harness.sweep.sink import RESULTS, ResultSink, result_line
from harness.sweep.spec import Pruner, SweepSpec
from harness.sweep.study import make_pruner, tell_result

SWEEP_DIR = Path(__file__).resolve().parent.parent / "harness" / "sweep"


def _line(trial: int, **fields) -> ResultLine:
    return ResultLine(**{"trial": trial, "state": "COMPLETE", "params": {"method": "ft"}, "seed": 0, **fields})


def test_an_append_after_a_torn_last_line_cuts_it_off_instead_of_gluing_onto_it(tmp_path, caplog):
    path = tmp_path / RESULTS
    good = _line(0).dumps()
    path.write_text(good + "\n" + _line(1).dumps()[:20])  # a crash in the middle of writing trial 1
    sink = ResultSink(tmp_path)
    with caplog.at_level(logging.WARNING, logger="harness.sweep.sink"):
        assert [line.trial for line in sink.read()] == [0]  # the torn line is skipped, and named
        assert f"{path}:2: not valid JSON" in caplog.text
        assert sink.append(_line(2))
    assert f"{path}:2: a line cut short" in caplog.text
    text = path.read_text()
    assert text.endswith("\n") and text.splitlines()[0] == good
    assert [json.loads(line)["trial"] for line in text.splitlines()] == [0, 2]


def test_a_whole_last_line_without_its_newline_is_kept(tmp_path):
    (tmp_path / RESULTS).write_text(_line(0).dumps())
    sink = ResultSink(tmp_path)
    assert sink.append(_line(1))
    assert [json.loads(line)["trial"] for line in (tmp_path / RESULTS).read_text().splitlines()] == [0, 1]


def test_the_sink_writes_each_trial_once_and_skips_corrupt_lines_with_their_number(tmp_path, caplog):
    sink = ResultSink(tmp_path / "new")  # no file yet: nothing to read, the folder is made on the first append
    assert sink.read() == [] and sink.trials() == set()
    assert sink.append(_line(3)) and not sink.append(_line(3, state="FAIL"))
    with open(sink.path, "a") as handle:
        handle.write('{"trial": 4, "sta{"trial": 5}\n')  # what the old driver glued together
    assert sink.append(_line(6))
    with caplog.at_level(logging.WARNING, logger="harness.sweep.sink"):
        assert [(line.trial, line.state) for line in sink.read()] == [(3, "COMPLETE"), (6, "COMPLETE")]
    assert f"{sink.path}:2: not valid JSON" in caplog.text


def test_a_trial_whose_line_was_torn_is_written_again(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    spec = SweepSpec(name="torn-line", search={"method": {"grid": ["ft", "lp"]}})
    sweep = Sweep(spec, tmp_path, out, f"sqlite:///{tmp_path / 'study.db'}")
    study = sweep.open_study()
    for method in ("ft", "lp"):
        trial = study.ask({"method": optuna.distributions.CategoricalDistribution(["ft", "lp"])})
        trial.set_user_attr("point", f"method={method!r} | seed=0")
        tell_result(study, sweep.store, spec, trial.number, TrialOutcome(status="ok", summary={"val_acc": 0.5}))
    lines = [result_line(sweep.store.get(number), out) for number in (0, 1)]
    (out / RESULTS).write_text(lines[0].dumps() + "\n" + lines[1].dumps()[:-7])
    sweep.record_missing(study)
    assert ResultSink(out).read() == lines
    sweep.record_missing(study)  # nothing missing: nothing appended
    assert len((out / RESULTS).read_text().splitlines()) == 2


def test_a_sampler_plan_runs_each_sampled_parameter_set_once_per_seed(tmp_path):
    spec = SweepSpec(name="plan", search={"optim.lr": {"low": 1e-5, "high": 1e-3}}, sampler={"name": "random"},
                     n_trials=2, seeds=[0, 1])
    plan = Plan(spec, tmp_path, tmp_path / "out")
    lr = FloatDistribution(1e-5, 1e-3)
    trials = [create_trial(params={"optim.lr": value}, distributions={"optim.lr": lr}, value=0.0,
                           user_attrs={"sampled": sampled}) for value, sampled in ((1e-4, True), (2e-4, False), (1e-4, True))]
    assert plan.planned() is None and plan.total() == 4
    assert plan.points(trials) == [({"optim.lr": 1e-4}, 0), ({"optim.lr": 1e-4}, 1)]  # a repeated draw is one point
    assert plan.run_dir({"optim.lr": 1e-4}, 1).parent == tmp_path / "out" / "runs"
    assert "sampler random (seed 0): 2 points x seeds [0, 1]" in plan.describe("sqlite:///x.db")


def _running(**attrs) -> optuna.trial.FrozenTrial:
    return create_trial(state=TrialState.RUNNING, user_attrs=attrs)


def _dead_pid() -> int:
    process = subprocess.Popen(["true"])
    process.wait()
    return process.pid


def test_the_launcher_adopts_only_trials_whose_driver_and_job_are_gone(tmp_path):
    host = socket.gethostname()
    dead = f"{host}:{_dead_pid()}"
    assert Launcher.adopt(_running(driver=f"{host}:{os.getppid()}")) is None  # its driver is alive
    assert Launcher.adopt(_running(driver=dead)) == TrialOutcome.failed("interrupted before launch")
    record = RunRecord(status="ok", summary={"val_acc": 0.5}, config={}, config_digest="d", method="ft", versions={},
                       paths={"run_dir": str(tmp_path), "record": str(tmp_path / "record.json")})
    record.write(tmp_path / "record.json")
    adopted = Launcher.adopt(_running(driver=dead, run_dir=str(tmp_path), launcher="local", job_id=str(_dead_pid())))
    assert adopted == TrialOutcome(status="ok", summary={"val_acc": 0.5}, record=str(tmp_path / "record.json"))
    gone = Launcher.adopt(_running(driver=dead, run_dir=str(tmp_path / "never"), launcher="local", job_id=str(_dead_pid())))
    assert gone == TrialOutcome.failed("its driver and job died")
    assert Launcher.adopt(_running(driver=dead, run_dir=str(tmp_path), launcher="local", job_id=str(os.getppid()))) is None


# Per epoch, the value of earlier trials (which finish) and of the judged trial (which may be pruned).
_HISTORY = [[0.5, 0.6, 0.7, 0.8, 0.85, 0.9], [0.4, 0.5, 0.55, 0.6, 0.62, 0.65], [0.6, 0.7, 0.75, 0.8, 0.82, 0.84],
            [0.3, 0.35, 0.4, 0.45, 0.5, 0.52], [0.55, 0.65, 0.7, 0.72, 0.74, 0.76]]
_JUDGED = [0.45, 0.5, 0.52, 0.54, 0.56, 0.58]


def _report(trial: optuna.trial.Trial, epoch: int, value: float) -> bool:
    trial.report(value, epoch)
    return trial.should_prune()


@pytest.mark.parametrize("name", ["median", "halving", "hyperband"])
def test_the_job_pruner_decides_as_optunas_trial_api(tmp_path, name):
    """StudyPruner (storage's public API + pruner.prune) against Trial.report/should_prune on a twin study."""
    decisions = []
    for side in ("trial_api", "job"):
        storage = f"sqlite:///{tmp_path / side}.db"
        study = optuna.create_study(study_name="twin", storage=storage, direction="maximize", pruner=make_pruner(name, 1))
        for values in _HISTORY:
            trial = study.ask()
            for epoch, value in enumerate(values, start=1):
                trial.report(value, epoch)
                trial.should_prune()
            study.tell(trial, values[-1])
        trial = study.ask()
        if side == "trial_api":
            decisions.append([_report(trial, epoch, value) for epoch, value in enumerate(_JUDGED, start=1)])
        else:
            pruner = StudyPruner(PruningContext(storage=storage, study="twin", trial_number=trial.number,
                                      pruner=Pruner(name=name, metric="val_acc", warmup_epochs=1)))
            decisions.append([pruner.should_stop(epoch, value) for epoch, value in enumerate(_JUDGED, start=1)])
        assert optuna.load_study(study_name="twin", storage=storage).trials[-1].intermediate_values == \
            dict(enumerate(_JUDGED, start=1))
    assert decisions[0] == decisions[1]
    assert any(decisions[1]), decisions  # the values are low enough to be pruned at some epoch


def test_the_job_pruner_keeps_the_first_value_of_an_epoch_reported_twice(tmp_path):
    storage = f"sqlite:///{tmp_path / 'study.db'}"
    study = optuna.create_study(study_name="p", storage=storage, direction="maximize")
    number = study.ask().number
    pruner = StudyPruner(PruningContext(storage=storage, study="p", trial_number=number,
                                      pruner=Pruner(name="median", metric="val_acc", warmup_epochs=0)))
    pruner.should_stop(1, 0.5)
    pruner.should_stop(1, 0.9)  # a requeued job repeating epoch 1
    assert study.trials[-1].intermediate_values == {1: 0.5}


def test_the_progress_line_counts_running_queued_failed_and_retried_points():
    from harness.sweep.claims import point_states, progress

    def trial(point, state, **attrs):
        return create_trial(state=state, value=0.5 if state == TrialState.COMPLETE else None,
                            user_attrs={"point": point, **attrs})

    trials = [trial("a", TrialState.COMPLETE),                      # done at once
              trial("b", TrialState.FAIL, error="boom"), trial("b", TrialState.COMPLETE),  # retried, then done
              trial("c", TrialState.FAIL, error="x"), trial("c", TrialState.FAIL, error="y"),  # failed for good (1 retry)
              trial("d", TrialState.FAIL, error="boom"), trial("d", TrialState.RUNNING),  # retrying now
              trial("e", TrialState.FAIL, error="interrupted (Ctrl-C)"), trial("e", TrialState.RUNNING),  # not a failure
              trial("f", TrialState.WAITING), trial("g", TrialState.WAITING)]  # queued, not running
    counts = progress(point_states(trials), retries=1)
    assert (counts.settled, counts.running, counts.queued, counts.failed, counts.retried) == (3, 2, 2, 1, 2)
    assert counts.line() == "running 2, queued 2, failed 1, retried 2"


def test_the_first_result_told_wins_and_a_second_is_dropped(tmp_path):
    spec = SweepSpec(name="twice", search={"method": {"grid": ["ft"]}})
    sweep = Sweep(spec, tmp_path, tmp_path / "out", f"sqlite:///{tmp_path / 'study.db'}")
    study = sweep.open_study()
    number = study.ask().number
    tell_result(study, sweep.store, spec, number, TrialOutcome(status="ok", summary={"val_acc": 0.7}))
    tell_result(study, sweep.store, spec, number, TrialOutcome.failed("adopted late by another driver"))  # no error
    trial = sweep.store.get(number)
    assert trial.state == TrialState.COMPLETE and trial.values == [0.7] and trial.user_attrs["error"] is None
