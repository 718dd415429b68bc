"""Importing the project changes no process-wide state: a library user (a notebook, another harness) imports any
module and finds its umask, open_clip's model registry, logging, matplotlib's settings, torch's threads and the
environment as they were (the libraries it imports may add warning filters of their own: not checked). Each
change happens where it is needed (a model looked up, a command run)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

_SCRIPT = r"""
import importlib, json, logging, os, pkgutil

umask_calls = []
real_umask = os.umask
os.umask = lambda mask: umask_calls.append(mask) or real_umask(mask)

import matplotlib, open_clip, torch

def state():
    root = logging.getLogger()
    return {
        "open_clip models": sorted(open_clip.list_models()),
        "root logger": [root.level, [type(h).__name__ for h in root.handlers]],
        "matplotlib rcParams": {k: repr(dict.__getitem__(matplotlib.rcParams, k)) for k in matplotlib.rcParams},
        "torch threads": torch.get_num_threads(),
        "environment": dict(os.environ),
    }

before = state()
modules = []
for package in ("harness", "analysis"):
    root = importlib.import_module(package)
    for info in pkgutil.walk_packages(root.__path__, package + "."):
        if not info.name.endswith("__main__"):
            importlib.import_module(info.name)
            modules.append(info.name)
after = state()
changed = {key: [before[key], after[key]] for key in before if before[key] != after[key]}
if umask_calls:
    changed["umask set"] = umask_calls
print(json.dumps({"modules": modules, "changed": changed}))
"""


def test_importing_every_module_changes_no_global_state():
    done = subprocess.run([sys.executable, "-c", _SCRIPT], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout.splitlines()[-1])
    assert {"harness.core.storage", "harness.models.clip", "analysis.figures", "harness.sweep.warm"} <= set(
        report["modules"])
    assert report["changed"] == {}, {key: str(value)[:300] for key, value in report["changed"].items()}
