"""TPE, NSGA-II, successive halving, Hyperband and two drivers on one SQLite file, through the real sweep driver.

Each test runs ``harness.sweep.driver.Sweep`` end to end (claims, launcher, ``TrialJob``, study, results.jsonl) with
the in-process debug launcher; only the training, ``harness.trial.runner.run``, is replaced by ``FakeTraining``: known
curves of the trial's config, reported epoch by epoch through the job's callbacks (so the job's pruner judges them)
and returned as a record, as the trainer does. The expectations come from outside the driver: the fake's formulas, and
Optuna's own samplers and pruners replayed on an in-memory study.
"""

from __future__ import annotations

import math
import socket
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import optuna
import pytest
import yaml
from optuna.study import StudyDirection
from optuna.trial import FrozenTrial, TrialState
from submitit.local.debug import DebugJob

import harness.trial.runner
from harness.core.record import RunRecord
from harness.sweep import driver
from harness.sweep.driver import Sweep
from harness.sweep.sink import ResultSink
from harness.sweep.spec import SweepSpec, load_spec
from harness.sweep.study import default_storage
from harness.trial.callbacks import TrialPruned

BASE = {"method": "ft", "model": {"name": "digit-vit-t", "pretrained": None}, "optim": {"epochs": 2}}
LR = {"low": 1e-6, "high": 1e-2, "log": True}
BASE_WEIGHT_DECAY = 0.1  # RunConfig's optim.weight_decay, for specs that do not search it
TWO_OBJECTIVES = [{"key": "val_acc", "direction": "maximize"}, {"key": "val_ece", "direction": "minimize"}]


def val_acc(lr: float, seed: int, epoch: int, epochs: int) -> float:
    """The fake's accuracy: rises linearly to a final value that peaks at lr 1e-4, 0.25 lower per decade away, plus
    0.01 per seed; so a worse lr is worse at every epoch, and the seeds of one point differ."""
    return (1 - abs(math.log10(lr) + 4) / 4 + 0.01 * seed) * epoch / epochs


def val_ece(weight_decay: float, seed: int) -> float:
    return weight_decay / 10 + 0.001 * seed


class FakeTraining:
    """Stands in for ``harness.trial.runner.run``: no model, the per-epoch values of ``val_acc``/``val_ece`` told to the
    callbacks (a ``TrialPruned`` from them ends the trial as pruned, as in the trainer), the record written and
    returned. ``runs`` lists every call's (run dir, lr, seed); ``before``, when set, is called first."""

    def __init__(self):
        self.runs: list[tuple[Path, float, int]] = []
        self.before: Callable[[], None] | None = None

    def __call__(self, config, callbacks=None, progress=True, env=None, benchmarks=None) -> RunRecord:
        if self.before is not None:
            self.before()
        run_dir, optim = Path(config.run_dir), config.optim
        self.runs.append((run_dir, optim.lr, config.seed))
        history, status = [], "ok"
        for epoch in range(1, optim.epochs + 1):
            acc = val_acc(optim.lr, config.seed, epoch, optim.epochs)
            history.append({"epoch": epoch, "step": 10 * epoch, "val_acc": acc,
                            "val_ece": val_ece(optim.weight_decay, config.seed), "val_nll": 1 - acc})
            try:
                callbacks.on_epoch(epoch, history[-1])
            except TrialPruned:
                status = "pruned"
                break
        last = history[-1]
        record = RunRecord(status=status, config=config.model_dump(mode="json"), config_digest="fake",
                           method=config.method, versions={}, history=history,
                           paths={"run_dir": str(run_dir), "record": str(run_dir / "record.json")},
                           summary={k: v for k, v in last.items() if k.startswith("val_")} if status == "ok" else {},
                           pruned_at_step=last["step"] if status == "pruned" else None)
        run_dir.mkdir(parents=True, exist_ok=True)
        record.write(run_dir / "record.json")
        return record


@pytest.fixture
def fake(monkeypatch, digitshift) -> FakeTraining:
    """The fake training, and a driver that polls often: a fake trial ends at once, so the driver's 0.5 s poll and 2 s
    re-claim intervals would be most of each test's time. ``digitshift``: built once a session (``Sweep.prepare``
    loads it)."""
    monkeypatch.setattr(driver, "_POLL_SECONDS", 0.01)
    monkeypatch.setattr(driver, "_CLAIM_SECONDS", 0.05)
    training = FakeTraining()
    monkeypatch.setattr(harness.trial.runner, "run", training)  # TrialJob imports it when it runs
    return training


def _spec(tmp_path: Path, **fields) -> SweepSpec:
    data = {"name": "fake-sweep", "base": BASE, "seeds": [0], "launcher": {"kind": "debug", "parallelism": 1},
            "tracking": {"mode": "disabled"}, **fields}
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(data))
    return load_spec(path)


def _trials(spec: SweepSpec, storage: str) -> list[FrozenTrial]:
    return optuna.load_study(study_name=spec.name, storage=storage).get_trials()


def _run(spec: SweepSpec, out: Path) -> list[FrozenTrial]:
    """Run a whole sweep with one driver (its study in ``out``); the study's trials, by number."""
    sweep = Sweep(spec, out.parent, out, default_storage(out))
    assert sweep.run() == 0
    return _trials(spec, sweep.storage)


def _final_values(spec: SweepSpec, trial: FrozenTrial) -> list[float]:
    """The objectives the fake's formulas give the trial's point, in the spec's order."""
    params, seed = trial.params, trial.user_attrs["seed"]
    final = {"val_acc": val_acc(params["optim.lr"], seed, 1, 1),
             "val_ece": val_ece(params.get("optim.weight_decay", BASE_WEIGHT_DECAY), seed)}
    return [final[objective.key] for objective in spec.objectives]


def _assert_results_match(out: Path, trials: list[FrozenTrial]) -> None:
    """results.jsonl holds one line per trial, with the study's state, values, point and seed."""
    lines = ResultSink(out).read()
    assert [line.trial for line in lines] == [t.number for t in trials]
    for line, trial in zip(lines, trials):
        assert (line.state, line.values, line.params, line.seed, line.point) == \
            (trial.state.name, trial.values, trial.params, trial.user_attrs["seed"], trial.user_attrs["point"])
        assert line.status == {"COMPLETE": "ok", "PRUNED": "pruned"}[line.state]


def _sampled(trials: list[FrozenTrial]) -> list[FrozenTrial]:
    """The trials a sampler drew (the others are the further seeds of a draw, queued by the driver)."""
    return [t for t in trials if t.user_attrs.get("sampled")]


def _replay_draws(spec: SweepSpec, trials: list[FrozenTrial],
                  sampler: Callable[[int], optuna.samplers.BaseSampler]) -> list[dict[str, float]]:
    """What ``sampler(seed)`` draws for each of the driver's draws, seeded as ``make_sampler`` documents (the spec's
    seed plus the study's trial count) and shown the trials the driver had then (with parallelism 1, all finished):
    the driver's draws if it really asks that sampler."""
    draws = []
    for drawn in _sampled(trials):
        study = optuna.create_study(directions=[o.direction for o in spec.objectives])
        study.add_trials([t for t in trials if t.number < drawn.number])
        study.sampler = sampler(spec.sampler.seed + drawn.number)
        trial = study.ask()
        draws.append({key: trial.suggest_float(key, space.low, space.high, log=space.log)
                      for key, space in spec.search.items()})
    return draws


def test_tpe_through_the_driver_runs_each_draw_once_per_seed_and_draws_reproducibly(tmp_path, fake):
    spec = _spec(tmp_path, search={"optim.lr": LR}, sampler={"name": "tpe", "seed": 0}, n_trials=6, seeds=[0, 1])
    trials = _run(spec, tmp_path / "first")
    assert len(trials) == 12 and {t.state for t in trials} == {TrialState.COMPLETE}
    seeds_of: dict[float, list[int]] = {}
    for trial in trials:
        seeds_of.setdefault(trial.params["optim.lr"], []).append(trial.user_attrs["seed"])
        assert trial.values == _final_values(spec, trial)
    assert len(seeds_of) == 6 and all(sorted(seeds) == [0, 1] for seeds in seeds_of.values())
    assert Counter((lr, seed) for _, lr, seed in fake.runs) == Counter({(lr, s): 1 for lr in seeds_of for s in (0, 1)})
    _assert_results_match(tmp_path / "first", trials)
    drawn = [t.params for t in _sampled(trials)]
    # the 6th draw comes after 10 finished trials, TPE's startup count: a random sampler would draw another point
    assert drawn == _replay_draws(spec, trials, lambda seed: optuna.samplers.TPESampler(seed=seed, multivariate=True))
    again = _run(spec, tmp_path / "second")  # a new study, in another directory
    assert [t.params for t in _sampled(again)] == drawn


@pytest.mark.parametrize("search, sampler, fills_first", [({"optim.lr": {"grid": [1e-5, 1e-4, 1e-3]}}, "grid", True),
                                                           ({"optim.lr": LR}, "random", False)])
def test_a_grid_gives_the_freed_slot_its_next_trial_before_telling_and_a_sampler_draws_after(
        tmp_path, fake, monkeypatch, search, sampler, fills_first):
    """A grid's next point needs no result, so a free slot gets it before the driver tells the study the trial that
    ended (telling writes tens of attributes); a sampler's next draw must see that result, so it comes after."""
    spec = _spec(tmp_path, search=search, sampler={"name": sampler}, n_trials=3)
    completed_at_submit: list[int] = []
    submit = driver.Launcher.submit

    def counting_submit(self, claims):
        study = optuna.load_study(study_name=spec.name, storage=default_storage(tmp_path / "out"))
        completed_at_submit.append(len(study.get_trials(states=(TrialState.COMPLETE,))))
        return submit(self, claims)

    monkeypatch.setattr(driver.Launcher, "submit", counting_submit)
    assert len(_run(spec, tmp_path / "out")) == 3
    assert completed_at_submit == ([0, 0, 1] if fills_first else [0, 1, 2])


def test_nsga2_through_the_driver_fills_a_two_objective_study(tmp_path, fake):
    spec = _spec(tmp_path, search={"optim.lr": LR, "optim.weight_decay": {"low": 0.0, "high": 0.5}},
                 sampler={"name": "nsga2", "seed": 7}, n_trials=6, objectives=TWO_OBJECTIVES)
    trials = _run(spec, tmp_path / "out")
    study = optuna.load_study(study_name=spec.name, storage=default_storage(tmp_path / "out"))
    assert study.directions == [StudyDirection.MAXIMIZE, StudyDirection.MINIMIZE]
    assert len(trials) == 6 and {t.state for t in trials} == {TrialState.COMPLETE}
    assert all(t.values == _final_values(spec, t) for t in trials)
    assert len({tuple(t.params.values()) for t in trials}) == 6
    _assert_results_match(tmp_path / "out", trials)
    # NSGA-II's first generation draws as its random sampler does; the generation it files each of its trials under
    # tells that NSGA-II drew them (a private key of Optuna's GA samplers, read through their own class method)
    generation = optuna.samplers.NSGAIISampler._get_generation_key()
    assert all(t.system_attrs.get(generation) == 0 for t in trials)
    nsga2 = optuna.samplers.NSGAIISampler
    assert [t.params for t in trials] == _replay_draws(spec, trials, lambda seed: nsga2(seed=seed))


def _replay_pruning(spec: SweepSpec, lrs: list[float], epochs: int) -> dict[int, tuple[str, dict[int, float]]]:
    """Each trial's state and reported values when Optuna's pruner, configured as ``make_pruner`` documents, judges the
    fake's curves through ``Trial.report``/``should_prune``, one trial after another in grid order, on an in-memory
    study of the sweep's name (Hyperband puts trials in brackets by study name and trial number)."""
    kind = {"halving": optuna.pruners.SuccessiveHalvingPruner, "hyperband": optuna.pruners.HyperbandPruner}
    pruner = kind[spec.pruner.name](min_resource=max(1, spec.pruner.warmup_epochs))
    study = optuna.create_study(study_name=spec.name, direction="maximize", pruner=pruner)
    for lr in lrs:
        trial = study.ask()
        for epoch in range(1, epochs + 1):
            trial.report(val_acc(lr, 0, epoch, epochs), epoch)
            if trial.should_prune():
                study.tell(trial, state=TrialState.PRUNED)
                break
        else:
            study.tell(trial, val_acc(lr, 0, epochs, epochs))
    return {t.number: (t.state.name, t.intermediate_values) for t in study.trials}


@pytest.mark.parametrize("name, warmup, epochs, lrs", [
    ("halving", 2, 4, [3e-5, 1e-4, 1e-6, 3e-4, 1e-2, 1e-5]),
    ("hyperband", 1, 9, [1e-4, 3e-5, 3e-4, 1e-5, 1e-3, 1e-6, 1e-2, 3e-6]),
])
def test_halving_and_hyperband_prune_through_the_driver_as_optuna_does(tmp_path, fake, name, warmup, epochs, lrs):
    spec = _spec(tmp_path, search={"optim.lr": {"grid": lrs}}, overrides=[f"optim.epochs={epochs}"],
                 pruner={"name": name, "metric": "val_acc", "warmup_epochs": warmup})
    trials = _run(spec, tmp_path / "out")
    # parallelism 1: the grid's points are queued in order and run one at a time, each judged with every earlier trial
    # finished; so replaying the same curves in the same order must give exactly the driver's decisions
    assert [t.params["optim.lr"] for t in trials] == lrs
    assert {t.number: (t.state.name, t.intermediate_values) for t in trials} == _replay_pruning(spec, lrs, epochs)
    pruned = [t for t in trials if t.state == TrialState.PRUNED]
    assert pruned and all(t.user_attrs["status"] == "pruned" for t in pruned)
    assert all(min(t.intermediate_values) == 1 and max(t.intermediate_values) >= warmup for t in pruned)
    if name == "halving":  # the first rung is at warmup_epochs: the worse points stop there
        assert all(max(t.intermediate_values) == warmup for t in pruned)
    best = max(trials, key=lambda t: val_acc(t.params["optim.lr"], 0, 1, 1))
    assert best.state == TrialState.COMPLETE and best.values == _final_values(spec, best)
    _assert_results_match(tmp_path / "out", trials)


class OverlapGate:
    """Holds the first fake job (once, up to ``timeout``) until both drivers have a trial running, so that the test
    cannot pass with one driver doing everything before the other starts; ``overlapped`` says whether they did."""

    def __init__(self, spec: SweepSpec, storage: str, timeout: float = 30.0):
        self.spec, self.storage, self.timeout = spec, storage, timeout
        self.waited = self.overlapped = False

    def __call__(self) -> None:
        if self.waited:
            return
        self.waited = True
        study = optuna.load_study(study_name=self.spec.name, storage=self.storage)
        deadline = time.monotonic() + self.timeout
        while not self.overlapped and time.monotonic() < deadline:
            running = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
            self.overlapped = len({t.user_attrs.get("driver") for t in running}) == 2
            time.sleep(0.02)


@pytest.fixture
def stand_in_pids():
    """Two live processes, whose pids name the two drivers of one process (see the test below)."""
    sleepers = [subprocess.Popen(["sleep", "300"]) for _ in range(2)]
    yield [sleeper.pid for sleeper in sleepers]
    for sleeper in sleepers:
        sleeper.kill()
        sleeper.wait()


def _one_debug_job_at_a_time(monkeypatch) -> None:
    """submitit's debug job swaps os.environ for its own copy while it runs and restores it after
    (``DebugJob.results``): two at once, in two threads, could restore each other's copies and leave one job's
    variables (SUBMITIT_DEBUG_JOB_ID) in os.environ for the rest of the session."""
    lock, results = threading.Lock(), DebugJob.results

    def serialized(job):
        with lock:
            return results(job)

    monkeypatch.setattr(DebugJob, "results", serialized)


def _run_together(sweeps: list[Sweep], timeout: float = 120.0) -> list[int | Exception | None]:
    """Each sweep's ``run()`` in its own daemon thread (a hung driver fails the test instead of hanging pytest)."""
    outcomes: list[int | Exception | None] = [None] * len(sweeps)

    def run(index: int) -> None:
        try:
            outcomes[index] = sweeps[index].run()
        except Exception as exc:  # reported by the assertion on the outcomes
            outcomes[index] = exc

    threads = [threading.Thread(target=run, args=(i,), daemon=True) for i in range(len(sweeps))]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + timeout
    for thread in threads:
        thread.join(max(0.0, deadline - time.monotonic()))
    return outcomes


def test_two_drivers_on_one_sqlite_file_run_every_point_once(tmp_path, fake, monkeypatch, stand_in_pids):
    """Two drivers in two threads of this process, sharing the study through sqlite:/// and its flock claim lock.

    Threads rather than processes: each driver process would pay ~10 s of imports. Two adjustments make one process
    host two drivers faithfully: a driver names itself host:pid, and takes a running trial of a driver with its own
    pid on this host for an orphan of an in-process job that died with it (``launcher._abandoned``), so each driver is
    named after a live stand-in process; and debug jobs take turns (``_one_debug_job_at_a_time``). The drivers still
    claim, submit and tell concurrently, and ``OverlapGate`` checks that both had a trial running at once.
    """
    lrs, seeds = [1e-5, 1e-4, 1e-3], [0, 1]
    storage = f"sqlite:///{tmp_path / 'study.db'}"
    spec = _spec(tmp_path, search={"optim.lr": {"grid": lrs}}, seeds=seeds, storage=storage)
    _one_debug_job_at_a_time(monkeypatch)
    fake.before = gate = OverlapGate(spec, storage)
    sweeps = [Sweep(spec, tmp_path, tmp_path / f"driver{i}", storage) for i in range(2)]
    for sweep, pid in zip(sweeps, stand_in_pids):
        sweep.driver = f"{socket.gethostname()}:{pid}"
    assert _run_together(sweeps) == [0, 0]
    assert gate.overlapped
    points = Counter({(lr, seed): 1 for lr in lrs for seed in seeds})
    assert Counter((lr, seed) for _, lr, seed in fake.runs) == points  # each point trained once, by either driver
    assert {run_dir.parents[1] for run_dir, _, _ in fake.runs} == {sweep.out for sweep in sweeps}  # both drivers ran
    trials = _trials(spec, storage)
    assert len(trials) == 6 and {t.state for t in trials} == {TrialState.COMPLETE}
    assert Counter((t.params["optim.lr"], t.user_attrs["seed"]) for t in trials) == points
    assert all(t.values == _final_values(spec, t) for t in trials)
    files = [ResultSink(sweep.out).read() for sweep in sweeps]
    assert all(len({line.trial for line in lines}) == len(lines) for lines in files)  # no trial twice in a file
    union = {line.trial: line for lines in files for line in lines}
    assert sorted(union) == [t.number for t in trials]
    assert Counter((line.params["optim.lr"], line.seed) for line in union.values()) == points
    assert {line.state for line in union.values()} == {"COMPLETE"}
