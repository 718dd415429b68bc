"""Typed, strictly validated configuration for one trial (``RunConfig``).

A config comes from YAML plus dotted command-line overrides
(``optim.lr=3e-5``). Unknown keys, wrong types and out-of-range values raise
``ConfigError`` whose message names the key path, so that a typo in a sweep
never silently runs the default.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from harness.core.errors import ConfigError
from harness.core.methods import CAROT_TERMS, METHODS
from harness.core.plugins import load_plugins


class StrictModel(BaseModel):
    """Base of every config section: unknown keys are errors."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, frozen=False)


class ModelConfig(StrictModel):
    """Which CLIP, with which starting weights."""

    name: str = Field("digit-vit-xs", description="open_clip model name, incl. the registered small configs")
    pretrained: str | None = Field(
        "digitshift",
        description=(
            "a benchmark with a pre-training pool (digitshift, iconshift, or a benchmark file with "
            "splits.pretrain): the embedded small CLIP pre-trained on it, built on first use; a path to a "
            "state_dict file; an open_clip pretrained tag; or null for random init"
        ),
    )


BENCHMARK_FILE_SUFFIXES = (".yaml", ".yml")


def is_benchmark_file(benchmark: str) -> bool:
    """Whether ``data.benchmark`` names a benchmark file (a path ending .yaml/.yml) rather than a registered name."""
    return benchmark.endswith(BENCHMARK_FILE_SUFFIXES)


def benchmark_label(benchmark: str) -> str:
    """A short name for file names and tables: a registered name as it is, a benchmark file by its stem."""
    return Path(benchmark).stem if is_benchmark_file(benchmark) else benchmark


class DataConfig(StrictModel):
    """The benchmark: its training, validation and test sets, and how they are read."""

    benchmark: str = Field(
        "digitshift", description="a registered benchmark (digitshift, digitshift-small, iconshift, imagenet, or a plugin's), or "
        "the path of a benchmark file (.yaml; docs/benchmark-files.md), made absolute against the current directory")
    root: str | None = Field(None, description="data root for benchmarks read from disk (digitshift ignores it; a "
                             "benchmark file's relative paths resolve against it instead of the file's root)")
    num_workers: int | None = Field(
        None, ge=0, description="loader processes for benchmarks read from disk; null: CPUs - 1, at most 16"
    )
    val_per_class: int = Field(
        10, ge=1, description="imagenet: training images per class held out as the ID validation split"
    )
    templates: Literal["openai", "simple"] = Field(
        "openai", description="imagenet: caption and zero-shot templates, open_clip's 80 OpenAI ones or its 7 simple ones"
    )
    captions: str | None = Field(
        None, description="imagenet: a CSV/TSV of (filepath, caption) to fine-tune contrastive methods on instead of "
        "template captions; rows showing validation images are dropped",
    )
    objectnet_border: int = Field(1, ge=0, description="imagenet: pixels cropped off each side of ObjectNet images")
    objectnet_pooling: Literal["max", "logsumexp"] = Field(
        "max", description="imagenet: how the logits of an ObjectNet class with several ImageNet ids are pooled"
    )

    @field_validator("benchmark")
    @classmethod
    def _absolute_file(cls, benchmark: str) -> str:
        """A benchmark file is named by its absolute path: the same in every job, whatever its working directory."""
        return os.path.abspath(benchmark) if is_benchmark_file(benchmark) else benchmark


class LossConfig(StrictModel):
    """Unset keys take the method's defaults (carot: the paper's weights); see ``harness.core.methods``."""

    label_smoothing: float = Field(0.0, ge=0.0, lt=1.0, description="epsilon of label smoothing, in both directions "
                                   "of the contrastive loss (cross-entropy methods: of the classification loss)")
    oc_weight: float = Field(0.0, ge=0.0, description="lambda_OC, orthogonality of the visual projection")
    sd_weight: float = Field(0.0, ge=0.0, description="lambda_SD, self-distillation from the EMA teacher")
    cross_weight: float = Field(0.0, ge=0.0, description="lambda_cross, ||W_v W_t^T||_F")
    same_class_positives: bool = Field(
        False, description="treat same-class pairs in a batch as positives (the released loss treats them as negatives)"
    )


EMAPeriod = Annotated[int, Field(ge=1)] | Annotated[str, Field(pattern=r"^\d+(\.\d+)?%$")]


class EMAConfig(StrictModel):
    """The EMA teacher of self-distillation. ``period`` is a number of optimizer steps, or a share of
    all steps such as ``"2%"`` (released: 500 of ~25k ImageNet steps, 2%), which means the same at
    every budget; see ``period_steps``."""

    period: EMAPeriod = Field("2%", description="optimizer steps between EMA teacher updates, or a share of all "
                              "steps such as '2%' (at least 1 step)")
    m_src: float = Field(0.05, ge=0.0, le=1.0, description="EMA momentum m at the first step (teacher <- m teacher + "
                         "(1 - m) student)")
    m_tar: float = Field(0.9, ge=0.0, le=1.0, description="EMA momentum m once the warm-up is over")
    warmup: float = Field(0.2, ge=0.0, le=1.0, description="fraction of all steps over which m rises")

    def period_steps(self, total_steps: int) -> int:
        """The period in optimizer steps for a run of ``total_steps``: a share is rounded, at least 1."""
        if isinstance(self.period, int):
            return self.period
        return max(1, round(float(self.period.rstrip("%")) / 100 * total_steps))


class OptimConfig(StrictModel):
    """AdamW with linear warm-up and cosine decay; batches, epochs and checkpoints."""

    lr: float = Field(1e-4, gt=0.0, description="peak learning rate of AdamW")
    weight_decay: float = Field(0.1, ge=0.0, description="AdamW's decoupled weight decay (see weight_decay_on)")
    epochs: int = Field(5, ge=1, description="passes over the training set (lpft: of its fine-tuning stage)")
    batch_size: int = Field(64, ge=1, description="images per optimizer step, over all processes (the effective batch)")
    accum_steps: int = Field(1, ge=1, description="micro-batches per optimizer step, each process's rows split into "
                             "this many forwards; the loss and gradients are the whole batch's (contrastive too)")
    warmup_steps: int = Field(10, ge=0, description="optimizer steps of linear warm-up before the cosine decay")
    grad_clip: float | None = Field(None, gt=0.0, description="max global gradient norm; null = no clipping")
    weight_decay_on: Literal["all", "matrices"] = Field(
        "all", description="all: every parameter (as the released CaRot code); matrices: open_clip's rule, no decay "
        "on gains, biases, embeddings and the logit scale",
    )
    logit_scale_max: float | None = Field(
        None, gt=1.0, description="clamp the learned logit scale at this value after each step (open_clip: 100); "
        "null: no clamp, as the released CaRot code",
    )
    lp_epochs: int = Field(2, ge=1, description="lpft only: epochs of the linear-probe stage before optim.epochs of FT")
    checkpoint_every: int = Field(50, ge=1, description="optimizer steps between resumable checkpoints")

    @model_validator(mode="after")
    def _micro_batches_split_the_batch(self) -> "OptimConfig":
        if self.batch_size % self.accum_steps:
            raise ValueError(f"batch_size ({self.batch_size}) must be divisible by accum_steps ({self.accum_steps})")
        return self


class EvalConfig(StrictModel):
    """What is measured after training, on the validation and test sets."""

    batch_size: int = Field(256, ge=1, description="images per forward when encoding a set")
    n_bins: int = Field(15, ge=1, description="equal-width confidence bins of the ECE and the reliability diagrams")
    every_epoch: bool = Field(False, description="evaluate the ID validation split after every epoch")
    temperature_scaling: bool = Field(True, description="fit one temperature on ID validation NLL; report both")
    teacher: bool = Field(True, description="also evaluate CaRot's EMA teacher on every set (teacher_* summary keys)")
    wise_alphas: list[Annotated[float, Field(ge=0.0, le=1.0)]] = Field(
        default_factory=list, description="WiSE-FT mixing weights to evaluate (0 = pre-trained, 1 = fine-tuned)"
    )
    wise_ft: Literal["released", "all_weights"] = Field(
        "released", description="contrastive methods: released = blend the image tower and the zero-shot and "
        "fine-tuned heads (as the CaRot/FLYP code); all_weights = blend the whole model, text tower and logit scale "
        "included, and rebuild the head from the blended text tower",
    )
    bootstrap: int = Field(1000, ge=0, description="bootstrap resamples of each test set for the ECE's 95% interval; "
                           "0: neither intervals nor noise floors")
    floor_draws: int = Field(300, ge=2, description="label draws for each set's calibration noise floor (the ECE of "
                             "a perfectly calibrated model with the same confidences)")


class ComputeConfig(StrictModel):
    """Where a trial runs; ``auto`` is this process's GPU (``cuda:LOCAL_RANK``) when CUDA is available."""

    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="auto: this process's GPU (cuda:LOCAL_RANK) "
                                                   "when CUDA is available, else the CPU; cuda: fail without one")
    precision: Literal["fp32", "bf16", "fp16"] = Field(
        "fp32", description="autocast dtype of forward passes (fp16: CUDA only, with loss scaling)"
    )


class TrackingConfig(StrictModel):
    """Weights & Biases: one run per trial, grouped by sweep; the record.json stays the source of truth."""

    mode: Literal["offline", "online", "disabled"] = Field(
        "offline", description="offline: runs written locally (wandb sync uploads them); online: needs wandb login; "
        "disabled: no W&B at all")
    project: str = Field("carot-harness", description="the W&B project")
    entity: str | None = Field(None, description="the W&B entity (user or team); null: your default")


class RunConfig(StrictModel):
    """Everything one trial needs; the same keys are what sweeps search over."""

    plugins: list[str] = Field(
        default_factory=list, description="modules imported before anything else is read (a module name or a .py "
        "file): they register benchmarks, models and methods (docs/plugins.md)")
    model: ModelConfig = ModelConfig()
    data: DataConfig = DataConfig()
    method: str = Field("zeroshot", description="zeroshot, lp, ft, lpft, flyp, carot, or a plugin's method")
    loss: LossConfig = LossConfig()
    ema: EMAConfig = EMAConfig()
    optim: OptimConfig = OptimConfig()
    eval: EvalConfig = EvalConfig()
    compute: ComputeConfig = ComputeConfig()
    tracking: TrackingConfig = TrackingConfig()
    seed: int = Field(0, ge=0, description="the trial's seed: the order of batches, the captions drawn and all other "
                      "randomness of training (a sweep sets it from its seeds)")
    run_dir: str | None = Field(None, description="null: runs/<method>-<config digest>")

    @model_validator(mode="before")
    @classmethod
    def _method_loss_defaults(cls, data: Any) -> Any:
        """Plugins load first (they may register the method); unset loss keys take the method's defaults, so the
        record shows the values really used."""
        if isinstance(data, dict):
            load_plugins(data.get("plugins") or [])
        if isinstance(data, dict) and data.get("method", "zeroshot") in METHODS:
            loss = data.get("loss", {})
            if isinstance(loss, dict):
                defaults = METHODS[data.get("method", "zeroshot")].loss_defaults
                data = {**data, "loss": {**defaults, **loss}}
        return data

    @field_validator("plugins")
    @classmethod
    def _absolute_plugin_files(cls, plugins: list[str]) -> list[str]:
        return [os.path.abspath(name) if name.endswith(".py") else name for name in plugins]

    @field_validator("method")
    @classmethod
    def _known_method(cls, method: str) -> str:
        if method not in METHODS:
            raise ValueError(f"unknown method; available: {', '.join(METHODS)}")
        return method

    @model_validator(mode="after")
    def _consistent(self) -> "RunConfig":
        method = METHODS[self.method]
        if self.ema.m_src > self.ema.m_tar:
            raise ValueError(f"ema.m_src ({self.ema.m_src}) must not exceed ema.m_tar ({self.ema.m_tar})")
        if not method.carot_terms:
            for term in CAROT_TERMS:
                if getattr(self.loss, term):
                    raise ValueError(f"loss.{term} applies only to method carot (method is {self.method})")
        if self.data.captions is not None and method.trains and (
                not method.contrastive_only or self.loss.same_class_positives):
            raise ValueError(f"data.captions: a caption table has no class labels, which {self.method}"
                             f"{' with loss.same_class_positives' if self.loss.same_class_positives else ''} needs")
        if self.compute.precision == "fp16" and self.compute.device == "cpu":  # with auto, the device decides at run time
            raise ValueError("compute.precision=fp16 needs a CUDA device (compute.device is cpu); use bf16 or fp32")
        return self


ConfigT = TypeVar("ConfigT", bound=BaseModel)


def _format_validation_error(err: ValidationError) -> str:
    first = err.errors()[0]
    path = ".".join(str(part) for part in first["loc"])
    message = first["msg"].removeprefix("Value error, ")
    if first["type"] == "extra_forbidden":
        message = "unknown key"
    elif path and "input" in first and not isinstance(first["input"], dict):
        message = f"{message} (got {first['input']!r})"
    more = len(err.errors()) - 1
    suffix = f" (+{more} more)" if more else ""
    return f"{path}: {message}{suffix}" if path else f"{message}{suffix}"


def parse_override(text: str) -> tuple[list[str], Any]:
    """Split ``a.b.c=value`` into its key path and a YAML-typed value."""
    key, sep, raw = text.partition("=")
    if not sep or not key or any(not part for part in key.split(".")):
        raise ConfigError(f"override {text!r}: expected key.path=value")
    try:
        value = yaml.safe_load(raw) if raw != "" else ""
    except yaml.YAMLError as exc:
        raise ConfigError(f"override {text!r}: value is not valid YAML ({exc.__class__.__name__})") from exc
    return key.split("."), value


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Return a copy of ``data`` with dotted overrides applied (nested dicts created)."""
    result = json.loads(json.dumps(data))
    for text in overrides:
        path, value = parse_override(text)
        node = result
        for depth, part in enumerate(path[:-1]):
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ConfigError(f"{'.'.join(path[: depth + 1])}: is a value, not a section (override {text!r})")
            node = child
        node[path[-1]] = value
    return result


def read_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML mapping; a missing file, bad YAML or a non-mapping is a ConfigError."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text())
    except FileNotFoundError as exc:
        raise ConfigError(f"{path}: no such file") from exc
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML ({exc.__class__.__name__})") from exc
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of keys, got {type(data).__name__}")
    return data


def build(model: type[ConfigT], data: dict[str, Any], source: str = "config") -> ConfigT:
    """Validate ``data`` into ``model``; errors name the failing key path."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(f"{source}: {_format_validation_error(exc)}") from exc


def load(model: type[ConfigT], path: str | Path | None = None, overrides: list[str] | None = None) -> ConfigT:
    """Load a config of type ``model`` from an optional YAML file plus overrides."""
    data = read_yaml(path) if path is not None else {}
    data = apply_overrides(data, overrides or [])
    return build(model, data, source=str(path) if path is not None else "config")


def load_run_config(path: str | Path | None = None, overrides: list[str] | None = None) -> RunConfig:
    """Load a ``RunConfig`` from YAML plus dotted overrides."""
    return load(RunConfig, path, overrides)


def flatten(mapping: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested config dict -> {"optim.lr": ...}: the dotted keys that overrides, sweeps and W&B use."""
    flat: dict[str, Any] = {}
    for key, value in mapping.items():
        flat |= flatten(value, f"{prefix}{key}.") if isinstance(value, dict) else {f"{prefix}{key}": value}
    return flat


# Keys added after records were first written: left out of the digest while empty, so that existing
# run directories and checkpoints keep their digests.
_LATER_KEYS = ("plugins",)


def _digest(dumped: dict[str, Any], length: int = 12) -> str:
    payload = json.dumps({k: v for k, v in dumped.items() if k not in _LATER_KEYS or v}, sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()[:length]


def config_hash(config: BaseModel, length: int = 12) -> str:
    """A short stable digest of a config, used to key caches."""
    return _digest(config.model_dump(mode="json"), length)


# Keys that change how a trial is watched, not what it computes: between two runs of a sweep, tracking may be
# switched and a pruner added (which turns on per-epoch validation) without making its trials other trials.
_WATCHING_KEYS = {"tracking": None, "eval": ("every_epoch",)}


def trial_digest(config: RunConfig) -> str:
    """The digest of what a trial computes (``config_hash`` without the watching keys): a record or checkpoint
    belongs to a config when it carries this digest (or, written before it existed, the config's full hash)."""
    dumped = config.model_dump(mode="json")
    for section, keys in _WATCHING_KEYS.items():
        dumped[section] = {} if keys is None else {k: v for k, v in dumped[section].items() if k not in keys}
    return _digest(dumped)


def belongs_to(digest: str, config: RunConfig) -> bool:
    """Whether a record's or checkpoint's ``digest`` is ``config``'s trial (see ``trial_digest``)."""
    return digest in (trial_digest(config), config_hash(config))


def resolve_run_dir(config: RunConfig) -> Path:
    """The trial's directory: ``run_dir``, else runs/METHOD-DIGEST (one per distinct config)."""
    return Path(config.run_dir) if config.run_dir else Path("runs") / f"{config.method}-{config_hash(config)}"
