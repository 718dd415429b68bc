"""Read trial records into tidy pandas frames.

Inputs, any mix of:
- a sweep output directory with ``results.jsonl`` (one JSON object per finished trial:
  ``trial``, ``state``, ``params``, ``seed``, ``summary``, ``record`` = path of its record.json,
  relative paths taken from the results file's directory); a ``variant`` param (the sweep's
  named override sets, e.g. ablation rows) names the trial's row in tables and figures;
- a directory holding ``record.json`` files at any depth (single runs of ``harness.train``);
- an Optuna storage (``sqlite:///outputs/x/study.db``, ``journal:PATH``, any SQLAlchemy URL):
  every study in it, each trial's record found through its ``record`` user attribute;
- ``wandb:ENTITY/PROJECT`` (online only): runs through W&B's public API, rebuilt from their
  summaries (summary metrics only: no per-set reports, reliability bins or spectra).

Outputs (``Results``): ``trials``, one row per trial (identity, its ``setting``: the sweep's ``setting`` param,
else ``benchmark / model``; config keys that vary across the loaded trials, summary metrics); ``sets``, one row per trial x evaluated set (all metrics);
``records``, the parsed records by trial id (reliability bins, WiSE-FT curves, spectra);
``config_keys``, the config keys that vary across the loaded trials (each also a column of ``trials``).
Records and results lines are read through harness.core.record's typed models. Records of schema 1
lack the noise floors, bootstrap intervals, NLL/Brier means and the scale-free sigma_min: those
columns exist all the same, holding NaN, so that every consumer can rely on them. A line or record
that cannot be read (not JSON, an unknown schema, a bad field) is reported with its file (and line
number) and skipped; a results file still being written yields what is there.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import pandas as pd

from harness.core.config import benchmark_label, flatten
from harness.core.record import (
    RunRecord,
    UnreadableRecordError,
    known_summary,
)
from harness.core.summary_keys import STUDENT_KEYS
from harness.core.errors import UsageError
from harness.sweep.sink import RESULTS, ResultSink

RECORD_FILE = "record.json"
# Config keys that never define a variant: they differ between seeds or runs of one variant.
_NOT_VARIANT_KEYS = ("seed", "run_dir", "tracking.", "eval.", "optim.checkpoint_every")
METRICS = ("acc", "ece", "mce", "adaptive_ece", "classwise_ece", "nll", "brier", "confidence", "n",
           "ece_floor", "ece_floor_sd")


class NoResultsError(UsageError):
    """Nothing to analyse in the given paths (the CLI exits 2 with one line)."""


@dataclass
class Results:
    trials: pd.DataFrame
    sets: pd.DataFrame
    records: dict[str, RunRecord] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)  # corrupt lines, missing records, failed trials
    config_keys: list[str] = field(default_factory=list)  # config keys that vary across the trials (columns of trials)

    @property
    def settings(self) -> list[str]:
        """The settings the trials belong to, in order of first appearance."""
        return list(dict.fromkeys(self.trials["setting"]))

    def setting(self, name: str) -> "Results":
        """The trials of one setting, with their sets and records."""
        trials = self.trials[self.trials["setting"] == name].reset_index(drop=True)
        kept = set(trials["trial"])
        return Results(trials=trials, sets=self.sets[self.sets["trial"].isin(kept)].reset_index(drop=True),
                       records={k: v for k, v in self.records.items() if k in kept}, problems=self.problems,
                       config_keys=self.config_keys)


def setting_name(params: dict[str, Any], config: dict[str, Any]) -> str:
    """A trial's setting: the sweep's ``setting`` param, else its benchmark (a file's stem) and model."""
    if params.get("setting"):
        return str(params["setting"])
    return f"{benchmark_label(str(config.get('data.benchmark', '')))} / {config.get('model.name')}"


def _flat_config(config: dict) -> dict[str, Any]:
    """Dotted keys; lists become tuples so that values can be compared and grouped."""
    return {key: tuple(value) if isinstance(value, list) else value for key, value in flatten(config).items()}


@dataclass
class _Entry:
    trial_id: str
    sweep: str | None
    record: RunRecord | None
    state: str = "unknown"
    params: dict[str, Any] = field(default_factory=dict)


def _record_entries(root: Path, problems: list[str]) -> Iterable[_Entry]:
    """Every trial found under ``root``."""
    if (root / RESULTS).is_file():
        by_trial = {line.trial: line for line in ResultSink(root).read(problems.append)}  # the last line wins
        for line in by_trial.values():
            record = None
            if line.record:
                path = Path(line.record)
                record = _read_record(path if path.is_absolute() else root / path, problems)
            yield _Entry(f"{root.name}/{line.trial}", root.name, record, line.state, line.params)
        return
    for path in sorted(root.rglob(RECORD_FILE)):
        record = _read_record(path, problems)
        if record is not None:
            yield _Entry(str(path.parent), root.name, record)


def _storage_entries(url: str, problems: list[str]) -> Iterable[_Entry]:
    import optuna

    from harness.sweep.study import open_storage

    storage = open_storage(url)
    for name in optuna.get_all_study_names(storage=storage):
        study = optuna.load_study(study_name=name, storage=storage)
        for trial in study.get_trials(deepcopy=False):
            path = trial.user_attrs.get("record")
            record = _read_record(Path(path), problems) if path else None
            yield _Entry(f"{study.study_name}/{trial.number}", study.study_name, record, trial.state.name, trial.params)


def _wandb_entries(path: str) -> Iterable[_Entry]:
    try:
        import wandb

        runs = list(wandb.Api(timeout=20).runs(path))
    except Exception as exc:  # no network, no API key, unknown project
        raise NoResultsError(f"wandb:{path}: W&B's API is unreachable ({type(exc).__name__}: {exc})") from exc
    for run in runs:
        summary, config = dict(run.summary), dict(run.config)
        record = RunRecord(status=summary.get("status", "running"), method=config.get("method", "unknown"),
                           config=config, config_digest="", versions={}, summary=known_summary(summary),
                           paths={"run_dir": run.id, "record": run.url})
        yield _Entry(f"{path}/{run.id}", run.group, record)


def _entries(source: str, problems: list[str]) -> Iterable[_Entry]:
    if source.startswith("wandb:"):
        return _wandb_entries(source.removeprefix("wandb:"))
    if "://" in source or source.startswith("journal:"):
        return _storage_entries(source, problems)
    root = Path(source)
    if not root.exists():
        raise NoResultsError(f"{root}: no such directory")
    return _record_entries(root, problems)


def _read_record(path: Path, problems: list[str]) -> RunRecord | None:
    try:
        return RunRecord.read(path)
    except FileNotFoundError:
        problems.append(f"{path}: record missing; trial skipped")
    except UnreadableRecordError as exc:
        problems.append(f"{exc}; trial skipped")
    return None


def _set_role(name: str, record: RunRecord) -> str:
    if name == "val":
        return "val"
    return "id" if name == record.id_test else "ood"


def load(paths: Iterable[str | Path]) -> Results:
    """Load every trial from ``paths``: sweep output dirs, run dirs, Optuna storage URLs or ``wandb:ENTITY/PROJECT``."""
    paths = [str(path) for path in paths]
    problems: list[str] = []
    trial_rows, set_rows, records = [], [], {}
    for source in paths:
        for entry in _entries(source, problems):
            record = entry.record
            status = record.status if record is not None else entry.state.lower()
            if record is None or status != "ok":
                error = f" ({record.error})" if record is not None and record.error else ""
                problems.append(f"{entry.trial_id}: trial {status}{error}")
                continue
            config = _flat_config(record.config)
            trial_rows.append({
                "trial": entry.trial_id, "sweep": entry.sweep, "method": record.method,
                "named_variant": entry.params.get("variant"), "setting": setting_name(entry.params, config),
                "seed": config.get("seed"), "config": config,
                **record.summary,
            })
            records[entry.trial_id] = record
            for name, report in record.tests.items():
                low, high = report.ece_ci or (None, None)
                set_rows.append({"trial": entry.trial_id, "set": name, "role": _set_role(name, record),
                                 **{key: getattr(report, key) for key in METRICS}, "ece_ci_low": low, "ece_ci_high": high})
    if not trial_rows:
        detail = f" ({len(problems)} problems: {problems[0]} ...)" if problems else ""
        raise NoResultsError(f"no finished trials in {', '.join(paths)}{detail}")
    trials = pd.DataFrame(trial_rows)
    for key in STUDENT_KEYS:  # every trial row carries them (NaN where a record predates them)
        trials[key] = pd.to_numeric(trials[key], errors="coerce") if key in trials else float("nan")
    config_keys = _varying_keys(trials["config"])
    for key in config_keys:  # columns for grouping and sensitivity plots
        trials[key] = [config.get(key) for config in trials["config"]]
    label_keys = {method: _varying_keys(group) for method, group in trials.groupby("method")["config"]}
    trials["variant"] = [row.named_variant or _variant_label(row.method, row.config, label_keys[row.method])
                         for row in trials.itertuples()]
    trials = trials.drop(columns=["config", "named_variant"])
    sets = pd.DataFrame(set_rows, columns=["trial", "set", "role", *METRICS, "ece_ci_low", "ece_ci_high"])
    numeric = [*METRICS, "ece_ci_low", "ece_ci_high"]
    sets[numeric] = sets[numeric].apply(pd.to_numeric, errors="coerce")  # None (old records) -> NaN
    sets = sets.merge(trials[["trial", "variant", "method", "seed", "setting"]], on="trial")
    return Results(trials=trials, sets=sets, records=records, problems=problems, config_keys=config_keys)


def _varying_keys(configs: pd.Series) -> list[str]:
    keys = sorted(set().union(*(config.keys() for config in configs)))
    varying = []
    for key in keys:
        if key == "method" or key.startswith(_NOT_VARIANT_KEYS):
            continue
        if len({repr(config.get(key)) for config in configs}) > 1:
            varying.append(key)
    return varying


def _variant_label(method: str, config: dict, keys: list[str]) -> str:
    """``method`` plus this trial's values of the keys that vary among its method's trials, e.g. 'carot (sd_weight=0.5)'."""
    parts = [f"{key.split('.')[-1]}={config.get(key)}" for key in keys if config.get(key) is not None]
    return f"{method} ({', '.join(parts)})" if parts else method
