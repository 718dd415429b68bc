"""Typed, strictly validated configuration for one trial (``RunConfig``).

A config comes from YAML plus dotted command-line overrides
(``optim.lr=3e-5``). Unknown keys, wrong types and out-of-range values raise
``ConfigError`` whose message names the key path, so that a typo in a sweep
never silently runs the default.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Literal, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from harness.errors import ConfigError

METHODS = ("zeroshot", "lp", "ft", "lpft", "flyp", "carot")


class StrictModel(BaseModel):
    """Base of every config section: unknown keys are errors."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, frozen=False)


class ModelConfig(StrictModel):
    name: str = Field("digit-vit-xs", description="open_clip model name, incl. the registered small configs")
    pretrained: str | None = Field(
        "digitshift",
        description=(
            "'digitshift': the embedded small CLIP, built on first use; a path to a state_dict "
            "file; an open_clip pretrained tag; or null for random init"
        ),
    )


class DataConfig(StrictModel):
    benchmark: str = "digitshift"
    root: str | None = Field(None, description="data root for benchmarks read from disk")
    num_workers: int = Field(0, ge=0)


class LossConfig(StrictModel):
    label_smoothing: float = Field(0.0, ge=0.0, lt=1.0)
    oc_weight: float = Field(0.0, ge=0.0, description="lambda_OC, orthogonality of the visual projection")
    sd_weight: float = Field(0.0, ge=0.0, description="lambda_SD, self-distillation from the EMA teacher")
    cross_weight: float = Field(0.0, ge=0.0, description="lambda_cross, ||W_v W_t^T||_F")


class EMAConfig(StrictModel):
    period: int = Field(10, ge=1, description="optimizer steps between EMA teacher updates")
    m_src: float = Field(0.05, ge=0.0, le=1.0)
    m_tar: float = Field(0.9, ge=0.0, le=1.0)
    warmup: float = Field(0.2, ge=0.0, le=1.0, description="fraction of all steps over which m rises")


class OptimConfig(StrictModel):
    lr: float = Field(1e-4, gt=0.0)
    weight_decay: float = Field(0.1, ge=0.0)
    epochs: int = Field(5, ge=1)
    batch_size: int = Field(64, ge=1)
    warmup_steps: int = Field(10, ge=0)
    grad_clip: float | None = Field(None, gt=0.0)


class EvalConfig(StrictModel):
    batch_size: int = Field(256, ge=1)
    n_bins: int = Field(15, ge=1)
    every_epoch: bool = False


class TrackingConfig(StrictModel):
    mode: Literal["offline", "online", "disabled"] = "offline"
    project: str = "carot-harness"
    entity: str | None = None


class RunConfig(StrictModel):
    """Everything one trial needs; the same keys are what sweeps search over."""

    model: ModelConfig = ModelConfig()
    data: DataConfig = DataConfig()
    method: Literal[METHODS] = "zeroshot"  # type: ignore[valid-type]
    loss: LossConfig = LossConfig()
    ema: EMAConfig = EMAConfig()
    optim: OptimConfig = OptimConfig()
    eval: EvalConfig = EvalConfig()
    tracking: TrackingConfig = TrackingConfig()
    seed: int = Field(0, ge=0)
    run_dir: str = "runs/default"

    @model_validator(mode="after")
    def _momentum_rises(self) -> "RunConfig":
        if self.ema.m_src > self.ema.m_tar:
            raise ValueError(f"ema.m_src ({self.ema.m_src}) must not exceed ema.m_tar ({self.ema.m_tar})")
        return self


ConfigT = TypeVar("ConfigT", bound=BaseModel)


def _format_validation_error(err: ValidationError) -> str:
    first = err.errors()[0]
    path = ".".join(str(part) for part in first["loc"]) or "<root>"
    message = first["msg"]
    if first["type"] == "extra_forbidden":
        message = "unknown key"
    elif "input" in first and not isinstance(first["input"], dict):
        message = f"{message} (got {first['input']!r})"
    more = len(err.errors()) - 1
    suffix = f" (+{more} more)" if more else ""
    return f"{path}: {message}{suffix}"


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


def config_hash(config: BaseModel, length: int = 12) -> str:
    """A short stable digest of a config, used to key caches."""
    payload = json.dumps(config.model_dump(mode="json"), sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()[:length]
