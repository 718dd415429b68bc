"""Warm trial workers for the local launcher: one long-lived process per parallel slot runs trial after trial.

A fresh process per trial pays for importing torch, open_clip and wandb, loading the benchmark and
starting W&B's service every time: seconds a trial, most of a short trial. A worker pays once. The
driver talks to each worker over a private socket pair (``multiprocessing.connection``): it sends one
trial (config, context, threads) and receives its ``TrialOutcome``.

The semantics are those of a job: the job id is the worker's pid (so a driver that died and came back
adopts the trial when the worker has finished it and exited), a worker killed mid-trial fails that
trial and the driver retries it from its checkpoint in a new worker, and a worker whose driver dies
finishes its trial (writing its record) and exits. Between two trials a worker restores what a trial
may change in its process (environment, torch threads, grad mode, logging handlers and levels, an open
W&B run) and collects garbage; the benchmark it loaded stays, shared read-only by the next trials.

    python -m harness.sweep.warm FD      # a worker, on the socket the driver passed as file descriptor FD
"""

from __future__ import annotations

import gc
import logging
import os
import socket
import subprocess
import sys
import traceback
from contextlib import contextmanager
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any, Iterator

from harness.core.record import TrialOutcome
from harness.sweep.context import TrialContext

log = logging.getLogger(__name__)


@dataclass
class _JobPaths:
    stderr: Path  # the worker's log: what submitit's jobs call their stderr file


@dataclass
class Worker:
    """One worker process and the driver's end of its socket."""

    process: subprocess.Popen
    conn: Connection
    log: Path
    job: WarmJob | None = None  # the trial it runs, until its result is read

    @property
    def alive(self) -> bool:
        return self.process.poll() is None


@dataclass
class WarmJob:
    """A trial handed to a worker, with the interface the launcher uses for submitit's jobs."""

    worker: Worker
    job_id: str
    paths: _JobPaths
    _result: list[TrialOutcome] = field(default_factory=list)

    def done(self) -> bool:
        """The result arrived, or the worker's socket closed (it died)."""
        return bool(self._result) or self.worker.conn.poll()

    def results(self) -> list[TrialOutcome]:
        """The trial's outcome; raises when the worker died without one (as a dead job's ``results`` does)."""
        if not self._result:
            try:
                reply = self.worker.conn.recv()
            except (EOFError, OSError) as exc:
                code = self.worker.process.wait()
                raise RuntimeError(f"warm worker {self.job_id} died (exit code {code}) before its trial ended") from exc
            finally:
                self.worker.job = None
            if isinstance(reply, str):  # the job body raised: its traceback
                raise RuntimeError(reply)
            self._result.append(reply)
        return self._result

    def cancel(self, check: bool = False) -> None:
        """Stop the trial by killing its worker (its checkpoint stays for a retry)."""
        self.worker.process.kill()
        self.worker.process.wait()
        self.worker.job = None


class WarmPool:
    """Up to ``size`` workers, started on demand; each runs one trial at a time."""

    def __init__(self, folder: Path, size: int):
        self.folder, self.size = folder, size
        self.workers: list[Worker] = []
        self._started = 0

    def _start(self) -> Worker:
        self.folder.mkdir(parents=True, exist_ok=True)
        self._started += 1
        log_path = self.folder / f"worker-{self._started}.log"
        driver_end, worker_end = socket.socketpair()
        with open(log_path, "ab") as log_file:
            process = subprocess.Popen([sys.executable, "-m", "harness.sweep.warm", str(worker_end.fileno())],
                                       pass_fds=[worker_end.fileno()], stdin=subprocess.DEVNULL, stdout=log_file,
                                       stderr=subprocess.STDOUT)
        worker_end.close()
        worker = Worker(process, Connection(driver_end.detach()), log_path)
        log.debug("started warm worker %d (pid %d, log %s)", self._started, process.pid, log_path)
        return worker

    def start(self) -> None:
        """Start every worker now: they import while the driver prepares, instead of when the first trials come."""
        while len(self.workers) < self.size:
            self.workers.append(self._start())

    def submit(self, config: dict[str, Any], context: TrialContext | None, threads: int) -> WarmJob:
        """Hand a trial to an idle worker, starting one when every live worker is busy."""
        self.workers = [w for w in self.workers if w.alive or w.job is not None]
        worker = next((w for w in self.workers if w.alive and w.job is None), None)
        if worker is None:
            if len(self.workers) >= self.size:
                raise RuntimeError(f"all {self.size} warm workers are busy")
            worker = self._start()
            self.workers.append(worker)
        job = WarmJob(worker, str(worker.process.pid), _JobPaths(worker.log))
        worker.conn.send((config, context, threads))
        worker.job = job
        return job

    def close(self) -> None:
        """Idle workers see their socket close and exit; busy ones finish their trial first."""
        for worker in self.workers:
            worker.conn.close()
        self.workers = []


# --------------------------------------------------------------------------- the worker's side


@contextmanager
def _trial_scope() -> Iterator[None]:
    """Restore what a trial may change in the process, so that nothing leaks into the next one."""
    import torch

    environment = dict(os.environ)
    threads, grad = torch.get_num_threads(), torch.is_grad_enabled()
    root = logging.getLogger()
    loggers = [root, *(lg for lg in logging.root.manager.loggerDict.values() if isinstance(lg, logging.Logger))]
    handlers, levels = list(root.handlers), {logger: logger.level for logger in loggers}
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(environment)
        torch.set_num_threads(threads)
        torch.set_grad_enabled(grad)
        for handler in [h for h in root.handlers if h not in handlers]:
            root.removeHandler(handler)
            handler.close()
        for logger, level in levels.items():
            logger.setLevel(level)
        _finish_wandb()
        gc.collect()


def _finish_wandb() -> None:
    """A run a failed trial left open is finished here, not carried into the next trial."""
    wandb = sys.modules.get("wandb")
    if wandb is not None and wandb.run is not None:
        wandb.finish(exit_code=1)


def serve(conn: Connection) -> None:
    """Run the trials the driver sends until it closes the socket (or dies)."""
    from harness.data import LoadedBenchmarks
    from harness.sweep.jobs import run_trial

    benchmarks, tracking = LoadedBenchmarks(), False
    while True:
        try:
            config, context, threads = conn.recv()
        except (EOFError, OSError):
            return
        if not tracking and config["tracking"]["mode"] != "disabled":
            import wandb

            wandb.setup()  # W&B's service starts once, for every trial of this worker
            tracking = True
        with _trial_scope():
            try:
                reply: TrialOutcome | str = run_trial(config, context, threads, benchmarks)
            except Exception:  # as a job whose body raised: the driver records the failure
                reply = traceback.format_exc()
        try:
            conn.send(reply)
        except (BrokenPipeError, OSError):  # the driver died: its successor adopts the record
            return


if __name__ == "__main__":
    serve(Connection(int(sys.argv[1])))
