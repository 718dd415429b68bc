"""Run a sweep: spec -> Optuna study -> one submitit job per trial -> results.jsonl.

    python -m harness.sweep sweeps/ablation.yaml [--dry-run] [--out DIR] [--launcher local|debug|slurm]
                            [--profile NAME] [--storage URL] [--parallelism N] [--set key=value ...]

Keeps up to ``parallelism`` jobs in flight, tells Optuna each result, appends one line per
finished trial to OUT/results.jsonl, and prints a summary table. Running the same command again
does only what is missing: finished trials are not repeated; trials whose job died are retried
(at most ``launcher.max_retries`` times) and resume from their checkpoints. Exit code 1 when a
trial failed for good, 2 on bad input (nothing is launched and nothing existing is changed).
"""

from __future__ import annotations

import argparse
import fcntl
import hashlib
import json
import os
import statistics
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import optuna
from optuna.trial import TrialState
from tqdm.auto import tqdm

from harness.cli import run_cli
from harness.errors import ConfigError, UsageError
from harness.launch import TrialJob, load_profile, make_executor, threads_per_job
from harness.spec import SweepSpec, grid_points, load_spec, point_key, trial_config
from harness.study import default_storage, objective_values, open_study

RESULTS = "results.jsonl"
_POLL_SECONDS = 0.5
_INTERRUPTED = "interrupted"  # a trial stopped by Ctrl-C: retried without using up its retries


@dataclass
class Running:
    trial: optuna.trial.Trial
    point: tuple[dict[str, Any], int]
    job: Any


@dataclass
class Ledger:
    """What the study already holds, by point: finished, failed attempts, orphaned running trials."""

    done: set[str] = field(default_factory=set)
    attempts: dict[str, int] = field(default_factory=dict)
    final_failures: list[str] = field(default_factory=list)


def _slug(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()[:12]


@contextmanager
def driver_lock(out: Path) -> Iterator[None]:
    """One driver per output dir at a time: a second one is refused instead of duplicating trials."""
    out.mkdir(parents=True, exist_ok=True)
    with open(out / ".driver.lock", "a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise UsageError(f"another driver is running the sweep in {out}") from None
        yield


class Sweep:
    def __init__(self, spec: SweepSpec, folder: Path, out: Path, storage: str):
        self.spec, self.folder, self.out, self.storage = spec, folder, out, storage
        self.results_path = out / RESULTS

    # -- plan -----------------------------------------------------------------------------
    def planned(self) -> list[tuple[dict[str, Any], int]] | None:
        """Grid sweeps: every point; sampler sweeps: None (points come from the sampler)."""
        return grid_points(self.spec) if self.spec.sampler.name == "grid" else None

    def total(self) -> int:
        planned = self.planned()
        return len(planned) if planned is not None else self.spec.n_trials * len(self.spec.seeds)

    def run_dir(self, params: dict[str, Any], seed: int) -> Path:
        return self.out / "runs" / _slug(point_key(params, seed))

    def describe(self) -> str:
        spec, planned = self.spec, self.planned()
        lines = [f"sweep {spec.name}: {self.total()} trials, launcher {spec.launcher.kind} "
                 f"(parallelism {spec.launcher.parallelism}{', profile ' + spec.launcher.profile if spec.launcher.profile else ''}), "
                 f"storage {self.storage}, output {self.out}"]
        if planned is None:
            lines.append(f"sampler {spec.sampler.name} (seed {spec.sampler.seed}): {spec.n_trials} points x seeds {spec.seeds}")
            lines += [f"  {key}: {space.model_dump(exclude_none=True)}" for key, space in spec.search.items()]
        else:
            lines += [f"  {point_key(params, seed)}" for params, seed in planned]
        return "\n".join(lines)

    # -- ledger -----------------------------------------------------------------------------
    def reconcile(self, study: optuna.Study) -> Ledger:
        """Read the study; adopt orphans that finished, fail those that died; make results.jsonl complete."""
        ledger = Ledger()
        written = self._written_trials()
        if self.planned() is not None:
            self._drop_stale_waiting(study)
        for trial in study.get_trials(deepcopy=False):
            key = trial.user_attrs.get("point")
            if key is None:
                continue
            if trial.state == TrialState.RUNNING:
                trial = self._settle_orphan(study, trial)
            if trial.state in (TrialState.COMPLETE, TrialState.PRUNED):
                ledger.done.add(key)
            elif trial.state == TrialState.FAIL and not str(trial.user_attrs.get("error")).startswith(_INTERRUPTED):
                ledger.attempts[key] = ledger.attempts.get(key, 0) + 1
            if trial.state.is_finished() and trial.number not in written:
                self._append(trial)
        for key, attempts in ledger.attempts.items():
            if attempts > self.spec.launcher.max_retries and key not in ledger.done:
                ledger.final_failures.append(f"{key}: failed {attempts} times in earlier runs (see results.jsonl)")
        return ledger

    def _settle_orphan(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> optuna.trial.FrozenTrial:
        """A RUNNING trial left by a driver that died: wait for its local job, then adopt its record or fail it."""
        if "run_dir" not in trial.user_attrs:  # the driver died between asking and submitting: nothing ran
            self._tell(study, trial.number, {"status": "failed", "error": f"{_INTERRUPTED} before launch"})
            return study._storage.get_trial(trial._trial_id)
        pid = trial.user_attrs.get("pid")
        while pid and _alive(pid):
            time.sleep(_POLL_SECONDS)
        record = _read_record(Path(trial.user_attrs["run_dir"]) / "record.json")
        self._tell(study, trial.number, record or {"status": "failed", "error": "its driver or job died"})
        return study._storage.get_trial(trial._trial_id)

    def _drop_stale_waiting(self, study: optuna.Study) -> None:
        """Grid points enqueued by a driver that died before asking for them: close them, so that asks stay in step."""
        waiting = study.get_trials(deepcopy=False, states=(TrialState.WAITING,))
        for _ in waiting:
            trial = study.ask()  # pops the oldest waiting trial
            trial.set_user_attr("error", f"{_INTERRUPTED} before launch")
            study.tell(trial, state=TrialState.FAIL)

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
    def _launch(self, study: optuna.Study, executor: Any, params: dict[str, Any] | None, seed: int) -> Running:
        if params is not None:
            study.enqueue_trial(params, user_attrs={"point": point_key(params, seed), "seed": seed})
        trial = study.ask()  # an enqueued point if any is waiting, else the sampler's next point
        params = self._suggest(trial)
        if "seed" in trial.user_attrs:
            seed = trial.user_attrs["seed"]
        else:  # a sampled point: run it with the first seed now and queue the other seeds
            seed = self.spec.seeds[0]
            trial.set_user_attr("seed", seed)
            trial.set_user_attr("point", point_key(params, seed))
            for other in self.spec.seeds[1:]:
                study.enqueue_trial(params, user_attrs={"point": point_key(params, other), "seed": other})
        run_dir = self.run_dir(params, seed)
        config = trial_config(self.spec, params, seed, run_dir, self.folder)
        trial.set_user_attr("run_dir", str(run_dir))
        study_info = {"name": self.spec.name, "storage": self.storage, "trial_number": trial.number,
                      "sweep": self.spec.name, "wandb_dir": str(self.out),
                      "prune_metric": self.spec.pruner.metric if self.spec.pruner.name != "none" else None,
                      "pruner": self.spec.pruner.name, "prune_warmup": self.spec.pruner.warmup_epochs}
        job = executor.submit(TrialJob(), config.model_dump(mode="json"), study_info,
                              threads_per_job(self.spec.launcher.parallelism))
        if self.spec.launcher.kind == "local":
            trial.set_user_attr("pid", int(job.job_id))
        trial.set_user_attr("job_id", str(job.job_id))
        return Running(trial, (params, seed), job)

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
                 "error": result.get("error"), **{f"summary.{k}": v for k, v in result.get("summary", {}).items()}}
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
    def prepare(self) -> None:
        """Build what every trial shares (benchmark, embedded pretrained weights) once, here, with visible progress,
        rather than in the first jobs, where it would run with a fraction of the cores and its progress in a log."""
        from harness.data import load_benchmark
        from harness.models import EMBEDDED_PRETRAINED
        from harness.pretrain import ensure_pretrained

        planned = self.planned() or [({}, self.spec.seeds[0])]
        configs = [trial_config(self.spec, params, seed, self.out, self.folder) for params, seed in planned]
        for benchmark in sorted({c.data.benchmark for c in configs}):
            load_benchmark(benchmark)
        for name in sorted({c.model.name for c in configs if c.model.pretrained == EMBEDDED_PRETRAINED}):
            ensure_pretrained(name)

    def run(self) -> int:
        with driver_lock(self.out):
            study = open_study(self.spec, self.storage)
            self.prepare()
            ledger = self.reconcile(study)
            queue = self._queue(study, ledger)
            executor = make_executor(self.spec.launcher.kind, self.out / "jobs", self.spec.launcher.parallelism,
                                     self.spec.launcher.profile)
            running: list[Running] = []
            bar = tqdm(total=self.total(), initial=min(self.total(), len(ledger.done)), desc=self.spec.name)
            try:
                while queue or running:
                    while queue and len(running) < self.spec.launcher.parallelism:
                        params, seed = queue.pop(0)
                        running.append(self._launch(study, executor, params, seed))
                    time.sleep(_POLL_SECONDS)
                    for item in [r for r in running if r.job.done()]:
                        running.remove(item)
                        self._finish(study, item, ledger, queue, bar)
            except KeyboardInterrupt:
                for item in running:
                    item.job.cancel(check=False)
                    self._tell(study, item.trial.number, {"status": "failed", "error": f"{_INTERRUPTED} (Ctrl-C)"})
                bar.close()
                print("interrupted: run the same command again to continue")
                return 130
            bar.close()
        print(self.summary(study))
        print(f"figures: python -m analysis.figures {self.out} --out {self.out / 'figures'}")
        if ledger.final_failures:
            print("failed trials: " + "; ".join(ledger.final_failures))
            return 1
        return 0

    def _queue(self, study: optuna.Study, ledger: Ledger) -> list[tuple[dict[str, Any] | None, int]]:
        planned = self.planned()
        if planned is not None:
            return [(p, s) for p, s in planned if point_key(p, s) not in ledger.done
                    and ledger.attempts.get(point_key(p, s), 0) <= self.spec.launcher.max_retries]
        # each entry asks the study once: enqueued seeds of sampled points first, then new samples
        finished = len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED)))
        return [(None, self.spec.seeds[0])] * max(0, self.total() - finished)

    def _finish(self, study: optuna.Study, item: Running, ledger: Ledger, queue: list, bar: tqdm) -> None:
        try:
            result = item.job.result()
        except Exception as exc:  # the job itself died (killed, out of memory, import error)
            result = {"status": "failed", "error": f"job {item.job.job_id} died: {type(exc).__name__}: {str(exc)[:300]}"}
        self._tell(study, item.trial.number, result)
        frozen = study._storage.get_trial(item.trial._trial_id)
        self._append(frozen)
        key = point_key(*item.point)
        if frozen.state == TrialState.FAIL:
            ledger.attempts[key] = ledger.attempts.get(key, 0) + 1
            if ledger.attempts[key] <= self.spec.launcher.max_retries:
                queue.append(item.point if self.planned() is not None else (None, item.point[1]))
                return
            ledger.final_failures.append(f"trial {frozen.number} ({key}): {result.get('error')} "
                                         f"[log: {result.get('log') or item.job.paths.stderr}]")
        bar.update()
        best = self._best(study)
        if best:
            bar.set_postfix_str(best)

    def _best(self, study: optuna.Study) -> str:
        complete = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))]
        if not complete or len(self.spec.objectives) != 1:
            return f"{len(complete)} complete"
        objective = self.spec.objectives[0]
        pick = max if objective.direction == "maximize" else min
        return f"best {objective.key} {pick(t.values[0] for t in complete):.4f}"

    def summary(self, study: optuna.Study) -> str:
        """Mean ± std over seeds of each objective, per parameter point."""
        groups: dict[str, list[list[float]]] = {}
        for trial in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
            label = ", ".join(f"{k}={v}" for k, v in trial.params.items()) or "(base)"
            groups.setdefault(label, []).append(trial.values)
        names = [o.key for o in self.spec.objectives]
        width = max([len(label) for label in groups] + [10])
        lines = [f"{'point':<{width}}  {'n':>2}  " + "  ".join(f"{n:>17}" for n in names)]
        for label, values in groups.items():
            cells = []
            for column in zip(*values):
                spread = statistics.stdev(column) if len(column) > 1 else 0.0
                cells.append(f"{statistics.mean(column):>9.4f} ± {spread:.4f}")
            lines.append(f"{label:<{width}}  {len(values):>2}  " + "  ".join(cells))
        return "\n".join(lines)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, PermissionError):
        return False
    return True


def _read_record(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m harness.sweep", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("spec", type=Path, help="sweep spec YAML, e.g. sweeps/ablation.yaml")
    parser.add_argument("--dry-run", action="store_true", help="print the trial plan; launch nothing")
    parser.add_argument("--out", help="output dir (default: the spec's out, else outputs/<name>)")
    parser.add_argument("--launcher", choices=("local", "debug", "slurm"))
    parser.add_argument("--profile", help="SLURM profile name from slurm/")
    parser.add_argument("--storage", help="study storage: SQLAlchemy URL or journal:PATH")
    parser.add_argument("--parallelism", type=int)
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a spec key")
    args = parser.parse_args(argv)
    overrides = list(args.set)
    for flag, key in (("out", "out"), ("launcher", "launcher.kind"), ("profile", "launcher.profile"),
                      ("storage", "storage"), ("parallelism", "launcher.parallelism")):
        if getattr(args, flag) is not None:
            overrides.append(f"{key}={getattr(args, flag)}")
    spec = load_spec(args.spec, overrides)
    out = (Path(spec.out) if spec.out else Path("outputs") / spec.name).resolve()
    sweep = Sweep(spec, args.spec.parent, out, spec.storage or default_storage(out))
    if spec.launcher.kind == "slurm":
        if not spec.launcher.profile:
            raise ConfigError("launcher.profile: the slurm launcher needs a profile from slurm/ (--profile NAME)")
        load_profile(spec.launcher.profile)
    if args.dry_run:
        print(sweep.describe())
        return 0
    return sweep.run()


if __name__ == "__main__":
    run_cli(main)
