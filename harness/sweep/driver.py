"""The sweep driver: plan -> claims -> launcher -> study and results.jsonl, in one loop (see harness.commands.sweep)."""

from __future__ import annotations

import logging
import os
import socket
import time
from pathlib import Path

import optuna
from optuna.trial import TrialState
from tqdm.auto import tqdm

from harness.core.config import is_benchmark_file
from harness.core.record import TrialOutcome
from harness.sweep.claims import (
    INTERRUPTED,
    Claim,
    ClaimLock,
    complete,
    failed_points,
    next_claim,
    point_states,
    progress,
)
from harness.sweep.jobs import load_profile
from harness.sweep.launcher import Launcher, Running
from harness.sweep.plan import Plan
from harness.sweep.preview import describe
from harness.sweep.sink import ResultSink, result_line
from harness.sweep.spec import SweepSpec
from harness.sweep.study import TrialStore, open_storage, open_study, tell_result

log = logging.getLogger(__name__)

_POLL_SECONDS = 0.1  # how often running jobs are looked at (a warm worker's reply, a job's result file)
_CLAIM_SECONDS = 2.0  # how often an idle driver looks for work again (e.g. a retry another driver's trial left)


class Sweep:
    """One driver of a sweep; several drivers (here or on other machines) may share its study."""

    def __init__(self, spec: SweepSpec, folder: Path, out: Path, storage: str):
        self.spec, self.out, self.storage = spec, out, storage
        self.plan = Plan(spec, folder, out)
        self.lock = ClaimLock(storage, spec.name)
        self.launcher = Launcher(self.plan, storage)
        self.sink = ResultSink(out)
        self.driver = f"{socket.gethostname()}:{os.getpid()}"
        self.launched_here: set[int] = set()  # trials this driver launched and has not told yet
        self.store: TrialStore | None = None  # the study's trials by number, once open_study has run

    def total(self) -> int:
        return self.plan.total()

    def describe(self) -> str:
        """What the dry run prints: the base configuration, each variant's changes, resources and points."""
        return describe(self.plan, self.storage)

    def check(self) -> None:
        """Check every known trial's model, weights, data and batch before any work (``harness.trial.preflight``)."""
        from harness.trial.preflight import preflight  # open_clip: only a driver that runs or checks trials needs it

        launcher = self.plan.spec.launcher
        processes = load_profile(launcher.profile or "").tasks_per_node if launcher.kind == "slurm" else 1
        preflight(self.plan.known_configs(), processes)

    def prepare(self) -> None:
        """After ``check``: build what every trial shares once, here, with visible progress (``prepare_shared``)."""
        from harness.trial.preflight import prepare_shared

        prepare_shared(self.plan.known_configs())

    def data_digests(self) -> dict[str, str]:
        """``{benchmark file: content digest}`` of the files the known trials read (none for registered benchmarks)."""
        from harness.data.benchmark_file import benchmark_digest

        sections = {c.data.model_dump_json(): c.data for c in self.plan.known_configs()}.values()
        return {data.benchmark: benchmark_digest(data.benchmark, data) for data in sections
                if is_benchmark_file(data.benchmark)}

    def open_study(self) -> optuna.Study:
        """The shared study, created under the claim lock: new drivers would otherwise race on its schema and digest."""
        digests = self.data_digests()
        with self.lock.held():
            backend = open_storage(self.storage)
            study = open_study(self.spec, self.storage, backend, digests)
        self.store = TrialStore(backend, self.spec.name)
        return study

    def claim(self, study: optuna.Study) -> Claim | None:
        """Under the storage's lock: settle orphans, queue every missing point once, and take one."""
        with self.lock.held():
            self._settle(study)
            claim = next_claim(study, self.plan, self.driver)
            if claim is not None:
                self.launched_here.add(claim.trial.number)
        return claim

    def _settle(self, study: optuna.Study) -> None:
        """Finish the running trials that nobody will tell: their driver died and so did their job (or it ended)."""
        for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            if trial.number not in self.launched_here and (result := self.launcher.adopt(trial)) is not None:
                self._finish(study, trial.number, result)

    def _finish(self, study: optuna.Study, number: int, result: TrialOutcome) -> None:
        """Tell the study a trial's result and append its line."""
        self._tell(study, number, result)
        self.launched_here.discard(number)
        self.sink.append(result_line(self.store.get(number), self.out))

    def _tell(self, study: optuna.Study, number: int, result: TrialOutcome) -> None:
        tell_result(study, self.store, self.spec, number, result)

    def record_missing(self, study: optuna.Study) -> None:
        """Append the finished trials results.jsonl lacks (a driver killed between telling and writing, a torn line)."""
        written = self.sink.trials()
        for trial in study.get_trials(deepcopy=False):
            if trial.state.is_finished() and trial.number not in written and "point" in trial.user_attrs:
                self.sink.append(result_line(trial, self.out))

    def run(self) -> int:
        """Run the sweep to its end: 0, 1 when a point failed for good, 130 on Ctrl-C."""
        self.launcher.start_workers()  # warm workers import while this driver checks and prepares
        try:
            self.check()  # bad input stops here: no trial started, nothing written
            self.out.mkdir(parents=True, exist_ok=True)
            self.launcher.start()
            self.prepare()
            study = self.open_study()
            with self.lock.held():
                self._settle(study)
                self.record_missing(study)
            status = self._loop(study)
        finally:
            self.launcher.close()
        if status == 130:
            return status
        with self.lock.held():
            self.record_missing(study)
        failures = failed_points(study.get_trials(deepcopy=False), self.spec.launcher.max_retries)
        if failures:
            retries = self.spec.launcher.max_retries
            log.error("failed trials: %s", "; ".join(failures))
            log.error("each was tried %d times (launcher.max_retries=%d); once the cause is fixed, the same command with "
                      "--set launcher.max_retries=%d runs them again, from their checkpoints", retries + 1, retries,
                      retries + 1)
            return 1
        return 0

    def _loop(self, study: optuna.Study) -> int:
        """Keep ``parallelism`` trials in flight until every point is settled: 0, or 130 on Ctrl-C."""
        parallelism = self.spec.launcher.parallelism
        # what runs next needs no result (a grid's next point, no pruner comparing with it): fill free slots, then tell
        fill_first = self.plan.planned() is not None and self.spec.pruner.name == "none"
        running: list[Running] = []
        bar = tqdm(total=self.plan.total(), desc=self.spec.name)
        next_claim_at = 0.0
        try:
            while True:
                if len(running) < parallelism and time.monotonic() >= next_claim_at:
                    running += self._fill(study, len(running))
                    next_claim_at = time.monotonic() + _CLAIM_SECONDS  # the storage is read this often at most
                    self._show(bar, study)
                    if not running and complete(study.get_trials(deepcopy=False), self.plan):
                        break
                time.sleep(_POLL_SECONDS)
                ended = [(item, self.launcher.result(item)) for item in running if self.launcher.job_ended(item)]
                if ended:
                    done = [item for item, _ in ended]
                    running = [item for item in running if item not in done]
                    if fill_first:  # the freed slots work while this driver tells
                        running += self._fill(study, len(running))
                    for item, result in ended:
                        self._finish(study, item.number, result)
                    self._show(bar, study)
                    next_claim_at = 0.0  # a sampler's next draw, and a failed trial's retry, wait for the tells
        except KeyboardInterrupt:
            for item in running:
                self.launcher.cancel(item)
                self._tell(study, item.number, TrialOutcome.failed(f"{INTERRUPTED} (Ctrl-C)"))
            bar.close()
            log.warning("interrupted: run the same command again to continue")
            return 130
        bar.close()
        return 0

    def _fill(self, study: optuna.Study, running: int) -> list[Running]:
        """Claim and submit trials for the free slots of ``running`` busy ones."""
        claims = []
        while running + len(claims) < self.spec.launcher.parallelism and (claim := self.claim(study)):
            claims.append(claim)
        return self.launcher.submit(claims) if claims else []

    def _show(self, bar: tqdm, study: optuna.Study) -> None:
        """Points settled anywhere (this driver or another one sharing the study), running, failed and retried ones,
        and the best objective so far."""
        counts = progress(point_states(study.get_trials(deepcopy=False)), self.spec.launcher.max_retries)
        bar.n = min(counts.settled, bar.total)
        bar.set_postfix_str(f"{counts.line()}, {self._best(study)}")

    def _best(self, study: optuna.Study) -> str:
        complete_trials = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        if not complete_trials or len(self.spec.objectives) != 1:
            return f"{len(complete_trials)} complete"
        objective = self.spec.objectives[0]
        pick = max if objective.direction == "maximize" else min
        return f"best {objective.key} {pick(t.values[0] for t in complete_trials):.4f}"
