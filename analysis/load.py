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
  summaries (summary metrics and per-set accuracy and ECE; no reliability bins or spectra).

Outputs (``Results``): ``trials``, one row per trial (identity, config keys that vary across the
loaded trials, summary metrics); ``sets``, one row per trial x evaluated set (all metrics);
``records``, the parsed records by trial id (reliability bins, WiSE-FT curves, spectra);
``config_keys``, the config keys that vary across the loaded trials (each also a column of ``trials``).
Records of schema 1 lack the noise floors, bootstrap intervals, NLL/Brier means and the scale-free
sigma_min: those columns exist all the same, holding NaN, so that every consumer can rely on them.
A line that is not valid JSON is reported with its file and line number and skipped; a results
file still being written yields what is there.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import pandas as pd

from harness.core.config import flatten
from harness.core.summary_keys import STUDENT_KEYS

RESULTS_FILE = "results.jsonl"
RECORD_FILE = "record.json"
# Config keys that never define a variant: they differ between seeds or runs of one variant.
_NOT_VARIANT_KEYS = ("seed", "run_dir", "tracking.", "eval.", "optim.checkpoint_every")
METRICS = ("acc", "ece", "mce", "adaptive_ece", "classwise_ece", "nll", "brier", "confidence", "n",
           "ece_floor", "ece_floor_sd")


class NoResultsError(ValueError):
    """Nothing to analyse in the given paths (the CLI exits 2)."""


@dataclass
class Results:
    trials: pd.DataFrame
    sets: pd.DataFrame
    records: dict[str, dict] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)  # corrupt lines, missing records, failed trials
    config_keys: list[str] = field(default_factory=list)  # config keys that vary across the trials (columns of trials)


def _flat_config(config: dict) -> dict[str, Any]:
    """Dotted keys; lists become tuples so that values can be compared and grouped."""
    return {key: tuple(value) if isinstance(value, list) else value for key, value in flatten(config).items()}


def _read_jsonl(path: Path, problems: list[str]) -> list[dict]:
    rows = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError as exc:
            problems.append(f"{path}:{number}: not valid JSON ({exc.msg}); skipped")
    return rows


def _record_entries(root: Path, problems: list[str]) -> Iterable[tuple[str, dict, dict]]:
    """(trial id, results line or {}, record) for every trial found under ``root``."""
    results = root / RESULTS_FILE
    if results.is_file():
        sweep = root.name
        by_trial = {line.get("trial"): line for line in _read_jsonl(results, problems)}  # the last line wins
        for line in by_trial.values():
            record = None
            if line.get("record"):
                path = Path(line["record"])
                record = _read_record(path if path.is_absolute() else root / path, problems)
            yield f"{sweep}/{line.get('trial')}", line | {"sweep": sweep}, record or {}
        return
    for path in sorted(root.rglob(RECORD_FILE)):
        record = _read_record(path, problems)
        if record is not None:
            yield str(path.parent), {"sweep": root.name}, record


def _storage_entries(url: str, problems: list[str]) -> Iterable[tuple[str, dict, dict]]:
    import optuna

    from harness.sweep.study import open_storage

    storage = open_storage(url)
    for name in optuna.get_all_study_names(storage=storage):
        study = optuna.load_study(study_name=name, storage=storage)
        for trial in study.get_trials(deepcopy=False):
            path = trial.user_attrs.get("record")
            record = _read_record(Path(path), problems) if path else None
            line = {"sweep": study.study_name, "params": trial.params, "state": trial.state.name}
            yield f"{study.study_name}/{trial.number}", line, record or {}


def _wandb_entries(path: str) -> Iterable[tuple[str, dict, dict]]:
    try:
        import wandb

        runs = list(wandb.Api(timeout=20).runs(path))
    except Exception as exc:  # no network, no API key, unknown project
        raise NoResultsError(f"wandb:{path}: W&B's API is unreachable ({type(exc).__name__}: {exc})") from exc
    for run in runs:
        summary = dict(run.summary)
        tests = {}
        for key, value in summary.items():
            if key.startswith("test/") and key.count("/") == 2:
                _, name, metric = key.split("/")
                tests.setdefault(name, {})[metric] = value
        config = dict(run.config)
        record = {"status": summary.get("status"), "method": config.get("method"), "summary": summary, "tests": tests,
                  "config": config, "id_test": next((n for n in tests if n == "mnist"), None)}
        yield f"{path}/{run.id}", {"sweep": run.group}, record


def _entries(source: str, problems: list[str]) -> Iterable[tuple[str, dict, dict]]:
    if source.startswith("wandb:"):
        return _wandb_entries(source.removeprefix("wandb:"))
    if "://" in source or source.startswith("journal:"):
        return _storage_entries(source, problems)
    root = Path(source)
    if not root.exists():
        raise NoResultsError(f"{root}: no such directory")
    return _record_entries(root, problems)


def _read_record(path: Path, problems: list[str]) -> dict | None:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        problems.append(f"{path}: record missing; trial skipped")
    except json.JSONDecodeError as exc:
        problems.append(f"{path}: not valid JSON ({exc.msg}); trial skipped")
    return None


def _set_role(name: str, record: dict) -> str:
    if name == "val":
        return "val"
    return "id" if name == record.get("id_test") else "ood"


def load(paths: Iterable[str | Path]) -> Results:
    """Load every trial from ``paths``: sweep output dirs, run dirs, Optuna storage URLs or ``wandb:ENTITY/PROJECT``."""
    paths = [str(path) for path in paths]
    problems: list[str] = []
    trial_rows, set_rows, records = [], [], {}
    for source in paths:
        for trial_id, line, record in _entries(source, problems):
            status = record.get("status") or str(line.get("state", "unknown")).lower()
            if status != "ok":
                problems.append(f"{trial_id}: trial {status}" + (f" ({record['error']})" if record.get("error") else ""))
                continue
            config = _flat_config(record.get("config", {}))
            trial_rows.append({
                "trial": trial_id, "sweep": line.get("sweep"), "method": record.get("method"),
                "named_variant": (line.get("params") or {}).get("variant"),
                "seed": config.get("seed"), "config": config, **record.get("summary", {}),
            })
            records[trial_id] = record
            for name, report in record.get("tests", {}).items():
                low, high = report.get("ece_ci") or (None, None)
                set_rows.append({"trial": trial_id, "set": name, "role": _set_role(name, record),
                                 **{key: report.get(key) for key in METRICS}, "ece_ci_low": low, "ece_ci_high": high})
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
    sets = sets.merge(trials[["trial", "variant", "method", "seed"]], on="trial")
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
