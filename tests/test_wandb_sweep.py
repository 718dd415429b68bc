"""The W&B Sweeps engine offline: spec -> sweep config, the offline refusal, and the agent's trial function.

Nothing here contacts W&B: ``wandb.sweep``/``wandb.agent`` are replaced, and the agent's run is emulated the way
``wandb.agents.pyagent`` starts one (sweep params in a YAML file named by WANDB_SWEEP_PARAM_PATH), in disabled mode.
"""

import hashlib
from pathlib import Path

import pytest
import torch
import wandb
import yaml

import harness.trial.pretrain
import harness.trial.runner
from harness.commands.sweep import main as sweep_main
from harness.core.cli import run_cli
from harness.core.errors import ConfigError
from harness.core.record import RunRecord
from harness.core.storage import CACHE_ENV, atomic_torch_save
from harness.models.clip import create_model
from harness.sweep.spec import load_spec, point_key
from harness.sweep.wandb_sweep import AgentTrial, run_wandb_sweep, sweep_config

SWEEPS = Path(__file__).resolve().parent.parent / "sweeps"
TINY = {"model": {"name": "digit-vit-t", "pretrained": None}, "data": {"benchmark": "digitshift-small"},
        "optim": {"epochs": 1}}
CAROT = {**TINY, "method": "carot"}


def _spec(tmp_path, **fields):
    data = {"name": "w", "base": TINY, "search": {"method": {"grid": ["flyp", "ft"]}}, "seeds": [0],
            "tracking": {"mode": "offline"}, **fields}
    path = tmp_path / "w.yaml"
    path.write_text(yaml.safe_dump(data))
    return load_spec(path)


def test_the_ablation_spec_becomes_a_grid_over_variants_and_seeds():
    assert sweep_config(load_spec(SWEEPS / "ablation.yaml")) == {
        "name": "ablation",
        "method": "grid",
        "metric": {"name": "val_acc", "goal": "maximize"},
        "parameters": {
            "variant": {"values": ["zeroshot", "ft", "flyp", "flyp+LS", "flyp+OC", "flyp+SD", "carot"]},
            "seed": {"values": [0, 1, 2, 3, 4]},
        },
    }


def test_every_space_type_translates(tmp_path):
    spec = _spec(tmp_path, base=CAROT, search={
        "loss.same_class_positives": {"choices": [False, True]},
        "eval.batch_size": {"grid": [250, 500]},
        "loss.label_smoothing": {"low": 0.0, "high": 0.2},
        "loss.sd_weight": {"low": 0.1, "high": 3.0, "log": True},
        "optim.epochs": {"low": 1, "high": 3, "integer": True},
        "ema.period": {"low": 1, "high": 40, "log": True, "integer": True},
    }, sampler={"name": "tpe"}, n_trials=5, seeds=[3, 4], objectives=[{"key": "val_nll", "direction": "minimize"}])
    assert sweep_config(spec) == {
        "name": "w",
        "method": "bayes",
        "metric": {"name": "val_nll", "goal": "minimize"},
        "parameters": {
            "loss.same_class_positives": {"values": [False, True]},
            "eval.batch_size": {"values": [250, 500]},
            "loss.label_smoothing": {"distribution": "uniform", "min": 0.0, "max": 0.2},
            "loss.sd_weight": {"distribution": "log_uniform_values", "min": 0.1, "max": 3.0},
            "optim.epochs": {"distribution": "int_uniform", "min": 1, "max": 3},
            "ema.period": {"distribution": "q_log_uniform_values", "min": 1, "max": 40, "q": 1},
            "seed": {"values": [3, 4]},
        },
        "run_cap": 10,
    }
    config = sweep_config(_spec(tmp_path, base=CAROT, search={"loss.sd_weight": {"low": 0.5, "high": 1.5}},
                                sampler={"name": "random"}, n_trials=3))
    assert config["method"] == "random" and config["run_cap"] == 3
    assert config["parameters"]["loss.sd_weight"] == {"distribution": "uniform", "min": 0.5, "max": 1.5}


@pytest.mark.parametrize("path, fields, words", [
    ("tpe.yaml", None, "objectives: W&B sweeps optimise one metric, this spec has 2 (val_acc, val_ece)"),
    ("sensitivity.yaml", None, "this spec has 3"),
    (None, {"sampler": {"name": "nsga2"}, "n_trials": 4}, "sampler.name: nsga2 is multi-objective"),
    (None, {"search": {"seed": {"grid": [1, 2]}}}, "search.seed"),
])
def test_what_w_and_b_cannot_express_is_refused_in_one_line(tmp_path, path, fields, words):
    spec = load_spec(SWEEPS / path) if path else _spec(tmp_path, **fields)
    with pytest.raises(ConfigError, match=words.replace("(", r"\(").replace(")", r"\)")) as caught:
        sweep_config(spec)
    assert "\n" not in str(caught.value)


@pytest.mark.parametrize("mode", ["offline", "disabled"])
def test_run_wandb_sweep_refuses_without_online_tracking(tmp_path, monkeypatch, capsys, mode):
    monkeypatch.setattr(wandb, "sweep", lambda *a, **k: pytest.fail("wandb.sweep must not be called"))
    monkeypatch.setattr(wandb, "agent", lambda *a, **k: pytest.fail("wandb.agent must not be called"))
    spec = _spec(tmp_path, tracking={"mode": mode})
    with pytest.raises(SystemExit) as exited:
        run_cli(lambda _: run_wandb_sweep(spec, tmp_path, tmp_path / "out", count=None))
    assert exited.value.code == 2
    line = capsys.readouterr().err.strip()
    assert line == (f"error: --engine wandb needs tracking.mode=online and a logged-in W&B account (wandb login); "
                    f"this spec has tracking.mode={mode}")


def test_run_wandb_sweep_creates_or_joins_a_sweep_with_the_engines_run_cap(tmp_path, monkeypatch):
    calls = {}
    monkeypatch.setattr(wandb, "sweep", lambda config, **kw: calls.update(sweep=(config, kw)) or "abc123")
    monkeypatch.setattr(wandb, "agent", lambda sweep_id, **kw: calls.update(agent=(sweep_id, kw)))
    spec = _spec(tmp_path, base=CAROT, search={"loss.sd_weight": {"low": 0.5, "high": 1.5}},
                 sampler={"name": "random"}, n_trials=3, seeds=[0, 1],
                 tracking={"mode": "online", "project": "p", "entity": "e"})
    assert run_wandb_sweep(spec, tmp_path, tmp_path / "out", count=None) == 0
    config, where = calls["sweep"]
    assert where == {"entity": "e", "project": "p"} and config["method"] == "random" and config["run_cap"] == 6
    sweep_id, agent = calls["agent"]
    assert sweep_id == "abc123" and agent["count"] == 6 and (agent["entity"], agent["project"]) == ("e", "p")
    calls.clear()
    assert run_wandb_sweep(spec, tmp_path, tmp_path / "out", count=2, sweep_id="joined") == 0
    assert "sweep" not in calls and calls["agent"][0] == "joined" and calls["agent"][1]["count"] == 2


@pytest.mark.slow
def test_a_worker_pretrains_the_embedded_model_before_the_agents_trials(tmp_path, monkeypatch, agent_run,
                                                                       digitshift_small, private_cache):
    """On a cold cache the agent's trials need the embedded weights: the worker builds them first, once, as the
    Optuna engine does. The fake agent hands out every grid point as W&B's controller would and runs the trial."""
    (tmp_path / "cache").mkdir()
    (tmp_path / "cache" / "benchmarks").symlink_to(private_cache / "benchmarks")  # no pre-trained weights in it
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "cache"))
    built = []

    def fake_pretrain(config, out, progress=True):  # random weights stand in for minutes of pre-training
        torch.manual_seed(0)
        atomic_torch_save(create_model(config.model, None)[0].state_dict(), out)
        built.append(config.model)
        return {"zeroshot": {}, "id_test": "mnist"}

    def fake_agent(sweep_id, function, count, **where):
        for seed in sweep_config(spec)["parameters"]["seed"]["values"]:
            agent_run({"method": "flyp", "seed": seed})
            function()

    monkeypatch.setattr(harness.trial.pretrain, "pretrain", fake_pretrain)
    monkeypatch.setattr(wandb, "sweep", lambda config, **kw: "abc123")
    monkeypatch.setattr(wandb, "agent", fake_agent)
    tiny = {"model": {"name": "digit-vit-t", "pretrained": "digitshift"}, "data": {"benchmark": "digitshift-small"},
            "optim": {"epochs": 1, "batch_size": 200}, "eval": {"bootstrap": 0, "teacher": False}}
    spec_path = tmp_path / "w.yaml"
    spec_path.write_text(yaml.safe_dump({"name": "w", "base": tiny, "search": {"method": {"grid": ["flyp"]}},
                                         "seeds": [0], "tracking": {"mode": "online"}}))
    spec = load_spec(spec_path)
    assert sweep_main([str(spec_path), "--engine", "wandb", "--out", str(tmp_path / "out")]) == 0
    assert built == ["digit-vit-t"]  # once, before the trials
    records = [RunRecord.read(path) for path in sorted((tmp_path / "out" / "runs").rglob("record.json"))]
    assert [record.config["seed"] for record in records] == [0]
    assert all(record.status == "ok" and record.config["model"]["pretrained"] == "digitshift" for record in records)


@pytest.fixture
def agent_run(tmp_path, monkeypatch):
    """Start runs as wandb's pyagent does (sweep params in a config file, sweep id in the env), mode disabled."""

    def start(values: dict) -> None:
        params = tmp_path / "sweep-params.yaml"
        params.write_text(yaml.safe_dump({key: {"value": value} for key, value in values.items()}))
        monkeypatch.setenv("WANDB_SWEEP_PARAM_PATH", str(params))
        monkeypatch.setenv("WANDB_SWEEP_ID", "abc123")
        monkeypatch.setenv("WANDB_MODE", "disabled")
        monkeypatch.setenv("WANDB_SILENT", "true")
        wandb.teardown()  # the agent does this before each run, so the new env is read

    yield start
    if wandb.run is not None:
        wandb.run.finish()
    wandb.teardown()  # the env is restored after this, by monkeypatch; the next wandb.init reads it afresh


def _fake_run(seen: list, status: str = "ok"):
    def run(config, callbacks=None, progress=True, env=None, benchmarks=None):
        assert env is not None and not env.is_distributed  # the agent's trial is one process
        seen.append((config, callbacks, wandb.run))
        return RunRecord(status=status, summary={"val_acc": 0.5}, error=None if status == "ok" else "boom",
                         config={}, config_digest="", method=config.method, versions={},
                         paths={"run_dir": config.run_dir, "record": str(Path(config.run_dir) / "record.json")})
    return run


def test_the_agent_trial_runs_the_trial_of_the_agents_point_in_the_agents_run(tmp_path, monkeypatch, agent_run):
    spec = load_spec(SWEEPS / "ablation.yaml", ["tracking.mode=online"])
    seen: list = []
    monkeypatch.setattr(harness.trial.runner, "run", _fake_run(seen))
    agent_run({"variant": "flyp+SD", "seed": 2})
    out = tmp_path / "out"
    trial = AgentTrial(spec, SWEEPS, out)
    trial()
    (config, callbacks, run), = seen
    assert (config.method, config.loss.oc_weight, config.loss.sd_weight, config.ema.period) == ("carot", 0.0, 0.5, "2%")
    assert config.seed == 2 and config.optim.epochs == 8 and config.tracking.mode == "online"
    slug = hashlib.sha256(point_key({"variant": "flyp+SD"}, 2).encode()).hexdigest()[:12]  # as the Optuna engine names it
    assert Path(config.run_dir) == out / "runs" / slug  # the Optuna engine's run dir of the same point
    assert run is not None and run.sweep_id == "abc123" and callbacks.wandb_run is run  # no second run
    assert run.config["variant"] == "flyp+SD" and run.config["seed"] == 2 and run.config["method"] == "carot"
    assert trial.failures == []


def test_the_agent_skips_a_seed_its_variant_does_not_run(tmp_path, monkeypatch, agent_run):
    spec = load_spec(SWEEPS / "ablation.yaml", ["tracking.mode=online"])  # zeroshot runs with seed 0 only
    seen: list = []
    monkeypatch.setattr(harness.trial.runner, "run", _fake_run(seen))
    agent_run({"variant": "zeroshot", "seed": 3})
    trial = AgentTrial(spec, SWEEPS, tmp_path / "out")
    trial()
    assert seen == [] and trial.failures == []
    agent_run({"variant": "zeroshot", "seed": 0})
    AgentTrial(spec, SWEEPS, tmp_path / "out")()
    assert [config.seed for config, _, _ in seen] == [0]


def test_the_agent_trial_normalises_ranges_and_collects_failures(tmp_path, monkeypatch, agent_run):
    spec = _spec(tmp_path, search={"ema.period": {"low": 1, "high": 40, "log": True, "integer": True},
                                   "loss.sd_weight": {"low": 0.1, "high": 3.0, "log": True}},
                 sampler={"name": "tpe"}, n_trials=2, base=CAROT, tracking={"mode": "online"})
    seen: list = []
    monkeypatch.setattr(harness.trial.runner, "run", _fake_run(seen, status="failed"))
    agent_run({"ema.period": 7.0, "loss.sd_weight": 1, "seed": 0})
    trial = AgentTrial(spec, tmp_path, tmp_path / "out")
    trial()
    (config, _, _), = seen
    assert config.ema.period == 7 and config.loss.sd_weight == 1.0
    assert len(trial.failures) == 1 and "ema.period=7, loss.sd_weight=1.0 | seed=0: failed boom" in trial.failures[0]


def test_the_agent_trial_refuses_a_run_from_another_sweep(tmp_path, agent_run):
    spec = load_spec(SWEEPS / "ablation.yaml", ["tracking.mode=online"])
    agent_run({"method": "flyp", "seed": 0})
    with pytest.raises(ConfigError, match=r"lacks \['variant'\]"):
        AgentTrial(spec, SWEEPS, tmp_path / "out")()
