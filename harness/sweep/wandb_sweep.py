"""W&B Sweeps as an alternative engine (``--engine wandb``): the same spec, W&B's controller, the same trial body.

``sweep_config`` translates a spec into a W&B sweep configuration; ``run_wandb_sweep`` registers it and runs a
``wandb.agent`` worker in this process, which calls ``AgentTrial`` once per run the controller hands out. Each
trial runs exactly as in the Optuna engine (``TrialJob``, run dir ``OUT/runs/<slug of the point>``) and logs
to the agent's W&B run. Needs an online, logged-in W&B account; only the translation is testable offline.

Schema facts, from the installed wandb package (0.31) and W&B's docs page "Sweep configuration options":
``wandb/sdk/verify/verify.py`` (check_sweeps) builds a sweep with no ``program`` key for a function agent;
``wandb/sdk/sweeps/scheduler/optuna.py`` (sweep_parameter_to_distribution) lists ``values``, ``int_uniform``,
``uniform``, ``log_uniform_values`` (bounds are the values, not exponents, unlike ``log_uniform``) and
``q_log_uniform_values``; ``wandb/sdk/sweeps/scheduler/ax.py`` says W&B spells a log-scale integer range as
``q_log_uniform_values`` with ``q=1``; ``wandb/sdk/launch/sweeps/scheduler.py`` reads the top-level ``run_cap``.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Mapping

from harness.core.errors import ConfigError, UsageError
from harness.sweep.context import TrialContext
from harness.sweep.spec import (
    SETTING,
    VARIANT,
    Space,
    SweepSpec,
    point_key,
    run_slug,
    trial_config,
)

log = logging.getLogger(__name__)

SEED = "seed"  # the sweep parameter that carries the trial's seed
_METHODS = {"grid": "grid", "random": "random", "tpe": "bayes"}


def _parameter(space: Space) -> dict[str, Any]:
    """One search dimension as a W&B sweep parameter (see the module docstring for where each name comes from)."""
    if space.grid is not None or space.choices is not None:
        return {"values": list(space.grid if space.grid is not None else space.choices)}
    if space.integer:  # int() as the Optuna engine's suggest_int(int(low), int(high))
        low, high = int(space.low), int(space.high)
        if space.log:
            return {"distribution": "q_log_uniform_values", "min": low, "max": high, "q": 1}
        return {"distribution": "int_uniform", "min": low, "max": high}
    return {"distribution": "log_uniform_values" if space.log else "uniform",
            "min": float(space.low), "max": float(space.high)}


def all_seeds(spec: SweepSpec) -> list[int]:
    """Every seed some point runs with: W&B grids cross all of them with every point, and the agent skips the
    (variant, seed) pairs that ``variant_seeds`` leaves out (a deterministic row runs once)."""
    return list(dict.fromkeys([*spec.seeds, *(s for seeds in spec.variant_seeds.values() for s in seeds)]))


def sweep_config(spec: SweepSpec) -> dict[str, Any]:
    """The W&B sweep configuration of a spec; what W&B cannot express is refused (exit 2), never approximated.

    ``variant`` stays a categorical of variant names (``trial_config`` expands it in the agent); ``seed`` is one
    more categorical: grid runs every point with every seed, random/bayes draw one seed per run. Random/bayes
    sweeps stop at ``run_cap`` = n_trials x seeds, the number of trials the Optuna engine would run.
    """
    if spec.sampler.name not in _METHODS:
        raise ConfigError(f"sampler.name: {spec.sampler.name} is multi-objective and W&B sweeps optimise one metric; "
                          "use grid, random or tpe (W&B bayes) with --engine wandb")
    if len(spec.objectives) != 1:
        keys = ", ".join(o.key for o in spec.objectives)
        raise ConfigError(f"objectives: W&B sweeps optimise one metric, this spec has {len(spec.objectives)} ({keys}); "
                          "keep one for --engine wandb")
    if SEED in spec.search:
        raise ConfigError("search.seed: list seeds under seeds:, not in search")
    objective = spec.objectives[0]
    config: dict[str, Any] = {
        "name": spec.name,
        "method": _METHODS[spec.sampler.name],
        # the run summary key: TrialCallbacks.finish writes record["summary"] (val_acc, ...) at the top level
        "metric": {"name": objective.key, "goal": objective.direction},
        "parameters": {**{key: _parameter(space) for key, space in spec.search.items()},
                       SEED: {"values": all_seeds(spec)}},
    }
    if spec.sampler.name != "grid":
        config["run_cap"] = spec.n_trials * len(spec.seeds)
    return config


class AgentTrial:
    """What ``wandb.agent`` calls once per run: the run's config (set by the agent) -> RunConfig -> ``TrialJob``;
    it also collects this worker's failed trials."""

    def __init__(self, spec: SweepSpec, folder: Path, out: Path):
        self.spec, self.folder, self.out = spec, folder, out
        self.failures: list[str] = []  # trials of this worker whose record is not ok

    def point(self, values: Mapping[str, Any]) -> tuple[dict[str, Any], int]:
        """The (params, seed) of a run; numbers normalised so the point key (and run dir) match the Optuna engine's."""
        missing = [key for key in [*self.spec.search, SEED] if key not in values]
        if missing:
            raise ConfigError(f"the W&B run's config lacks {missing}: was the sweep made from spec {self.spec.name!r}?")
        params = {}
        for key, space in self.spec.search.items():
            value = values[key]
            if space.low is not None:  # a range: W&B may hand an integer range back as a float (q_* distributions)
                value = int(round(value)) if space.integer else float(value)
            params[key] = value
        return params, int(values[SEED])

    def __call__(self) -> None:
        import wandb

        from harness.sweep.jobs import TrialJob, threads_per_job

        run = wandb.init(dir=str(self.out))  # the agent's run: its config holds the point; tracking logs to it
        params, seed = self.point(run.config)
        key = point_key(params, seed)
        if seed not in self.spec.seeds_for(params):  # variant_seeds leaves this pair out: nothing to run
            run.summary["skipped"] = f"seed {seed} is not among this variant's seeds {self.spec.seeds_for(params)}"
            run.finish()
            return
        config = trial_config(self.spec, params, seed, self.out / "runs" / run_slug(params, seed), self.folder)
        context = TrialContext(sweep=self.spec.name, wandb_dir=str(self.out), variant=params.get(VARIANT),
                               setting=params.get(SETTING))
        result = TrialJob()(config.model_dump(mode="json"), context, threads_per_job(1))
        if result.status != "ok":
            self.failures.append(f"{key}: {result.status} {result.error or ''} [record: {result.record}]")


def run_wandb_sweep(spec: SweepSpec, folder: Path, out: Path, count: int | None = None,
                    sweep_id: str | None = None) -> int:
    """Create the W&B sweep (or join ``sweep_id``) and run one agent here; 1 when a trial of this worker failed.
    What the trials share (benchmark, pre-trained weights) is built first, as the Optuna engine does.

    ``count`` is this worker's number of runs; None: until the grid is exhausted, or ``run_cap`` (random/bayes).
    Start more workers, here or on other machines, with the printed sweep id. Trials run one at a time, in this
    process, on all its cores; ``launcher`` settings and the ``pruner`` do not apply.
    """
    config = sweep_config(spec)
    if spec.tracking.mode != "online":
        raise UsageError(f"--engine wandb needs tracking.mode=online and a logged-in W&B account (wandb login); "
                         f"this spec has tracking.mode={spec.tracking.mode}")
    import wandb

    from harness.sweep.plan import Plan
    from harness.trial.preflight import prepare_shared

    out.mkdir(parents=True, exist_ok=True)
    if spec.pruner.name != "none":
        log.warning("pruner %s is not applied by --engine wandb", spec.pruner.name)
    prepare_shared(Plan(spec, folder, out).known_configs())  # the embedded model pre-trained before any agent trial
    if sweep_id is None:
        sweep_id = wandb.sweep(config, entity=spec.tracking.entity, project=spec.tracking.project)
    if count is None and spec.sampler.name != "grid":
        count = config["run_cap"]
    trial = AgentTrial(spec, folder, out)
    wandb.agent(sweep_id, function=trial, entity=spec.tracking.entity, project=spec.tracking.project, count=count)
    if trial.failures:
        log.error("failed trials: %s", "; ".join(trial.failures))
        return 1
    return 0
