"""Several drivers sharing one study: each point is claimed once, none is lost (journal file and PostgreSQL)."""

import json
import subprocess
import sys
import time
import uuid
from pathlib import Path

import optuna
import pytest
import yaml

from harness.sweep.spec import grid_points, load_spec, point_key
from harness.sweep.study import open_storage

TINY = {"model": {"name": "digit-vit-t", "pretrained": None}, "data": {"benchmark": "digitshift-small"},
        "optim": {"epochs": 1, "batch_size": 200, "warmup_steps": 2}, "eval": {"batch_size": 500}}

# A driver that only claims points and reports a made-up result at once: the claiming protocol, without training.
CLAIMER = """
import json, sys, time
from pathlib import Path
from harness.sweep.spec import load_spec, point_key
from harness.sweep.driver import Sweep
spec_path, storage, out = Path(sys.argv[1]), sys.argv[2], Path(sys.argv[3])
spec = load_spec(spec_path)
sweep = Sweep(spec, spec_path.parent, out, storage)
study = sweep.open_study()
(out.parent / f"ready-{out.name}").touch()
while not (out.parent / "go").exists():  # start claiming together
    time.sleep(0.01)
claimed = []
while (claim := sweep.claim(study)) is not None:
    trial, params, seed, _ = claim
    claimed.append(point_key(params, seed))
    time.sleep(0.05)  # "run" it, letting the others claim meanwhile
    study.tell(trial, [float(seed)])
print(json.dumps(claimed))
"""


def _write_spec(tmp_path: Path, storage: str, **fields) -> Path:
    data = {"name": f"shared-{uuid.uuid4().hex[:8]}", "base": TINY, "seeds": [0],
            "search": {"method": {"grid": ["flyp", "ft"]}}, "storage": storage,
            "launcher": {"kind": "local", "parallelism": 1}, "tracking": {"mode": "disabled"}, **fields}
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def _storage_url(tmp_path: Path, request) -> str:
    if request.param == "journal":
        return f"journal:{tmp_path / 'shared' / 'study.journal'}"
    return request.getfixturevalue("postgres_url")


@pytest.fixture(params=["journal", "postgresql"])
def shared_storage(tmp_path, request):
    return _storage_url(tmp_path, request)


def _start(args: list[str], tmp_path: Path, n: int) -> list[subprocess.Popen]:
    return [subprocess.Popen([sys.executable, *args[:1], *[a.replace("{i}", str(i)) for a in args[1:]]], cwd=tmp_path,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in range(n)]


def _claimers(tmp_path: Path, path: Path, storage: str, n: int) -> list[list[str]]:
    """Run ``n`` claimers that start claiming at the same moment; the point keys each one took."""
    claimers = _start(["-c", CLAIMER, str(path), storage, str(tmp_path / "out{i}")], tmp_path, n)
    deadline = time.time() + 120
    while len(list(tmp_path.glob("ready-out*"))) < n and time.time() < deadline:
        if any(c.poll() is not None for c in claimers):
            break
        time.sleep(0.05)
    (tmp_path / "go").touch()
    claimed = []
    for claimer in claimers:
        stdout, stderr = claimer.communicate(timeout=300)
        assert claimer.returncode == 0, stderr
        claimed.append(json.loads(stdout))
    assert sum(1 for keys in claimed if keys) >= 2, f"one claimer took everything: {claimed}"
    return claimed


def test_racing_claimers_take_every_grid_point_once(tmp_path, shared_storage):
    path = _write_spec(tmp_path, shared_storage, seeds=[0, 1, 2, 3],
                       search={"method": {"grid": ["flyp", "ft"]}, "loss.label_smoothing": {"grid": [0.0, 0.1, 0.2]}})
    claimed = _claimers(tmp_path, path, shared_storage, 4)
    spec = load_spec(path)
    everything = sorted(point_key(params, seed) for params, seed in grid_points(spec))
    assert sorted(key for keys in claimed for key in keys) == everything  # 24 points, each exactly once
    trials = optuna.load_study(study_name=spec.name, storage=open_storage(shared_storage)).trials
    assert len(trials) == 24 and {t.state.name for t in trials} == {"COMPLETE"}


def test_racing_claimers_sample_exactly_n_trials_per_seed(tmp_path, shared_storage):
    path = _write_spec(tmp_path, shared_storage, seeds=[0, 1], n_trials=5, sampler={"name": "random", "seed": 7},
                       search={"optim.lr": {"low": 1e-5, "high": 1e-3, "log": True}})
    _claimers(tmp_path, path, shared_storage, 3)
    spec = load_spec(path)
    trials = optuna.load_study(study_name=spec.name, storage=open_storage(shared_storage)).trials
    seeds_by_lr: dict[float, list[int]] = {}
    for trial in trials:
        seeds_by_lr.setdefault(trial.params["optim.lr"], []).append(trial.user_attrs["seed"])
    assert len(trials) == 10 and sorted(map(sorted, seeds_by_lr.values())) == [[0, 1]] * 5


@pytest.mark.slow
def test_two_sweep_drivers_share_a_study_end_to_end(tmp_path, private_cache):
    """On a journal; the claims' lock on PostgreSQL is exercised by the racing claimers above."""
    shared_storage = f"journal:{tmp_path / 'shared' / 'study.journal'}"
    path = _write_spec(tmp_path, shared_storage, search={"method": {"grid": ["flyp", "ft"]}})
    drivers = _start(["-m", "harness.sweep", str(path), "--out", str(tmp_path / "out{i}")], tmp_path, 2)
    for driver in drivers:
        _, stderr = driver.communicate(timeout=600)
        assert driver.returncode == 0, stderr[-2000:]
    spec = load_spec(path)
    trials = optuna.load_study(study_name=spec.name, storage=open_storage(shared_storage)).trials
    assert sorted(t.params["method"] for t in trials) == ["flyp", "ft"]
    assert {t.state.name for t in trials} == {"COMPLETE"}
    assert len({t.user_attrs["driver"] for t in trials}) == 2, "both drivers should have run trials"
    for i in range(2):  # each driver's results.jsonl ends complete, with records it can reach
        lines = [json.loads(line) for line in (tmp_path / f"out{i}" / "results.jsonl").read_text().splitlines()]
        assert sorted(line["params"]["method"] for line in lines) == ["flyp", "ft"]
        for line in lines:
            record = json.loads((tmp_path / f"out{i}" / line["record"]).read_text())
            assert record["method"] == line["params"]["method"] and record["status"] == "ok"
