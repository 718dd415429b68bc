"""The typed, versioned records between the parts: one trial's record.json and one line of a sweep's results.jsonl.

The trainer writes them, and the sweep driver, tracking, pruning and ``analysis`` read them back through
these models only, so a field that is renamed or missing fails where it is read, naming the field.
Every file carries its schema version (docs/record.md lists what each version added); versions in
``READABLE_SCHEMAS`` are read (fields that an older version lacks are None), any other is refused
with a message naming it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError

from harness.core.errors import UsageError
from harness.core.storage import atomic_write_json
from harness.core.summary_keys import STUDENT_KEYS

SCHEMA = 5  # 5: throughput in the timings; 4: benchmark_file and data_digest; 3: typed record, schema in results lines
READABLE_SCHEMAS = (1, 2, 3, 4, 5)  # 1: no ECE intervals/floors, NLL/Brier means, sigma_min_rel; 2: no schema in results lines
_PREFIXES = ("", "ts_", "teacher_")


class UnreadableRecordError(UsageError):
    """A record or results line of a schema this version cannot read, or not a record at all."""


def _known_summary_key(key: str) -> str:
    if key == "ts_temperature" or any(key.removeprefix(p) in STUDENT_KEYS for p in _PREFIXES if key.startswith(p)):
        return key
    raise ValueError(f"unknown summary key {key!r} (keys: {', '.join(STUDENT_KEYS)}, each also prefixed ts_ or teacher_)")


def known_summary(values: dict[str, Any]) -> dict[str, float]:
    """The summary keys among ``values`` (e.g. a W&B run's summary, which holds other keys too)."""
    known = {}
    for key, value in values.items():
        try:
            known[_known_summary_key(key)] = float(value)
        except (ValueError, TypeError):
            continue
    return known


SummaryKey = Annotated[str, AfterValidator(_known_summary_key)]
Summary = dict[SummaryKey, float]


class _Record(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True, ser_json_inf_nan="constants")


class Reliability(_Record):
    """Per equal-width confidence bin; ``confidence``/``accuracy`` are None for an empty bin."""

    lower: list[float]
    upper: list[float]
    count: list[int]
    confidence: list[float | None]
    accuracy: list[float | None]


class SetReport(_Record):
    """Metrics of one model on one evaluation set (metrics.classification_report plus the uncertainty of its ECE)."""

    acc: float
    ece: float
    mce: float
    adaptive_ece: float
    classwise_ece: float
    nll: float
    brier: float
    confidence: float
    n: int
    reliability: Reliability
    ece_ci: tuple[float, float] | None = None
    ece_floor: float | None = None
    ece_floor_sd: float | None = None


class CompactReport(_Record):
    acc: float
    ece: float
    nll: float


class TemperatureScaled(_Record):
    temperature: float
    tests: dict[str, SetReport]


class TeacherReports(_Record):
    tests: dict[str, SetReport]


class WiseFTPoint(_Record):
    alpha: float
    summary: Summary
    tests: dict[str, CompactReport]


class Spectrum(_Record):
    sigma_min: float
    sigma_min_rel: float | None = None  # schema 1 lacks it
    sigma_max: float
    condition_number: float
    effective_rank: float
    singular_values: list[float]


class Spectra(_Record):
    features: str
    pretrained: Spectrum
    finetuned: Spectrum


class EpochMetrics(_Record):
    epoch: int
    step: int
    val_acc: float
    val_ece: float
    val_nll: float


class EpochThroughput(_Record):
    """One epoch's training speed, over the steps this process ran of it (a resumed epoch: those after the resume)."""

    epoch: int
    steps: int
    samples_per_s: float  # all processes together: the optimizer's batch per step
    samples_per_s_per_process: float
    data_wait_share: float  # of the steps' time, waiting for the next batch (loading, decoding, copying it over)
    peak_memory_gb: float | None = None  # CUDA: the most this process's tensors held during the epoch


class Timings(_Record):
    train_s: float
    eval_s: float
    steps: int
    step_s_median: float | None
    ema_period_steps: int | None = None
    data_wait_s: float | None = None  # schema < 5 lacks these: time waiting for batches, and computing steps
    compute_s: float | None = None
    samples_per_s: float | None = None  # all processes, over every step this process ran
    throughput: list[EpochThroughput] = []


class Paths(_Record):
    run_dir: str
    record: str
    error: str | None = None
    model: str | None = None
    head: str | None = None
    teacher: str | None = None


Status = Literal["running", "ok", "failed", "pruned"]


class RunRecord(_Record):
    """What one trial produces: record.json. docs/record.md documents every field."""

    schema_version: int = Field(SCHEMA, alias="schema")
    status: Status
    error: str | None = None
    config: dict[str, Any]
    config_digest: str
    method: str
    versions: dict[str, str | None]
    git_commit: str | None = None
    paths: Paths
    rank: int = 0
    world_size: int = 1
    benchmark: str | None = None
    benchmark_file: str | None = None  # the benchmark file read (absolute path), for a benchmark described by a file
    data_digest: str | None = None  # its content digest: class names, templates, every split's files, sizes and labels
    id_test: str | None = None
    ood_tests: list[str] = []
    device: str | None = None
    resumed_from_step: int | None = None
    failed_at_step: int | None = None
    pruned_at_step: int | None = None
    tests: dict[str, SetReport] = {}
    temperature_scaled: TemperatureScaled | None = None
    teacher: TeacherReports | None = None
    wise_ft: list[WiseFTPoint] = []
    spectrum: Spectra | None = None
    summary: Summary = {}
    history: list[EpochMetrics] = []
    timings: Timings | None = None

    def write(self, path: Path) -> Path:
        return atomic_write_json(self.model_dump(mode="json", by_alias=True), path)

    @classmethod
    def read(cls, path: Path) -> RunRecord:
        """Read ``path`` (FileNotFoundError when missing); an unreadable schema or content raises UnreadableRecordError."""
        return _parse(cls, path.read_text(), str(path))


class TrialOutcome(_Record):
    """What a trial's job hands its sweep driver: the status and summary of its record, or how the job died."""

    status: Status
    summary: Summary = {}
    error: str | None = None
    record: str | None = None  # path of the record.json
    log: str | None = None  # the traceback file of a failed trial, or the job's stderr

    @classmethod
    def of(cls, record: RunRecord) -> TrialOutcome:
        return cls(status=record.status, summary=record.summary, error=record.error, record=record.paths.record,
                   log=record.paths.error)

    @classmethod
    def failed(cls, error: str, log: str | None = None) -> TrialOutcome:
        return cls(status="failed", error=error, log=log)


class ResultLine(_Record):
    """One finished trial of a sweep: a line of results.jsonl (append-only; the last line of a trial wins)."""

    schema_version: int = Field(SCHEMA, alias="schema")
    trial: int
    state: str  # the Optuna trial state: COMPLETE, PRUNED, FAIL
    point: str | None = None  # the point's key (params and seed) in the study
    params: dict[str, Any]
    seed: int | None = None  # None only for a trial whose driver died before it set one
    values: list[float] | None = None
    status: str | None = None  # the record's status
    error: str | None = None
    summary: Summary = {}
    record: str | None = None  # path of the trial's record.json, relative to the sweep's output directory

    def dumps(self) -> str:
        return json.dumps(self.model_dump(mode="json", by_alias=True))

    @classmethod
    def parse(cls, text: str, where: str) -> ResultLine:
        return _parse(cls, text, where, default_schema=2)  # schema-2 lines carried no version


def _parse(model: type[Any], text: str, where: str, default_schema: int | None = None) -> Any:
    try:
        raw = json.loads(text)
    except json.JSONDecodeError as exc:
        raise UnreadableRecordError(f"{where}: not valid JSON ({exc.msg})") from exc
    if not isinstance(raw, dict):
        raise UnreadableRecordError(f"{where}: not a JSON object")
    schema = raw.setdefault("schema", default_schema)
    if schema not in READABLE_SCHEMAS:
        raise UnreadableRecordError(f"{where}: schema {schema} cannot be read by this version of carot-harness "
                                    f"(it reads schemas {', '.join(map(str, READABLE_SCHEMAS))})")
    try:
        return model.model_validate(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        field = ".".join(map(str, first["loc"]))
        raise UnreadableRecordError(f"{where}: schema {schema} record with a bad field {field}: {first['msg']} "
                                    f"({exc.error_count()} problem(s))") from exc
