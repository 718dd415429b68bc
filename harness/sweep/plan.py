"""The plan of a sweep: its points (the grid, or each sampled parameter set once per seed), run dirs and configs."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import optuna

from harness.core.config import RunConfig
from harness.sweep.spec import SweepSpec, grid_points, point_key, run_slug, trial_config
from harness.sweep.study import redacted

Point = tuple[dict[str, Any], int]  # (params, seed)


def sampled(trials: list[optuna.trial.FrozenTrial]) -> list[optuna.trial.FrozenTrial]:
    """The trials a sampler drew (each then runs once per seed), oldest first."""
    return sorted((t for t in trials if t.user_attrs.get("sampled") and t.params), key=lambda t: t.number)


class Plan:
    """What a sweep runs, from its spec, the spec's folder (relative paths) and the output dir."""

    def __init__(self, spec: SweepSpec, folder: Path, out: Path):
        self.spec, self.folder, self.out = spec, folder, out

    def planned(self) -> list[Point] | None:
        """Grid sweeps: every point; sampler sweeps: None (points come from the sampler)."""
        return grid_points(self.spec) if self.spec.sampler.name == "grid" else None

    def total(self) -> int:
        planned = self.planned()
        return len(planned) if planned is not None else self.spec.n_trials * len(self.spec.seeds)  # variant_seeds: grid only

    def points(self, trials: list[optuna.trial.FrozenTrial]) -> list[Point]:
        """Every point the sweep must run so far: the grid, or each sampled parameter set once per seed."""
        planned = self.planned()
        if planned is not None:
            return planned
        drawn: dict[str, dict[str, Any]] = {}
        for trial in sampled(trials):
            drawn.setdefault(json.dumps(trial.params, sort_keys=True), trial.params)
        return [(params, seed) for params in drawn.values() for seed in self.spec.seeds_for(params)]

    def run_dir(self, params: dict[str, Any], seed: int) -> Path:
        return self.out / "runs" / run_slug(params, seed)

    def config(self, params: dict[str, Any], seed: int, run_dir: Path) -> RunConfig:
        return trial_config(self.spec, params, seed, run_dir, self.folder)

    def known_configs(self) -> list[RunConfig]:
        """The run configs known before any trial runs: every grid point's, or the base config of a sampler sweep."""
        planned = self.planned() or [({}, self.spec.seeds[0])]
        return [self.config(params, seed, self.out) for params, seed in planned]

    def describe(self, storage: str) -> str:
        spec, planned = self.spec, self.planned()
        lines = [f"sweep {spec.name}: {self.total()} trials, launcher {spec.launcher.kind} "
                 f"(parallelism {spec.launcher.parallelism}{', profile ' + spec.launcher.profile if spec.launcher.profile else ''}), "
                 f"storage {redacted(storage)}, output {self.out}"]
        if planned is None:
            lines.append(f"sampler {spec.sampler.name} (seed {spec.sampler.seed}): {spec.n_trials} points x seeds {spec.seeds}")
            lines += [f"  {key}: {space.model_dump(exclude_none=True)}" for key, space in spec.search.items()]
        else:
            lines += [f"  {point_key(params, seed)}" for params, seed in planned]
        return "\n".join(lines)

