"""The sweep driver: spec -> Optuna study -> one submitit job per trial -> results.jsonl (see harness.commands.sweep)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import TrialState
from tqdm.auto import tqdm

from harness.core.config import RunConfig
from harness.core.errors import ConfigError
from harness.sweep.claims import ClaimLock
from harness.sweep.launch import (
    TrialJob,
    make_executor,
    threads_per_job,
)
from harness.sweep.spec import (
    SweepSpec,
    grid_points,
    point_key,
    run_slug,
    trial_config,
)
from harness.sweep.study import (
    make_sampler,
    objective_values,
    open_study,
    shown,
)

RESULTS = "results.jsonl"
_POLL_SECONDS = 0.5
_QUEUE_CHECK_SECONDS = 10.0
_CLAIM_SECONDS = 2.0  # how often an idle driver looks for work again (e.g. a retry another driver's trial left)
_INTERRUPTED = "interrupted"  # a trial stopped by Ctrl-C: retried without using up its retries


@dataclass
class Running:
    trial: optuna.trial.Trial
    point: tuple[dict[str, Any], int]
    job: Any
    next_queue_check: float = 0.0


@dataclass
class PointState:
    """What the study holds about one (params, seed) point, over all its trials."""

    done: bool = False  # complete or pruned
    active: bool = False  # waiting, or running somewhere
    failures: int = 0  # failed attempts that count towards launcher.max_retries
    last: optuna.trial.FrozenTrial | None = None
    run_dir: str | None = None  # where earlier attempts ran: a retry resumes there

    def settled(self, retries: int) -> bool:
        """Done, or failed more often than ``launcher.max_retries`` allows: nothing more to run."""
        return self.done or self.failures > retries


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
        elif trial.state in (TrialState.WAITING, TrialState.RUNNING):
            state.active = True
        elif not str(trial.user_attrs.get("error")).startswith(_INTERRUPTED):
            state.failures += 1
    return states


def _sampled(trials: list[optuna.trial.FrozenTrial]) -> list[optuna.trial.FrozenTrial]:
    """The trials a sampler drew (each then runs once per seed), oldest first."""
    return sorted((t for t in trials if t.user_attrs.get("sampled") and t.params), key=lambda t: t.number)


class Sweep:
    def __init__(self, spec: SweepSpec, folder: Path, out: Path, storage: str):
        self.spec, self.folder, self.out, self.storage = spec, folder, out, storage
        self.results_path = out / RESULTS
        self.lock = ClaimLock(storage, spec.name)
        self.driver = f"{socket.gethostname()}:{os.getpid()}"
        self.mine: set[int] = set()  # trials this driver launched and has not told yet

    # -- plan -----------------------------------------------------------------------------
    def planned(self) -> list[tuple[dict[str, Any], int]] | None:
        """Grid sweeps: every point; sampler sweeps: None (points come from the sampler)."""
        return grid_points(self.spec) if self.spec.sampler.name == "grid" else None

    def total(self) -> int:
        planned = self.planned()
        return len(planned) if planned is not None else self.spec.n_trials * len(self.spec.seeds)  # variant_seeds: grid only

    def run_dir(self, params: dict[str, Any], seed: int) -> Path:
        return self.out / "runs" / run_slug(params, seed)

    def describe(self) -> str:
        spec, planned = self.spec, self.planned()
        lines = [f"sweep {spec.name}: {self.total()} trials, launcher {spec.launcher.kind} "
                 f"(parallelism {spec.launcher.parallelism}{', profile ' + spec.launcher.profile if spec.launcher.profile else ''}), "
                 f"storage {shown(self.storage)}, output {self.out}"]
        if planned is None:
            lines.append(f"sampler {spec.sampler.name} (seed {spec.sampler.seed}): {spec.n_trials} points x seeds {spec.seeds}")
            lines += [f"  {key}: {space.model_dump(exclude_none=True)}" for key, space in spec.search.items()]
        else:
            lines += [f"  {point_key(params, seed)}" for params, seed in planned]
        return "\n".join(lines)

    # -- the ledger: claims, orphans, results.jsonl ----------------------------------------------------
    def points(self, trials: list[optuna.trial.FrozenTrial]) -> list[tuple[dict[str, Any], int]]:
        """Every point the sweep must run so far: the grid, or each sampled parameter set once per seed."""
        planned = self.planned()
        if planned is not None:
            return planned
        sampled: dict[str, dict[str, Any]] = {}
        for trial in _sampled(trials):
            sampled.setdefault(json.dumps(trial.params, sort_keys=True), trial.params)
        return [(params, seed) for params in sampled.values() for seed in self.spec.seeds_for(params)]

    def claim(self, study: optuna.Study) -> tuple[optuna.trial.Trial, dict[str, Any], int, Path] | None:
        """Under the storage's lock: settle orphans, queue every missing point once, and take one."""
        retries = self.spec.launcher.max_retries
        with self.lock.held():
            self._settle(study)
            trials = study.get_trials(deepcopy=False)
            states = point_states(trials)
            waiting = any(t.state == TrialState.WAITING for t in trials)
            for params, seed in self.points(trials):
                state = states.get(point_key(params, seed), PointState())
                if not (state.active or state.settled(retries)):
                    study.enqueue_trial(params, user_attrs={"point": point_key(params, seed), "seed": seed})
                    waiting = True
            if not waiting and (self.planned() is not None or len(_sampled(trials)) >= self.spec.n_trials):
                return None
            if not waiting:
                study.sampler = make_sampler(self.spec, draw=len(trials))
            trial = study.ask()  # the oldest waiting point, else the sampler's next one
            trial.set_user_attr("driver", self.driver)
            self.mine.add(trial.number)
            params = self._suggest(trial)
            if "seed" in trial.user_attrs:
                seed = trial.user_attrs["seed"]
            else:  # a new sample: run it with the first seed now and queue the other seeds
                seed, *others = self.spec.seeds_for(params)
                trial.set_user_attr("sampled", True)  # counts towards n_trials even if it repeats a point
                trial.set_user_attr("seed", seed)
                trial.set_user_attr("point", point_key(params, seed))
                for other in others:
                    study.enqueue_trial(params, user_attrs={"point": point_key(params, other), "seed": other})
        earlier = states.get(point_key(params, seed), PointState()).run_dir
        return trial, params, seed, Path(earlier) if earlier else self.run_dir(params, seed)

    def _settle(self, study: optuna.Study) -> None:
        """Finish the running trials that nobody will tell: their driver died and so did their job (or it ended)."""
        for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            if trial.number in self.mine or not self._abandoned(trial):
                continue
            if "run_dir" not in trial.user_attrs:  # the driver died between asking and submitting: nothing ran
                result = {"status": "failed", "error": f"{_INTERRUPTED} before launch"}
            else:
                record = _read_record(Path(trial.user_attrs["run_dir"]) / "record.json")
                result = record or {"status": "failed", "error": "its driver and job died"}
            self._tell(study, trial.number, result)
            self._append(study._storage.get_trial(trial._trial_id))

    def _abandoned(self, trial: optuna.trial.FrozenTrial) -> bool:
        """True when no live driver owns the trial and its job is over; unknowable cases count as alive."""
        attrs = trial.user_attrs
        host, _, pid = attrs.get("driver", "").rpartition(":")
        here = host == socket.gethostname()
        if "driver" not in attrs:
            driver_alive: bool | None = False
        elif here:
            driver_alive = int(pid) != os.getpid() and _alive(int(pid))
        else:
            driver_alive = None  # a driver on another machine: only its job's state can tell
        if driver_alive:
            return False
        job, launcher = attrs.get("job_id"), attrs.get("launcher")
        if job is not None and launcher == "slurm":
            return _slurm_job_gone(job)
        if job is not None and launcher == "local":
            return here and not _alive(int(job))
        return driver_alive is False  # no job yet, or an in-process (debug) job that died with its driver

    def _sync_results(self, study: optuna.Study) -> None:
        """Append the finished trials results.jsonl lacks (a driver killed between telling and writing)."""
        written = self._written_trials()
        for trial in study.get_trials(deepcopy=False):
            if trial.state.is_finished() and trial.number not in written and "point" in trial.user_attrs:
                self._append(trial)

    def _written_trials(self) -> set[int]:
        if not self.results_path.exists():
            return set()
        numbers = set()
        for line in self.results_path.read_text().splitlines():
            try:
                numbers.add(json.loads(line)["trial"])
            except (json.JSONDecodeError, KeyError):
                continue  # a line cut short by a crash; the trial is rewritten below
        return numbers

    # -- one trial ----------------------------------------------------------------------------
    def _launch(self, study: optuna.Study, executor: Any, claims: list[tuple]) -> list[Running]:
        """Submit claimed trials; on SLURM several at once go out as one job array (one sbatch for the wave)."""
        submissions = []
        for trial, params, seed, run_dir in claims:
            config = trial_config(self.spec, params, seed, run_dir, self.folder)
            trial.set_user_attr("run_dir", str(run_dir))
            study_info = {"name": self.spec.name, "storage": self.storage, "trial_number": trial.number,
                          "sweep": self.spec.name, "wandb_dir": str(self.out),
                          "prune_metric": self.spec.pruner.metric if self.spec.pruner.name != "none" else None,
                          "pruner": self.spec.pruner.name, "prune_warmup": self.spec.pruner.warmup_epochs}
            submissions.append((config.model_dump(mode="json"), study_info))
        threads = threads_per_job(self.spec.launcher.parallelism)
        if self.spec.launcher.kind == "slurm" and len(submissions) > 1:
            with executor.batch():
                jobs = [executor.submit(TrialJob(), config, info, threads) for config, info in submissions]
        else:
            jobs = [executor.submit(TrialJob(), config, info, threads) for config, info in submissions]
        for (trial, *_), job in zip(claims, jobs):
            trial.set_user_attr("launcher", self.spec.launcher.kind)
            trial.set_user_attr("job_id", str(job.job_id))
        return [Running(trial, (params, seed), job) for (trial, params, seed, _), job in zip(claims, jobs)]

    def _suggest(self, trial: optuna.trial.Trial) -> dict[str, Any]:
        params = {}
        for key, space in self.spec.search.items():
            if space.grid is not None or space.choices is not None:
                params[key] = trial.suggest_categorical(key, space.grid if space.grid is not None else space.choices)
            elif space.integer:
                params[key] = trial.suggest_int(key, int(space.low), int(space.high), log=space.log)
            else:
                params[key] = trial.suggest_float(key, space.low, space.high, log=space.log)
        return params

    def _tell(self, study: optuna.Study, number: int, result: dict[str, Any]) -> None:
        trial_id = study._storage.get_trial_id_from_study_id_trial_number(study._study_id, number)
        attrs = {"status": result["status"], "record": result.get("record") or result.get("paths", {}).get("record"),
                 "error": result.get("error"), "log": result.get("log"), **{f"summary.{k}": v for k, v in result.get("summary", {}).items()}}
        for key, value in attrs.items():
            study._storage.set_trial_user_attr(trial_id, key, value)
        if result["status"] == "ok":
            try:
                study.tell(number, objective_values(self.spec, result["summary"]), skip_if_finished=True)
                return
            except KeyError as exc:
                study._storage.set_trial_user_attr(trial_id, "error", str(exc))
        state = TrialState.PRUNED if result["status"] == "pruned" else TrialState.FAIL
        study.tell(number, state=state, skip_if_finished=True)

    def _append(self, trial: optuna.trial.FrozenTrial) -> None:
        attrs = trial.user_attrs
        line = {"trial": trial.number, "state": trial.state.name, "point": attrs.get("point"),
                "params": trial.params, "seed": attrs.get("seed"),
                "values": trial.values, "status": attrs.get("status"), "error": attrs.get("error"),
                "summary": {k.removeprefix("summary."): v for k, v in attrs.items() if k.startswith("summary.")},
                "record": os.path.relpath(attrs["record"], self.out) if attrs.get("record") else None}
        with open(self.results_path, "a") as handle:
            handle.write(json.dumps(line) + "\n")

    # -- the loop -----------------------------------------------------------------------------
    def _known_configs(self) -> list[RunConfig]:
        """The run configs known before any trial runs: every grid point's, or the base config of a sampler sweep."""
        planned = self.planned() or [({}, self.spec.seeds[0])]
        return [trial_config(self.spec, params, seed, self.out, self.folder) for params, seed in planned]

    def check_processes(self, processes: int) -> None:
        """Trials over several processes train contrastive methods only: refuse the others before any job starts."""
        from harness.core.methods import METHODS

        if processes == 1:
            return
        methods = {config.method for config in self._known_configs()}
        single = sorted(m for m in methods if not METHODS[m].contrastive_only)
        if single:
            raise ConfigError(f"launcher.profile: {self.spec.launcher.profile} runs each trial over {processes} processes, "
                              f"which only contrastive methods support; run {', '.join(single)} in a separate sweep "
                              "with a 1-task profile (e.g. gpu-1)")

    def prepare(self) -> None:
        """Build what every trial shares (benchmark, embedded pretrained weights) once, here, with visible progress,
        rather than in the first jobs, where it would run with a fraction of the cores and its progress in a log;
        a benchmark read from disk is listed, so a wrong data root fails here, before any job starts."""
        from harness.data import load_benchmark
        from harness.models.clip import EMBEDDED_PRETRAINED
        from harness.trial.pretrain import ensure_pretrained

        configs = self._known_configs()
        for data in {c.data.model_dump_json(): c.data for c in configs}.values():  # also checks data roots early
            load_benchmark(data.benchmark, data=data)
        for name in sorted({c.model.name for c in configs if c.model.pretrained == EMBEDDED_PRETRAINED}):
            ensure_pretrained(name)

    def open_study(self) -> optuna.Study:
        """The shared study, created under the claim lock: new drivers would otherwise race on its schema and digest."""
        with self.lock.held():
            return open_study(self.spec, self.storage)

    def run(self) -> int:
        self.out.mkdir(parents=True, exist_ok=True)
        self.prepare()
        study = self.open_study()
        with self.lock.held():
            self._settle(study)
            self._sync_results(study)
        executor = make_executor(self.spec.launcher.kind, self.out / "jobs", self.spec.launcher.parallelism,
                                 self.spec.launcher.profile)
        running: list[Running] = []
        bar = tqdm(total=self.total(), desc=self.spec.name)
        next_claim = 0.0
        try:
            while True:
                if len(running) < self.spec.launcher.parallelism and time.monotonic() >= next_claim:
                    claims = []
                    while len(running) + len(claims) < self.spec.launcher.parallelism and (claim := self.claim(study)):
                        claims.append(claim)
                    running += self._launch(study, executor, claims) if claims else []
                    next_claim = time.monotonic() + _CLAIM_SECONDS  # the storage is read this often at most
                    self._show(bar, study)
                    if not running and self._complete(study):
                        break
                time.sleep(_POLL_SECONDS)
                for item in [r for r in running if self._over(r)]:
                    running.remove(item)
                    self._finish(study, item)
                    next_claim = 0.0
        except KeyboardInterrupt:
            for item in running:
                item.job.cancel(check=False)
                self._tell(study, item.trial.number, {"status": "failed", "error": f"{_INTERRUPTED} (Ctrl-C)"})
            bar.close()
            print("interrupted: run the same command again to continue")
            return 130
        bar.close()
        with self.lock.held():
            self._sync_results(study)
        failures = self.final_failures(study)
        if failures:
            print("failed trials: " + "; ".join(failures))
            return 1
        return 0

    def _over(self, item: Running) -> bool:
        """submitit learns that a SLURM job ended from its result file or from sacct; without accounting, and for a
        job killed before writing a result, only squeue can tell, so ask it now and then."""
        if item.job.done():
            return True
        if self.spec.launcher.kind != "slurm" or time.monotonic() < item.next_queue_check:
            return False
        item.next_queue_check = time.monotonic() + _QUEUE_CHECK_SECONDS
        return _slurm_job_gone(str(item.job.job_id))

    def _complete(self, study: optuna.Study) -> bool:
        """Every point is done or out of retries, nothing is queued or running anywhere, no sample is missing."""
        trials = study.get_trials(deepcopy=False)
        if self.planned() is None and len(_sampled(trials)) < self.spec.n_trials:
            return False
        states = point_states(trials)
        retries = self.spec.launcher.max_retries
        return all((s := states.get(point_key(p, seed))) is not None and not s.active and s.settled(retries)
                   for p, seed in self.points(trials))

    def final_failures(self, study: optuna.Study) -> list[str]:
        retries = self.spec.launcher.max_retries
        return [f"trial {s.last.number} ({key}): failed {s.failures} times, last: {s.last.user_attrs.get('error')} "
                f"[log: {s.last.user_attrs.get('log')}]"
                for key, s in point_states(study.get_trials(deepcopy=False)).items()
                if s.settled(retries) and not s.done and s.last is not None]

    def _finish(self, study: optuna.Study, item: Running) -> None:
        try:
            result = item.job.results()[0]  # a multi-task job returns one result per task; rank 0 holds the record
        except Exception as exc:  # the job itself died (killed, out of memory, import error)
            result = {"status": "failed", "error": f"job {item.job.job_id} died: {type(exc).__name__}: {str(exc)[:300]}",
                      "log": str(item.job.paths.stderr)}
        self._tell(study, item.trial.number, result)
        self.mine.discard(item.trial.number)
        self._append(study._storage.get_trial(item.trial._trial_id))

    def _show(self, bar: tqdm, study: optuna.Study) -> None:
        """Points settled anywhere (this driver or another one sharing the study) and the running best."""
        retries = self.spec.launcher.max_retries
        states = point_states(study.get_trials(deepcopy=False))
        settled = sum(1 for s in states.values() if s.done or (s.settled(retries) and not s.active))
        if settled != bar.n:
            bar.n = min(settled, bar.total)
            bar.set_postfix_str(self._best(study))

    def _best(self, study: optuna.Study) -> str:
        complete = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))]
        if not complete or len(self.spec.objectives) != 1:
            return f"{len(complete)} complete"
        objective = self.spec.objectives[0]
        pick = max if objective.direction == "maximize" else min
        return f"best {objective.key} {pick(t.values[0] for t in complete):.4f}"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, PermissionError):
        return False
    return True


def _slurm_job_gone(job_id: str) -> bool:
    """SLURM forgets a job some minutes after it ends (``squeue`` then says "Invalid job id"); until then it lists it."""
    try:
        listed = subprocess.run(["squeue", "-h", "-j", job_id, "-o", "%T"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return False  # no way to tell: leave the trial to a driver that can
    if listed.returncode == 0:
        return listed.stdout.strip() in ("", "COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL",
                                         "OUT_OF_MEMORY", "BOOT_FAIL", "DEADLINE", "PREEMPTED")
    return "Invalid job id" in listed.stderr


def _read_record(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None
