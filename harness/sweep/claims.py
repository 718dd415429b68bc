"""Claims: which point a driver runs next, chosen under a mutex in the study's own storage.

Drivers decide what runs next (settle orphans, queue missing points, ask for one) while holding
``ClaimLock``, so a point is queued at most once however many drivers run: on one machine, on several
login nodes, or restarted elsewhere. ``next_claim`` makes the choice; ``point_states`` reads what the
study holds about every point (done, active, failed how often). The lock lives where the study lives,
so every driver that can reach the study can take it:

- ``sqlite:///PATH``: an ``flock`` on ``PATH.claim`` (SQLite files are local to one machine);
- ``journal:PATH``: an ``O_EXCL`` lock file next to the journal (Optuna's own NFS-safe lock,
  ``JournalFileOpenLock``; a lock older than its grace period is taken to be a dead holder's);
- ``postgresql://...``: a session-level advisory lock (``pg_advisory_lock``), released by the
  server when a driver's connection drops.
"""

from __future__ import annotations

import hashlib
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, NamedTuple

import optuna
from optuna.trial import TrialState

from harness.core.errors import UsageError
from harness.core.storage import file_lock
from harness.sweep.plan import Plan, sampled
from harness.sweep.spec import SweepSpec, point_key
from harness.sweep.study import make_sampler, redacted

# Longer than any claim takes (a few storage round trips), so only a dead holder's lock is broken.
_JOURNAL_GRACE_S = 60
INTERRUPTED = "interrupted"  # a trial stopped by Ctrl-C, or before launch: retried without using up its retries


def _advisory_key(name: str) -> int:
    """A signed 64-bit key for ``pg_advisory_lock`` derived from the study name."""
    return int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "big", signed=True)


class ClaimLock:
    """``with lock.held(): ...`` runs the block while no other driver of the same study is in one."""

    def __init__(self, storage: str, study_name: str):
        self.storage, self.study_name = storage, study_name
        if storage.startswith("journal:"):
            self._kind = "journal"
        elif storage.startswith("sqlite:///"):
            self._kind = "sqlite"
        elif storage.split(":", 1)[0].split("+", 1)[0] == "postgresql":
            self._kind = "postgresql"
            import sqlalchemy
            from sqlalchemy.pool import NullPool

            self._engine = sqlalchemy.create_engine(storage, poolclass=NullPool)
        else:
            raise UsageError(f"storage {redacted(storage)!r}: sweeps support sqlite:///, journal:PATH and postgresql:// "
                             "(drivers need a lock in the storage to share a study)")

    @contextmanager
    def held(self) -> Iterator[None]:
        """Block until this driver holds the lock; release it on leaving the block, whatever happens."""
        if self._kind == "sqlite":
            with file_lock(Path(self.storage.removeprefix("sqlite:///") + ".claim")):
                yield
        elif self._kind == "journal":
            from optuna.storages.journal import JournalFileOpenLock

            journal = Path(self.storage.removeprefix("journal:"))
            journal.parent.mkdir(parents=True, exist_ok=True)  # the first driver takes the lock before creating the journal
            lock = JournalFileOpenLock(f"{journal}.claim", grace_period=_JOURNAL_GRACE_S)
            lock.acquire()
            try:
                yield
            finally:
                lock.release()
        else:
            from sqlalchemy import text

            key = {"key": _advisory_key(self.study_name)}
            with self._engine.connect() as connection:
                connection.execute(text("SELECT pg_advisory_lock(:key)"), key)
                connection.commit()
                try:
                    yield
                finally:
                    connection.execute(text("SELECT pg_advisory_unlock(:key)"), key)
                    connection.commit()


class Claim(NamedTuple):
    """A point a driver took: its trial (asked, not yet submitted) and the run dir to run it in."""

    trial: optuna.trial.Trial
    params: dict[str, Any]
    seed: int
    run_dir: Path


@dataclass
class PointState:
    """What the study holds about one (params, seed) point, over all its trials."""

    done: bool = False  # complete or pruned
    queued: bool = False  # a trial of it waits for a driver to claim it
    running: bool = False  # a trial of it was claimed and runs (or waits for resources) somewhere
    failures: int = 0  # failed attempts that count towards launcher.max_retries
    last: optuna.trial.FrozenTrial | None = None
    run_dir: str | None = None  # where earlier attempts ran: a retry resumes there

    @property
    def active(self) -> bool:
        """Queued or running: another trial of it must not be started."""
        return self.queued or self.running

    def settled(self, retries: int) -> bool:
        """Done, or failed more often than ``launcher.max_retries`` allows: nothing more to run."""
        return self.done or self.failures > retries


@dataclass(frozen=True)
class Progress:
    """What the progress line counts, over every driver sharing the study."""

    settled: int  # points with nothing more to run
    running: int  # points claimed by a driver and running somewhere
    queued: int  # points waiting to be claimed
    failed: int  # points that failed more often than launcher.max_retries allows
    retried: int  # points with a failed attempt that were (or are being) tried again

    def line(self) -> str:
        return f"running {self.running}, queued {self.queued}, failed {self.failed}, retried {self.retried}"


def progress(states: dict[str, PointState], retries: int) -> Progress:
    failed = sum(1 for s in states.values() if not s.done and s.failures > retries)
    return Progress(settled=sum(1 for s in states.values() if s.done or (s.settled(retries) and not s.active)),
                    running=sum(1 for s in states.values() if s.running),
                    queued=sum(1 for s in states.values() if s.queued and not s.running), failed=failed,
                    retried=sum(1 for s in states.values() if s.failures > 0) - failed)


def point_states(trials: list[optuna.trial.FrozenTrial]) -> dict[str, PointState]:
    states: dict[str, PointState] = {}
    for trial in sorted(trials, key=lambda t: t.number):
        key = trial.user_attrs.get("point")
        if key is None:
            continue
        state = states.setdefault(key, PointState())
        state.last = trial
        state.run_dir = trial.user_attrs.get("run_dir", state.run_dir)
        if trial.state in (TrialState.COMPLETE, TrialState.PRUNED):
            state.done = True
        elif trial.state == TrialState.WAITING:
            state.queued = True
        elif trial.state == TrialState.RUNNING:
            state.running = True
        elif not str(trial.user_attrs.get("error")).startswith(INTERRUPTED):
            state.failures += 1
    return states


def next_claim(study: optuna.Study, plan: Plan, driver: str) -> Claim | None:
    """Queue every missing point once and take one: the oldest waiting point, else the sampler's next draw; None when
    nothing is left to start. The caller holds the ``ClaimLock``."""
    spec, retries = plan.spec, plan.spec.launcher.max_retries
    trials = study.get_trials(deepcopy=False)
    states = point_states(trials)
    waiting = any(t.state == TrialState.WAITING for t in trials)
    for params, seed in plan.points(trials):
        state = states.get(point_key(params, seed), PointState())
        if not (state.active or state.settled(retries)):
            study.enqueue_trial(params, user_attrs={"point": point_key(params, seed), "seed": seed})
            waiting = True
    if not waiting and (plan.planned() is not None or len(sampled(trials)) >= spec.n_trials):
        return None
    if not waiting:
        study.sampler = make_sampler(spec, draw=len(trials))
    trial = study.ask()  # the oldest waiting point, else the sampler's next one
    trial.set_user_attr("driver", driver)
    params = _suggest(trial, spec)
    if "seed" in trial.user_attrs:
        seed = trial.user_attrs["seed"]
    else:  # a new sample: run it with the first seed now and queue the other seeds
        seed, *others = spec.seeds_for(params)
        trial.set_user_attr("sampled", True)  # counts towards n_trials even if it repeats a point
        trial.set_user_attr("seed", seed)
        trial.set_user_attr("point", point_key(params, seed))
        for other in others:
            study.enqueue_trial(params, user_attrs={"point": point_key(params, other), "seed": other})
    earlier = states.get(point_key(params, seed), PointState()).run_dir
    return Claim(trial, params, seed, Path(earlier) if earlier else plan.run_dir(params, seed))


def _suggest(trial: optuna.trial.Trial, spec: SweepSpec) -> dict[str, Any]:
    params = {}
    for key, space in spec.search.items():
        if space.grid is not None or space.choices is not None:
            params[key] = trial.suggest_categorical(key, space.grid if space.grid is not None else space.choices)
        elif space.integer:
            params[key] = trial.suggest_int(key, int(space.low), int(space.high), log=space.log)
        else:
            params[key] = trial.suggest_float(key, space.low, space.high, log=space.log)
    return params


def complete(trials: list[optuna.trial.FrozenTrial], plan: Plan) -> bool:
    """Every point is done or out of retries, nothing is queued or running anywhere, no sample is missing."""
    if plan.planned() is None and len(sampled(trials)) < plan.spec.n_trials:
        return False
    states = point_states(trials)
    retries = plan.spec.launcher.max_retries
    return all((s := states.get(point_key(p, seed))) is not None and not s.active and s.settled(retries)
               for p, seed in plan.points(trials))


def failed_points(trials: list[optuna.trial.FrozenTrial], retries: int) -> list[str]:
    """The points that failed for good: their last trial, failure count, error and log."""
    return [f"trial {s.last.number} ({key}): failed {s.failures} times, last: {s.last.user_attrs.get('error')} "
            f"[log: {s.last.user_attrs.get('log')}]"
            for key, s in point_states(trials).items() if s.settled(retries) and not s.done and s.last is not None]
