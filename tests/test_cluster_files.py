"""The cluster files: SLURM profiles rendered to sbatch scripts, the ImageNet sweeps and their dry runs.

Nothing here needs SLURM: scripts are rendered by submitit's template and read back line by line.
"""

import inspect
import os
import stat
from pathlib import Path

import pytest
import yaml
from benchmark_files import write_benchmark
from conftest import LOCAL_PROFILE
from imagenet_trees import imagenet_family

from harness.commands.sweep import main as sweep_main
from harness.data import require_known_benchmark
from harness.sweep.jobs import (
    PROFILE_DIR,
    job_threads,
    load_profile,
    make_executor,
    render_sbatch,
    slurm_parameters,
)
from harness.sweep.spec import grid_points, load_spec, trial_config

SWEEPS = Path(__file__).resolve().parent.parent / "sweeps"
IMAGENET_SWEEPS = {"imagenet_ablation.yaml": ["zeroshot", "ft", "flyp", "flyp+LS", "flyp+OC", "flyp+SD", "carot"],
                   "imagenet_baselines.yaml": ["zeroshot", "lp", "ft", "lpft", "flyp", "carot"]}


def _flags(script: str) -> dict[str, str]:
    """``#SBATCH --key=value`` lines as {key: value}."""
    flags = {}
    for line in script.splitlines():
        if line.startswith("#SBATCH --"):
            key, _, value = line.removeprefix("#SBATCH --").partition("=")
            flags[key] = value
    return flags


def _section(script: str, title: str) -> list[str]:
    """The lines after ``# title`` up to the next blank line or the end."""
    lines = script.splitlines() + [""]
    start = lines.index(f"# {title}") + 1
    return lines[start:lines.index("", start)]


LOCAL = str(LOCAL_PROFILE)  # a profile file of one's own (the test cluster's)


@pytest.mark.parametrize("name, gpus", [("gpu-1", 1), ("gpu-2", 2), ("gpu-8", 8), (LOCAL, 0)])
def test_each_profile_renders_the_sbatch_script_it_promises(tmp_path, name, gpus):
    raw = yaml.safe_load((PROFILE_DIR / f"{name}.yaml" if name != LOCAL else LOCAL_PROFILE).read_text())
    script = render_sbatch(name, tmp_path / "jobs", parallelism=4)
    flags = _flags(script)
    assert flags["gpus-per-node"] == str(gpus)
    assert flags["ntasks-per-node"] == str(max(gpus, 1))  # one process per GPU: one DDP trial over all of them
    assert flags["nodes"] == "1"
    assert flags["time"] == str(raw["timeout_min"])  # minutes
    assert flags["signal"] == f"USR2@{raw['signal_delay_s']}"
    assert flags["mem"] == f"{raw['mem_gb']}GB"
    assert flags["cpus-per-task"] == str(raw["cpus_per_task"])
    assert flags.get("partition") == raw.get("partition")
    assert "array" not in flags  # one trial: one job
    assert flags["output"] == str(tmp_path / "jobs" / "%j_0_log.out")
    assert _section(script, "setup") == raw.get("setup", [])
    command = _section(script, "command")
    assert command[0] == "export SUBMITIT_EXECUTOR=slurm"
    assert command[1].startswith("srun ") and command[1].endswith(f"-u -m submitit.core._submit {tmp_path / 'jobs'}")


@pytest.mark.parametrize("name", ["gpu-1", "gpu-2", "gpu-8"])
def test_gpu_profiles_requeue_on_time_out(name):
    profile = load_profile(name)
    assert profile.max_timeouts >= 1 and 60 <= profile.signal_delay_s < profile.timeout_min * 60
    assert profile.cpus_per_task >= 8  # ImageNet data loading for one GPU


def test_a_wave_of_several_trials_is_one_job_array_throttled_by_the_profile(tmp_path):
    flags = _flags(render_sbatch("gpu-8", tmp_path, parallelism=16, array_size=12))
    assert flags["array"] == f"0-11%{load_profile('gpu-8').array_parallelism}"
    assert flags["output"] == str(tmp_path / "%A_%a_0_log.out")
    assert _flags(render_sbatch("gpu-8", tmp_path, parallelism=3, array_size=3))["array"] == "0-2%3"


def test_the_rendered_script_is_what_the_executor_submits(tmp_path, monkeypatch):
    """submitit's SlurmExecutor needs ``srun`` on PATH to exist at all: a stand-in lets it be built here."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "srun").write_text("#!/bin/sh\nexit 1\n")
    (bin_dir / "srun").chmod(stat.S_IRWXU)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.chdir(tmp_path)  # a relative jobs folder: the executor makes it absolute, and so must the rendering
    for name in ("gpu-8", LOCAL):
        slurm = make_executor("slurm", Path("jobs"), 4, name)._executor
        assert slurm.max_num_timeout == load_profile(name).max_timeouts
        submitted = slurm._make_submission_file_text(slurm._submitit_command_str, "uid")
        assert submitted == render_sbatch(name, Path("jobs"), 4)


def test_submitits_private_sbatch_template_still_takes_what_the_dry_run_passes():
    """render_sbatch goes through submitit's private ``_make_sbatch_string`` (no public form): fail here if it changes."""
    from submitit.slurm.slurm import _make_sbatch_string

    accepted = inspect.signature(_make_sbatch_string).parameters
    for name in ("gpu-1", "gpu-8", LOCAL):
        passed = {"command", "folder", "map_count", *slurm_parameters(load_profile(name), 4)}
        assert passed <= set(accepted), sorted(passed - set(accepted))


def test_jobs_take_their_thread_count_from_the_slurm_allocation(monkeypatch):
    monkeypatch.delenv("SLURM_CPUS_PER_TASK", raising=False)
    assert job_threads(3) == 3
    monkeypatch.setenv("SLURM_CPUS_PER_TASK", "12")
    assert job_threads(3) == 12


@pytest.mark.parametrize("path", sorted(SWEEPS.glob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_sweep_validates_with_registered_benchmarks(path, tmp_path):
    # a spec for the user's own data names a placeholder benchmark file: give it one
    placeholder = ["base.data.benchmark=" + str(write_benchmark(tmp_path).file)] if path.name == "file_ablation.yaml" else []
    spec = load_spec(path, placeholder)
    points = grid_points(spec) if spec.sampler.name == "grid" else [({}, spec.seeds[0])]
    for params, seed in points:
        require_known_benchmark(trial_config(spec, params, seed, Path("."), SWEEPS).data.benchmark)
    if spec.launcher.kind == "slurm":
        load_profile(spec.launcher.profile)


# (lambda_OC, lambda_SD, lambda_cross, label smoothing) of the rows that differ in CaRot's components
LOSS_ROWS = {"flyp": (0.0, 0.0, 0.0, 0.0), "flyp+LS": (0.0, 0.0, 0.0, 0.1), "flyp+OC": (0.2, 0.0, 0.0, 0.0),
             "flyp+SD": (0.0, 1.5, 0.0, 0.0), "carot": (0.2, 1.5, 0.05, 0.1)}
ROW_METHODS = {"flyp+LS": "flyp", "flyp+OC": "carot", "flyp+SD": "carot"}  # other rows are named after their method


@pytest.mark.parametrize("path", IMAGENET_SWEEPS)
def test_imagenet_sweeps_hold_the_papers_settings(path):
    spec = load_spec(SWEEPS / path)
    configs = {params["variant"]: trial_config(spec, params, seed, Path("."), SWEEPS) for params, seed in grid_points(spec)}
    assert list(configs) == IMAGENET_SWEEPS[path]
    for variant, config in configs.items():
        assert config.method == ROW_METHODS.get(variant, variant)
        assert (config.model.name, config.model.pretrained) == ("ViT-B-16-quickgelu", "openai")
        assert (config.data.benchmark, config.compute.precision) == ("imagenet", "bf16")
        optim = config.optim
        assert (optim.lr, optim.weight_decay, optim.batch_size, optim.epochs, optim.warmup_steps) == (1e-5, 0.1, 512, 10, 500)
        assert config.ema.period == 500
        if variant in LOSS_ROWS:
            loss = config.loss
            assert (loss.oc_weight, loss.sd_weight, loss.cross_weight, loss.label_smoothing) == LOSS_ROWS[variant]
    assert spec.launcher.kind == "slurm" and spec.storage.startswith("journal:") and spec.tracking.mode == "offline"
    moved = load_spec(SWEEPS / path, ["base.data.root=/shared/data"])  # the override the docs give
    assert trial_config(moved, {"variant": "carot"}, 0, Path("."), SWEEPS).data.root == "/shared/data"


@pytest.mark.parametrize("path, args, variants, gpus", [
    ("imagenet_ablation.yaml", ["--profile", "gpu-8"], IMAGENET_SWEEPS["imagenet_ablation.yaml"], 8),
    ("imagenet_baselines.yaml", [], IMAGENET_SWEEPS["imagenet_baselines.yaml"], 1),
])
def test_imagenet_dry_run_prints_plan_and_sbatch_without_slurm_and_creates_nothing(tmp_path, tmp_path_factory,
                                                                                   monkeypatch, capsys,
                                                                                   path, args, variants, gpus):
    root = imagenet_family(tmp_path_factory.mktemp("datasets"), train_per_class=1)  # the dry run checks the layout
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))  # no sbatch, srun or squeue: a laptop
    monkeypatch.chdir(tmp_path)  # the spec's storage and output dir are relative: they would land here
    assert sweep_main([str(SWEEPS / path), "--dry-run", f"--set=base.data.root={root}", *args]) == 0
    out = capsys.readouterr().out
    assert f"{len(variants)} trials, launcher slurm" in out and f"profile gpu-{gpus}" in out
    assert all(f"variant={v!r} | seed=0" in out for v in variants)
    flags = _flags(out)
    assert flags["gpus-per-node"] == flags["ntasks-per-node"] == str(gpus)
    assert flags["array"] == f"0-{len(variants) - 1}%{len(variants)}"  # the whole first wave as one job array
    assert list(tmp_path.iterdir()) == []  # no study, journal, jobs folder or output dir

