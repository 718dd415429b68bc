"""The Optuna side of a sweep: storages, samplers, pruners, and creating or re-opening a study safely."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import optuna

from harness.core.errors import UsageError
from harness.core.record import TrialOutcome
from harness.sweep.spec import SweepSpec

# What defines a sweep's trials; a study of the same name with another digest is a clash.
_DIGEST_KEYS = ("base", "overrides", "variants", "settings", "search", "seeds", "sampler", "objectives")


def redacted(storage: str) -> str:
    """A storage URL fit for messages: its password replaced by ***."""
    if storage.startswith("journal:"):
        return storage
    try:
        from sqlalchemy.engine import make_url

        return make_url(storage).render_as_string(hide_password=True)
    except Exception:  # not a URL SQLAlchemy can parse: show only its scheme
        return storage.split(":", 1)[0] + ":..."


def default_storage(out: Path) -> str:
    return f"sqlite:///{(out / 'study.db').resolve()}"


def open_storage(storage: str) -> optuna.storages.BaseStorage:
    """``journal:PATH`` -> a JournalFileBackend (shared filesystems); anything else is an SQLAlchemy URL."""
    if storage.startswith("journal:"):
        path = Path(storage.removeprefix("journal:"))
        path.parent.mkdir(parents=True, exist_ok=True)
        return optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(path)))
    try:
        return optuna.storages.RDBStorage(storage, heartbeat_interval=None)
    except Exception as exc:  # SQLAlchemy raises many kinds for bad URLs and unreachable servers
        raise UsageError(f"storage {redacted(storage)!r} is unusable: {type(exc).__name__}: {str(exc).splitlines()[0]}") from exc


def make_sampler(spec: SweepSpec, draw: int = 0) -> optuna.samplers.BaseSampler:
    """The spec's sampler, seeded for the study's ``draw``-th trial.

    Drivers sharing a study take turns to sample (under the claim lock); seeding each draw by its
    trial count keeps them from drawing the same point, and gives the same sequence however many
    drivers run.
    """
    seed = spec.sampler.seed + draw
    if spec.sampler.name == "tpe":
        return optuna.samplers.TPESampler(seed=seed, multivariate=True)
    if spec.sampler.name == "nsga2":
        return optuna.samplers.NSGAIISampler(seed=seed)
    return optuna.samplers.RandomSampler(seed=seed)  # grid points are enqueued; random fills anything else


def make_pruner(name: str, warmup: int) -> optuna.pruners.BasePruner:
    """The Optuna pruner of a spec's ``pruner`` section (the driver and each job build the same one)."""
    if name == "median":
        return optuna.pruners.MedianPruner(n_warmup_steps=warmup)
    if name == "halving":
        return optuna.pruners.SuccessiveHalvingPruner(min_resource=max(1, warmup))
    if name == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=max(1, warmup))
    return optuna.pruners.NopPruner()


def spec_digest(spec: SweepSpec, data_digests: dict[str, str] | None = None) -> str:
    """What defines the sweep's trials: its spec's keys, and the content digests of the benchmark files it reads
    (``{file: digest}``; none for registered benchmarks), so that changed data is not mixed into a study."""
    fields = {k: v for k, v in spec.model_dump(mode="json").items() if k in _DIGEST_KEYS}
    if not fields["settings"]:  # specs without settings keep the digests their studies were created with
        del fields["settings"]
    if data_digests:
        fields["data"] = data_digests
    payload = json.dumps(fields, sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def open_study(spec: SweepSpec, storage: str, backend: optuna.storages.BaseStorage | None = None,
               data_digests: dict[str, str] | None = None) -> optuna.Study:
    """Create the study named after the sweep, or re-open it; a different sweep under the same name, or the same
    sweep on changed data, is refused.

    ``backend``: ``storage`` opened already (``open_storage``), to share it with a ``TrialStore``;
    ``data_digests``: see ``spec_digest``."""
    backend = backend or open_storage(storage)
    directions = [objective.direction for objective in spec.objectives]
    digest = spec_digest(spec, data_digests)
    try:
        existing = optuna.load_study(study_name=spec.name, storage=backend)
    except KeyError:
        existing = None
    except Exception as exc:
        raise UsageError(f"storage {redacted(storage)!r} is unreachable: {type(exc).__name__}: {str(exc).splitlines()[0]}") from exc
    if existing is not None:
        if existing.user_attrs.get("spec_digest") != digest or [d.name.lower() for d in existing.directions] != directions:
            data = " (or its benchmark files' data changed: their content digest differs)" if data_digests else ""
            raise UsageError(f"a different study named {spec.name!r} already exists in {redacted(storage)}{data}; rename "
                             "the sweep or use another storage (nothing was changed)")
    study = optuna.create_study(study_name=spec.name, storage=backend, directions=directions, load_if_exists=True,
                                sampler=make_sampler(spec), pruner=make_pruner(spec.pruner.name, spec.pruner.warmup_epochs))
    if existing is None:
        study.set_user_attr("spec_digest", digest)
    return study


class TrialStore:
    """A study's trials by number, through its storage's public API (``optuna.Study`` does not expose its storage)."""

    def __init__(self, storage: optuna.storages.BaseStorage, study_name: str):
        self.storage = storage
        self.study_id = storage.get_study_id_from_name(study_name)

    def trial_id(self, number: int) -> int:
        return self.storage.get_trial_id_from_study_id_trial_number(self.study_id, number)

    def get(self, number: int) -> optuna.trial.FrozenTrial:
        return self.storage.get_trial(self.trial_id(number))

    def set_user_attr(self, number: int, key: str, value: Any) -> None:
        self.storage.set_trial_user_attr(self.trial_id(number), key, value)


def tell_result(study: optuna.Study, store: TrialStore, spec: SweepSpec, number: int, result: TrialOutcome) -> None:
    """Finish trial ``number`` with a job's result: its status, record, error, log and summary as user attributes,
    then complete (with the objectives' values), pruned or failed. The first result told wins: another driver
    may have adopted and finished the trial already (then this one is dropped)."""
    if store.get(number).state.is_finished():
        return
    attrs = {"status": result.status, "record": result.record, "error": result.error, "log": result.log,
             **{f"summary.{k}": v for k, v in result.summary.items()}}
    try:
        for key, value in attrs.items():
            store.set_user_attr(number, key, value)
    except optuna.exceptions.UpdateFinishedTrialError:  # finished by another driver between the check and now
        return
    if result.status == "ok":
        try:
            study.tell(number, objective_values(spec, result.summary), skip_if_finished=True)
            return
        except KeyError as exc:
            store.set_user_attr(number, "error", str(exc))
    state = optuna.trial.TrialState.PRUNED if result.status == "pruned" else optuna.trial.TrialState.FAIL
    study.tell(number, state=state, skip_if_finished=True)


def objective_values(spec: SweepSpec, summary: dict[str, Any]) -> list[float]:
    missing = [o.key for o in spec.objectives if o.key not in summary]
    if missing:
        raise KeyError(f"objectives {missing} not in the record's summary")
    return [float(summary[o.key]) for o in spec.objectives]
