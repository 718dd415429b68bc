"""Warm trial workers for the local launcher: one long-lived process per parallel slot runs trial after trial.

A fresh process per trial pays for importing torch, open_clip and wandb, loading the benchmark and
starting W&B's service every time: seconds a trial, most of a short trial. A worker pays once. The
driver talks to each worker over a private socket pair (``multiprocessing.connection``): it sends one
trial (config, context, threads) and receives its ``TrialOutcome``.

Workers start before the driver checks the sweep's input. A driver that has not imported torch yet (the command
line's) imports the trainer once (torch, open_clip, wandb) and forks its workers from itself: one import for all of
them, on one core, where an interpreter per worker would pay it once each, side by side with the driver's own import
for its check. Forking is safe only in a process that has run no torch op: a child forked after OpenMP's threads
started hangs at its first parallel op (and on macOS frameworks refuse to run after a fork), so a worker started
later (the replacement of one that died), a driver elsewhere than Linux, or one in a process that has imported torch
(a test) starts each worker as a new interpreter, which imports while the driver checks. Until the check passes
workers log to an anonymous temporary file, so bad input leaves nothing under the output folder; then the driver
sends each worker ``LogTo`` and it moves what it logged so far into its log file there.

The semantics are those of a job: the job id is the worker's pid (so a driver that died and came back
adopts the trial when the worker has finished it and exited), a worker killed mid-trial fails that
trial and the driver retries it from its checkpoint in a new worker, and a worker whose driver dies
finishes its trial (writing its record) and exits. Between two trials a worker restores what a trial
may change in its process (environment, torch threads, grad mode, logging handlers and levels, an open
W&B run) and collects garbage; the benchmark it loaded stays, shared read-only by the next trials.

    python -m harness.sweep.warm FD [--tracking]   # a new-interpreter worker, on the socket passed as descriptor FD
"""

from __future__ import annotations

import gc
import importlib
import logging
import os
import signal
import socket
import subprocess
import sys
import tempfile
import traceback
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path
from typing import IO, Any, Iterator

from harness.core.record import TrialOutcome
from harness.sweep.context import TrialContext

log = logging.getLogger(__name__)

_TRIAL_MODULES = ("harness.trial.runner", "harness.sweep.tracking")  # with them torch, open_clip and the trainer
_MEDIA_MODULES = ("matplotlib.figure", "matplotlib.backends.backend_agg")


@dataclass(frozen=True)
class LogTo:
    """The driver's message that the input passed its checks: log to this file from now on."""

    path: str


@dataclass
class _JobPaths:
    stderr: Path  # the worker's log: what submitit's jobs call their stderr file


@dataclass
class Worker:
    """One worker process and the driver's end of its socket."""

    process: subprocess.Popen | ForkedProcess
    conn: Connection
    log: Path
    early_log: IO[bytes] | None = None  # the temporary file it logs to until it moves to ``log`` (started before checks)
    job: WarmJob | None = None  # the trial it runs, until its result is read

    @property
    def alive(self) -> bool:
        return self.process.poll() is None

    def keep_early_log(self) -> None:
        """A worker that died before moving its temporary log to ``log``: the driver moves it, traceback and all."""
        if self.early_log is not None and not self.log.exists():
            self.early_log.seek(0)
            self.log.write_bytes(self.early_log.read())


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
                self.worker.keep_early_log()
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
    """Up to ``size`` workers, started on demand; each runs one trial at a time. ``tracking``: workers start W&B's
    service as they start, not at their first trial."""

    def __init__(self, folder: Path, size: int, tracking: bool = False):
        self.folder, self.size, self.tracking = folder, size, tracking
        self.workers: list[Worker] = []
        self._started = 0
        self._logging = False  # True once keep_logs has created the log folder

    def _start(self, fork: bool = False) -> Worker:
        """A new worker: forked from this process (``fork``: see the module's docstring for when), else a new
        interpreter."""
        self._started += 1
        log_path = self.folder / f"worker-{self._started}.log"
        driver_end, worker_end = socket.socketpair()
        early_log = None if self._logging else tempfile.TemporaryFile()
        with open(log_path, "ab") if early_log is None else nullcontext(early_log) as output:
            if fork:
                # the driver's ends of every socket: a worker learns that the driver is gone from its socket's EOF
                inherited = [driver_end.fileno(), *(worker.conn.fileno() for worker in self.workers)]
                process: subprocess.Popen | ForkedProcess = _fork(worker_end, output.fileno(), inherited, self.tracking)
            else:
                command = [sys.executable, "-m", "harness.sweep.warm", str(worker_end.fileno()),
                           *(["--tracking"] * self.tracking)]
                process = subprocess.Popen(command, pass_fds=[worker_end.fileno()], stdin=subprocess.DEVNULL,
                                           stdout=output, stderr=subprocess.STDOUT)
        worker_end.close()
        worker = Worker(process, Connection(driver_end.detach()), log_path, early_log)
        log.debug("%s warm worker %d (pid %d, log %s)", "forked" if fork else "started", self._started, process.pid,
                  log_path)
        return worker

    def start(self) -> None:
        """Start every worker now, before the driver's checks: forked once the trainer is imported here, or new
        interpreters that import while the driver checks and prepares."""
        fork = can_fork()
        if fork:
            for module in _TRIAL_MODULES + (_MEDIA_MODULES if self.tracking else ()):
                importlib.import_module(module)
        while len(self.workers) < self.size:
            self.workers.append(self._start(fork))

    def keep_logs(self) -> None:
        """The input passed its checks: create the log folder and have every worker log to its file there."""
        self.folder.mkdir(parents=True, exist_ok=True)
        self._logging = True
        for worker in self.workers:
            try:
                worker.conn.send(LogTo(str(worker.log)))
            except OSError:  # it died while the driver checked: its trial's submission will say so
                worker.keep_early_log()

    def submit(self, config: dict[str, Any], context: TrialContext | None, threads: int) -> WarmJob:
        """Hand a trial to an idle worker, starting one when every live worker is busy."""
        for dead in [w for w in self.workers if not w.alive and w.job is None]:
            if self._logging:
                dead.keep_early_log()
            self.workers.remove(dead)
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
            if worker.early_log is not None:
                worker.early_log.close()
        self.workers = []


def can_fork() -> bool:
    """Workers may be forked from this process: Linux, and no torch op can have run here (torch is not imported)."""
    return sys.platform == "linux" and "torch" not in sys.modules


class ForkedProcess:
    """A worker forked from the driver, with the part of ``subprocess.Popen``'s interface a ``Worker`` uses."""

    def __init__(self, pid: int):
        self.pid = pid
        self.returncode: int | None = None

    def poll(self) -> int | None:
        if self.returncode is None:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                self.returncode = os.waitstatus_to_exitcode(status)
        return self.returncode

    def wait(self) -> int:
        if self.returncode is None:
            self.returncode = os.waitstatus_to_exitcode(os.waitpid(self.pid, 0)[1])
        return self.returncode

    def kill(self) -> None:
        if self.returncode is None:
            os.kill(self.pid, signal.SIGKILL)


def _fork(worker_end: socket.socket, output: int, inherited: list[int], tracking: bool) -> ForkedProcess:
    """Fork a worker that serves on ``worker_end`` with its standard streams on ``output``; it closes the ``inherited``
    descriptors first. The child never returns into the driver's code."""
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid:
        return ForkedProcess(pid)
    try:
        for fd in inherited:
            os.close(fd)
        with open(os.devnull, "rb") as nothing:
            os.dup2(nothing.fileno(), 0)
        os.dup2(output, 1)
        os.dup2(output, 2)
        serve(Connection(worker_end.detach()), tracking)
        _exit()
    except BaseException:
        traceback.print_exc()
        sys.stderr.flush()
    finally:
        os._exit(1)


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


def _log_to(path: Path) -> None:
    """Copy what this worker logged into its temporary file to ``path``, and log there from now on."""
    sys.stdout.flush()
    sys.stderr.flush()
    with open(path, "ab") as log_file:
        log_file.write(os.pread(sys.stdout.fileno(), os.fstat(sys.stdout.fileno()).st_size, 0))
        log_file.flush()
        for stream in (sys.stdout, sys.stderr):
            os.dup2(log_file.fileno(), stream.fileno())


def _start_tracking() -> None:
    """W&B's service, started once for every trial of this worker, and the figure modules its media are drawn with."""
    import wandb

    wandb.setup()
    for module in _MEDIA_MODULES:
        importlib.import_module(module)


def serve(conn: Connection, tracking: bool = False) -> None:
    """Run the trials the driver sends until it closes the socket (or dies)."""
    from harness.data import LoadedBenchmarks
    from harness.sweep.jobs import run_trial

    for module in _TRIAL_MODULES:  # imported now, while the driver checks, rather than by the first trial
        importlib.import_module(module)
    if tracking:
        _start_tracking()
    benchmarks = LoadedBenchmarks()
    while True:
        try:
            message = conn.recv()
        except (EOFError, OSError):
            return
        if isinstance(message, LogTo):
            _log_to(Path(message.path))
            continue
        config, context, threads = message
        if not tracking and config["tracking"]["mode"] != "disabled":
            _start_tracking()
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


def _exit() -> None:
    """Leave without the interpreter's shutdown, which would walk every object torch and open_clip made (about a
    second of CPU beside the driver's last work), as multiprocessing's children leave: every record and reply is
    written by now; W&B's service is stopped and the log flushed first."""
    wandb = sys.modules.get("wandb")
    if wandb is not None:
        wandb.teardown()
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


if __name__ == "__main__":
    from harness.sweep import warm  # the module the driver pickles LogTo from, not this __main__ copy of it

    warm.serve(Connection(int(sys.argv[1])), tracking="--tracking" in sys.argv[2:])
    warm._exit()
