"""A mutex in the study's own storage, so that several drivers sharing a study never claim the same point.

Drivers decide what runs next (settle orphans, queue missing points, ask for one) while holding it,
so a point is queued at most once however many drivers run: on one machine, on several login
nodes, or restarted elsewhere. The lock lives where the study lives, so every driver that can
reach the study can take it:

- ``sqlite:///PATH``: an ``flock`` on ``PATH.claim`` (SQLite files are local to one machine);
- ``journal:PATH``: an ``O_EXCL`` lock file next to the journal (Optuna's own NFS-safe lock,
  ``JournalFileOpenLock``; a lock older than its grace period is taken to be a dead holder's);
- ``postgresql://...``: a session-level advisory lock (``pg_advisory_lock``), released by the
  server when a driver's connection drops.
"""

from __future__ import annotations

import hashlib
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from harness.core.errors import UsageError
from harness.core.storage import file_lock
from harness.sweep.study import shown

# Longer than any claim takes (a few storage round trips), so only a dead holder's lock is broken.
_JOURNAL_GRACE_S = 60


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
            raise UsageError(f"storage {shown(storage)!r}: sweeps support sqlite:///, journal:PATH and postgresql:// "
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
