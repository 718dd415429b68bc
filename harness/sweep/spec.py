"""The sweep spec (``sweeps/*.yaml``), validated as strictly as run configs, and its trial plan.

A sweep is a base run config, a search space over config keys (plus optional dimensions of named
override sets: ``setting``, a benchmark and model with its budget, and ``variant``, an ablation
row), seeds, a sampler, objectives, a launcher, a study storage and W&B settings. ``grid_points``
enumerates grid x seeds deterministically.
"""

from __future__ import annotations

import hashlib
import itertools
import json
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, model_validator

from harness.core.config import (
    RunConfig,
    StrictModel,
    TrackingConfig,
    apply_overrides,
    build,
    load,
    read_yaml,
)
from harness.core.errors import ConfigError
from harness.core.summary_keys import EPOCH_KEYS, summary_keys

PROFILE_SUFFIXES = (".yaml", ".yml")  # launcher.profile names a file of one's own; otherwise a shipped profile
VARIANT = "variant"  # the search dimension whose values name override sets in ``variants``
SETTING = "setting"  # the search dimension whose values name override sets in ``settings`` (applied before variants)


class Space(StrictModel):
    """One search dimension: ``grid`` (exhaustive list), ``choices`` (categorical), or a ``low``..``high`` range."""

    grid: list[Any] | None = Field(None, description="every value, each run (grid sampler, or fixed values)")
    choices: list[Any] | None = Field(None, description="a categorical the sampler draws from (random, tpe, nsga2)")
    low: float | None = Field(None, description="a range's lower bound (random, tpe, nsga2)")
    high: float | None = Field(None, description="a range's upper bound")
    log: bool = Field(False, description="draw the range on a log scale (needs low > 0)")
    integer: bool = Field(False, description="draw integers from the range")

    @model_validator(mode="after")
    def _one_kind(self) -> "Space":
        kinds = [self.grid is not None, self.choices is not None, self.low is not None or self.high is not None]
        if sum(kinds) != 1:
            raise ValueError("give exactly one of grid, choices, or low and high")
        if self.grid is not None and not self.grid:
            raise ValueError("empty grid")
        if self.choices is not None and not self.choices:
            raise ValueError("empty choices")
        if kinds[2]:
            if self.low is None or self.high is None or not self.low < self.high:
                raise ValueError("a range needs low < high")
            if self.log and self.low <= 0:
                raise ValueError("a log range needs low > 0")
        return self


class Objective(StrictModel):
    """What the sampler optimises (and the pruner, the first one); choose on ID validation keys."""

    key: str = Field(description="a key of the record's summary, e.g. val_acc")
    direction: Literal["maximize", "minimize"] = Field(description="maximize or minimize the key")


class Sampler(StrictModel):
    """How points are chosen: Optuna's samplers."""

    name: Literal["grid", "random", "tpe", "nsga2"] = Field("grid", description="grid: every combination of the "
                                                            "grids; random, tpe, nsga2 (multi-objective): n_trials points")
    seed: int = Field(0, description="the sampler's seed (not the trials')")


class Pruner(StrictModel):
    """Early stopping of trials on their per-epoch validation (turns on eval.every_epoch)."""

    name: Literal["none", "median", "halving", "hyperband"] = Field("none", description="Optuna's pruner; none: "
                                                                     "every trial runs to its end")
    metric: Literal[EPOCH_KEYS] = Field("val_acc", description="a per-epoch key")  # type: ignore[valid-type]
    warmup_epochs: int = Field(1, ge=0, description="epochs before a trial may be pruned")


class Launcher(StrictModel):
    """Where trials run (submitit)."""

    kind: Literal["local", "debug", "slurm"] = Field("local", description="local: processes on this machine; debug: "
                                                     "in the driver's process, one at a time; slurm: one job per trial")
    parallelism: int = Field(1, ge=1, description="trials in flight at once")
    profile: str | None = Field(None, description="slurm: a shipped profile's name (gpu-1, gpu-2, gpu-8) or a .yaml "
                                "file of your own, relative to the spec's folder")
    max_retries: int = Field(2, ge=0, description="re-launches of a trial whose job died or failed")
    warm: bool = Field(True, description="local: each slot is a long-lived worker process that runs trial after "
                       "trial (imports, benchmark and W&B service once); false: a fresh process per trial")


class SweepSpec(StrictModel):
    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$", description="the study's name (letters, digits, _ . -); "
                      "the output dir defaults to outputs/<name>")
    base: dict[str, Any] | str = Field(default_factory=dict, description="a run config mapping, or a YAML path")
    overrides: list[str] = Field(default_factory=list, description="key=value overrides of base, applied to every "
                                 "trial")
    variants: dict[str, list[str]] = Field(default_factory=dict, description="named override sets (ablation rows)")
    settings: dict[str, list[str]] = Field(default_factory=dict, description="named override sets applied before a "
                                           "variant's: a benchmark and model with its budget, crossed with the variants")
    search: dict[str, Space] = Field(default_factory=dict, description="run-config keys (or variant, setting) to "
                                     "search, each with its space")
    seeds: list[int] = Field(default_factory=lambda: [0], min_length=1, description="every point runs once per seed "
                             "(paired seeds across points)")
    variant_seeds: dict[str, list[int]] = Field(
        default_factory=dict, description="seeds of named variants that differ from seeds, e.g. zeroshot: [0] "
        "(a deterministic row needs one trial)")
    sampler: Sampler = Field(default_factory=Sampler)
    n_trials: int | None = Field(None, ge=1, description="parameter points to sample (non-grid samplers)")
    objectives: list[Objective] = Field(default_factory=lambda: [Objective(key="val_acc", direction="maximize")],
                                        min_length=1, description="one or more (multi-objective: nsga2 or tpe)")
    pruner: Pruner = Field(default_factory=Pruner)
    launcher: Launcher = Field(default_factory=Launcher)
    storage: str | None = Field(None, description="null: sqlite in the output dir; journal:PATH; any SQLAlchemy URL")
    out: str | None = Field(None, description="output dir; null: outputs/<name>")
    tracking: TrackingConfig = Field(default_factory=TrackingConfig, description="W&B, passed to every trial (the "
                                     "base's tracking is replaced by it)")
    plugins: list[str] = Field(default_factory=list, description="modules (or .py files, relative to the spec's folder) "
                               "every trial imports first: they register benchmarks, models and methods")

    @model_validator(mode="after")
    def _consistent(self) -> "SweepSpec":
        for dimension, named in ((VARIANT, self.variants), (SETTING, self.settings)):
            if dimension not in self.search:
                continue
            if not named:
                raise ValueError(f"search.{dimension} needs a {dimension}s: mapping of names to overrides")
            values = self.search[dimension].grid or self.search[dimension].choices or []
            unknown = [v for v in values if v not in named]
            if unknown:
                raise ValueError(f"search.{dimension} names {unknown} missing from {dimension}s")
        if self.sampler.name == "grid":
            ranges = [key for key, space in self.search.items() if space.grid is None and space.choices is None]
            if ranges:
                raise ValueError(f"sampler grid cannot search the ranges {ranges}; give grid lists or use random/tpe")
        elif self.n_trials is None:
            raise ValueError(f"sampler {self.sampler.name} needs n_trials")
        elif not self.search:
            raise ValueError(f"sampler {self.sampler.name} has nothing to search")
        if self.pruner.name in ("halving", "hyperband") and len(self.objectives) > 1:
            raise ValueError(f"pruner {self.pruner.name} needs one objective (multi-objective studies: median or none)")
        for seeds in [self.seeds, *self.variant_seeds.values()]:
            if len(set(seeds)) != len(seeds):
                raise ValueError(f"seeds repeat: {seeds}")
            if not seeds:
                raise ValueError("a variant needs at least one seed")
        unknown = sorted(set(self.variant_seeds) - set(self.variants))
        if unknown:
            raise ValueError(f"variant_seeds names {unknown} missing from variants (known: {', '.join(self.variants)})")
        return self

    def seeds_for(self, params: dict[str, Any]) -> list[int]:
        """The seeds a parameter point runs with: its variant's own, else ``seeds``."""
        return self.variant_seeds.get(params.get(VARIANT), self.seeds)


def spec_override(text: str) -> str:
    """An override of the spec; a run-configuration key (``optim.lr=1e-3``) means the base's (``base.optim.lr``),
    except where the spec has a key of that name (``tracking``, which every trial gets) or none fits (``seed``)."""
    root = text.partition("=")[0].split(".")[0]
    if root in SweepSpec.model_fields or root not in RunConfig.model_fields:
        return text
    if root == "seed":
        raise ConfigError(f"override {text!r}: a sweep's trials take their seed from seeds (--set 'seeds=[0,1]')")
    return f"base.{text}"


def load_spec(path: str | Path, overrides: list[str] | None = None) -> SweepSpec:
    """Read, override and validate a sweep spec; then check every run config it can produce."""
    spec = load(SweepSpec, path, [spec_override(text) for text in overrides or []])
    folder = Path(path).parent
    profile = spec.launcher.profile
    if profile and profile.endswith(PROFILE_SUFFIXES) and not Path(profile).is_absolute():
        spec.launcher.profile = str((folder / profile).resolve())
    base_config(spec, folder)
    for params in _probe_points(spec):  # every config the sweep can produce must validate before any job starts
        config = trial_config(spec, params, spec.seeds_for(params)[0], Path("."), folder)
        keys = summary_keys(config)
        for objective in spec.objectives:
            if objective.key not in keys:
                point = ", ".join(f"{k}={v}" for k, v in params.items()) or "the base config"
                raise ConfigError(f"{path}: objectives: {objective.key!r} is not a summary key of the trials of "
                                  f"{point}; valid: {', '.join(keys)}")
    return spec


def _probe_points(spec: SweepSpec) -> list[dict[str, Any]]:
    if spec.sampler.name == "grid":
        return [params for params, seed in grid_points(spec) if seed == spec.seeds_for(params)[0]]
    probes = []
    for key, space in spec.search.items():
        values = space.grid or space.choices or [space.low, space.high]
        probes += [{key: int(v) if space.integer else v} for v in values]
    return probes


def _base_data(spec: SweepSpec, folder: Path) -> dict[str, Any]:
    """The base run config's mapping, with the spec's plugins added to the base's own."""
    if isinstance(spec.base, str):
        base_path = Path(spec.base)
        data = read_yaml(base_path if base_path.is_absolute() else folder / base_path)
    else:
        data = dict(spec.base)
    if spec.plugins:
        named = [str(folder / name) if name.endswith(".py") and not Path(name).is_absolute() else name
                 for name in spec.plugins]
        data["plugins"] = list(dict.fromkeys([*(data.get("plugins") or []), *named]))
    return data


def base_config(spec: SweepSpec, folder: Path) -> RunConfig:
    return build(RunConfig, apply_overrides(_base_data(spec, folder), spec.overrides), source=f"{spec.name} base")


def trial_config(spec: SweepSpec, params: dict[str, Any], seed: int, run_dir: Path, folder: Path) -> RunConfig:
    """The run config of one trial: base ⊕ overrides ⊕ setting ⊕ variant ⊕ searched params ⊕ seed and run dir."""
    overrides = list(spec.overrides)
    if SETTING in params:
        overrides += spec.settings[params[SETTING]]
    if VARIANT in params:
        overrides += spec.variants[params[VARIANT]]
    overrides += [f"{key}={json.dumps(value)}" for key, value in params.items() if key not in (VARIANT, SETTING)]
    overrides += [f"seed={seed}", f"run_dir={run_dir}"]
    overrides += [f"tracking.{key}={json.dumps(value)}" for key, value in spec.tracking.model_dump().items()]
    if spec.pruner.name != "none":
        overrides.append("eval.every_epoch=true")  # the pruner reads per-epoch validation values
    data = apply_overrides(_base_data(spec, folder), overrides)
    label = ", ".join(f"{k}={v}" for k, v in params.items())
    return build(RunConfig, data, source=f"{spec.name} trial ({label})")


def grid_points(spec: SweepSpec) -> list[tuple[dict[str, Any], int]]:
    """Every (params, seed) of a grid sweep, in a fixed order: the grid's product, each with every seed."""
    keys = list(spec.search)
    values = [spec.search[k].grid if spec.search[k].grid is not None else spec.search[k].choices for k in keys]
    points = [dict(zip(keys, combo)) for combo in itertools.product(*values)]
    return [(params, seed) for params in points for seed in spec.seeds_for(params)]


def point_key(params: dict[str, Any], seed: int) -> str:
    """A stable name of one trial point, stored in the study to find it again on resume."""
    items = ", ".join(f"{k}={params[k]!r}" for k in sorted(params))
    return f"{items} | seed={seed}"


def run_slug(params: dict[str, Any], seed: int) -> str:
    """The run directory name of a point (``OUT/runs/<slug>``), the same for every engine and driver."""
    return hashlib.sha256(point_key(params, seed).encode()).hexdigest()[:12]
