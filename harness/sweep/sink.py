"""OUT/results.jsonl, one typed line (``ResultLine``) per finished trial: the only place that writes or reads it."""

from __future__ import annotations

import fcntl
import json
import logging
import os
from pathlib import Path
from typing import IO, Callable

import optuna

from harness.core.record import ResultLine, UnreadableRecordError

RESULTS = "results.jsonl"

log = logging.getLogger(__name__)


def result_line(trial: optuna.trial.FrozenTrial, out: Path) -> ResultLine:
    """The line of a finished trial: identity, state, objective values, summary, its record relative to ``out``."""
    attrs = trial.user_attrs
    return ResultLine(trial=trial.number, state=trial.state.name, point=attrs.get("point"), params=trial.params,
                      seed=attrs.get("seed"), values=trial.values, status=attrs.get("status"), error=attrs.get("error"),
                      summary={k.removeprefix("summary."): v for k, v in attrs.items() if k.startswith("summary.")},
                      record=os.path.relpath(attrs["record"], out) if attrs.get("record") else None)


class ResultSink:
    """Appends each trial's line once (by trial number) and reads the lines back.

    A crash in the middle of a write leaves a last line without its newline; the next ``append`` drops it (or,
    when it is whole JSON, ends it with its newline) before writing, so the new line never gets glued onto it.
    A dropped trial is missing from ``trials()`` and the driver appends it again from the study.
    """

    def __init__(self, out: Path):
        self.path = Path(out) / RESULTS

    def read(self, problem: Callable[[str], None] = log.warning) -> list[ResultLine]:
        """Every line, oldest first; a line that cannot be read (not JSON, another schema) is skipped, and ``problem``
        is told which and why."""
        return self._parse(problem)

    def trials(self) -> set[int]:
        """The numbers of the trials that have a line."""
        return {line.trial for line in self.read()}

    def append(self, line: ResultLine) -> bool:
        """Write ``line`` unless its trial has one already (False then)."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a+b") as handle:
            try:
                fcntl.flock(handle.fileno(), fcntl.LOCK_EX)  # drivers sharing an output dir append one at a time
            except OSError:  # a filesystem without locks (some NFS mounts): append unlocked, as one driver does
                pass
            self._end_on_newline(handle)
            if any(old.trial == line.trial for old in self._parse(lambda _: None)):
                return False
            handle.write(line.dumps().encode() + b"\n")
        return True

    def _parse(self, problem: Callable[[str], None]) -> list[ResultLine]:
        try:
            text = self.path.read_text()
        except FileNotFoundError:
            return []
        lines = []
        for number, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                lines.append(ResultLine.parse(line, f"{self.path}:{number}"))
            except UnreadableRecordError as exc:
                problem(f"{exc}; skipped")
        return lines

    def _end_on_newline(self, handle: IO[bytes]) -> None:
        """Repair a last line without its newline: whole JSON gets the newline, a torn line is cut off."""
        size = handle.seek(0, os.SEEK_END)
        if size == 0:
            return
        handle.seek(size - 1)
        if handle.read(1) == b"\n":
            return
        handle.seek(0)
        data = handle.read()
        start = data.rfind(b"\n") + 1
        try:
            json.loads(data[start:])
        except ValueError:
            log.warning("%s:%d: a line cut short by a crash while writing; dropped (its trial is written again)",
                        self.path, data.count(b"\n", 0, start) + 1)
            handle.truncate(start)
        else:
            handle.write(b"\n")
