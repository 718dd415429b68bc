"""A non-editable install (``pip install .``) holds every file the commands read: the SLURM profiles, the embedded
model configs and the benchmark assets are package data, found from any working directory."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_an_installed_copy_runs_the_slurm_dry_run_from_another_directory(tmp_path):
    source = tmp_path / "source"  # built from a copy: setuptools writes build/ into the tree it builds
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    for name in ("harness", "analysis"):
        shutil.copytree(ROOT / name, source / name, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
                    "--target", str(target), str(source)], check=True, capture_output=True, timeout=300)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = os.environ | {"PYTHONPATH": str(target)}  # ahead of the checkout's editable install
    where = subprocess.run([sys.executable, "-c", "import harness, analysis; print(harness.__file__, analysis.__file__)"],
                           cwd=elsewhere, env=env, capture_output=True, text=True, check=True).stdout.split()
    assert all(Path(path).is_relative_to(target) for path in where), where
    assets = {path.relative_to(target / "harness").as_posix() for path in (target / "harness").rglob("*")
              if path.suffix in (".yaml", ".json") or "assets" in path.parts}
    assert {"sweep/profiles/gpu-1.yaml", "sweep/profiles/gpu-2.yaml", "sweep/profiles/gpu-8.yaml",
            "models/configs/digit-vit-xs.json"} <= assets and any(name.startswith("data/assets/") for name in assets)
    done = subprocess.run([sys.executable, "-m", "harness.sweep", str(ROOT / "sweeps" / "smoke.yaml"), "--dry-run",
                           "--launcher", "slurm", "--profile", "gpu-1"],
                          cwd=elsewhere, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "slurm profile gpu-1: per trial 1 process" in done.stdout and "#SBATCH --gpus-per-node=1" in done.stdout
    assert "model digit-vit-t" in done.stdout  # the embedded config, registered from the installed copy
