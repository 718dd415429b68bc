"""Where cached artefacts live, and atomic writes (temp file + rename) for them."""

from __future__ import annotations

import fcntl
import json
import os
import signal
import threading
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

CACHE_ENV = "CAROT_HARNESS_CACHE"


def cache_dir() -> Path:
    """``$CAROT_HARNESS_CACHE`` or ``~/.cache/carot-harness``: built benchmarks and pretrained weights."""
    root = os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "carot-harness"
    return Path(root)


# Signals that stop a job: Ctrl-C, SLURM's SIGTERM, submitit's SIGUSR2 (time-out or preemption: requeue, then exit).
_STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGUSR2)


@contextmanager
def stop_signals_deferred() -> Iterator[None]:
    """Deliver stop signals after the block, not inside it.

    submitit's requeue handler ends the job with ``sys.exit``; raised inside ``torch.save``'s C++
    writer, that exit comes out as a ``RuntimeError`` ("unexpected pos ...") and the trial would be
    recorded as failed instead of requeued. Only the main thread can swap handlers; elsewhere this
    does nothing.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught: list[int] = []
    previous = {number: signal.getsignal(number) for number in _STOP_SIGNALS}
    previous = {number: handler for number, handler in previous.items() if handler is not None}
    for number in previous:
        signal.signal(number, lambda signum, frame: caught.append(signum))
    try:
        yield
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)
        for number in caught:
            signal.raise_signal(number)


def _atomic(path: Path, write) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with stop_signals_deferred():
        return _write_and_rename(path, write)


def _write_and_rename(path: Path, write) -> Path:
    # created with mode 0666 less the process's umask, as open() does (mkstemp would make it 0600)
    tmp = path.parent / f".{path.name}.{uuid.uuid4().hex}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(fd, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def atomic_torch_save(obj: Any, path: Path) -> Path:
    """Save with ``torch.save`` so that readers see the old file or the whole new one, never a part."""
    import torch  # here: the records and locks of this module serve processes that never load torch (a sweep's claims)

    return _atomic(path, lambda handle: torch.save(obj, handle))


def atomic_write_json(obj: Any, path: Path) -> Path:
    """Write indented JSON atomically."""
    return _atomic(path, lambda handle: handle.write((json.dumps(obj, indent=2) + "\n").encode()))


@contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """An exclusive advisory lock on ``path`` (POSIX), so that parallel workers build a cache entry once."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
