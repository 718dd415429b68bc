"""OUT/results.jsonl, one JSON line per finished trial: the only place in harness/ that writes or reads it."""

from __future__ import annotations

import fcntl
import json
import logging
import os
from pathlib import Path
from typing import IO, Any

import optuna

RESULTS = "results.jsonl"

log = logging.getLogger(__name__)


def result_line(trial: optuna.trial.FrozenTrial, out: Path) -> dict[str, Any]:
    """The line of a finished trial: identity, state, objective values, summary, its record relative to ``out``."""
    attrs = trial.user_attrs
    return {"trial": trial.number, "state": trial.state.name, "point": attrs.get("point"),
            "params": trial.params, "seed": attrs.get("seed"),
            "values": trial.values, "status": attrs.get("status"), "error": attrs.get("error"),
            "summary": {k.removeprefix("summary."): v for k, v in attrs.items() if k.startswith("summary.")},
            "record": os.path.relpath(attrs["record"], out) if attrs.get("record") else None}


class ResultSink:
    """Appends each trial's line once (by trial number) and reads the lines back.

    A crash in the middle of a write leaves a last line without its newline; the next ``append`` drops it (or,
    when it is whole JSON, ends it with its newline) before writing, so the new line never gets glued onto it.
    A dropped trial is missing from ``trials()`` and the driver appends it again from the study.
    """

    def __init__(self, out: Path):
        self.path = Path(out) / RESULTS

    def read(self) -> list[dict[str, Any]]:
        """Every line, oldest first; a line that is not JSON is skipped with a warning naming it."""
        return self._parse(warn=True)

    def trials(self) -> set[int]:
        """The numbers of the trials that have a line."""
        return {line["trial"] for line in self.read() if "trial" in line}

    def append(self, line: dict[str, Any]) -> bool:
        """Write ``line`` unless its trial has one already (False then)."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a+b") as handle:
            try:
                fcntl.flock(handle.fileno(), fcntl.LOCK_EX)  # drivers sharing an output dir append one at a time
            except OSError:  # a filesystem without locks (some NFS mounts): append unlocked, as one driver does
                pass
            self._end_on_newline(handle)
            if any(old.get("trial") == line["trial"] for old in self._parse(warn=False)):
                return False
            handle.write(json.dumps(line).encode() + b"\n")
        return True

    def _parse(self, warn: bool) -> list[dict[str, Any]]:
        try:
            text = self.path.read_text()
        except FileNotFoundError:
            return []
        lines = []
        for number, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                lines.append(json.loads(line))
            except json.JSONDecodeError as exc:
                if warn:
                    log.warning("%s:%d: not valid JSON (%s); skipped", self.path, number, exc.msg)
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
