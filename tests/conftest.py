"""Shared fixtures: one private cache per test session, and the embedded benchmarks built into it once."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from harness.core.storage import CACHE_ENV


def pytest_addoption(parser):
    parser.addoption("--backbones", action="store_true",
                     help="also pre-train every embedded backbone on every embedded benchmark (about 13 minutes)")


def pytest_collection_modifyitems(config, items):
    """Tests marked ``backbones`` run only with --backbones: together they pre-train five models from scratch."""
    if config.getoption("--backbones"):
        return
    skip = pytest.mark.skip(reason="pre-trains an embedded backbone; run with --backbones")
    for item in items:
        if "backbones" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session", autouse=True)
def private_cache(tmp_path_factory):
    """Keep tests away from the user's cache: everything built during the session lands here."""
    previous = os.environ.get(CACHE_ENV)
    path = tmp_path_factory.mktemp("cache")
    os.environ[CACHE_ENV] = str(path)
    yield path
    if previous is None:
        os.environ.pop(CACHE_ENV, None)
    else:
        os.environ[CACHE_ENV] = previous


@pytest.fixture(autouse=True)
def torch_threads():
    """A test may set torch's thread count (to match a worker's summation order); the next test gets it back."""
    import torch

    threads = torch.get_num_threads()
    yield threads
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def digitshift(private_cache):
    from harness.data import load_benchmark

    return load_benchmark("digitshift", progress=False)


@pytest.fixture(scope="session")
def digitshift_small(digitshift):
    """digitshift with 200-image test sets: what the trials of the slower tests evaluate on."""
    from harness.data import load_benchmark

    return load_benchmark("digitshift-small", progress=False)


@pytest.fixture(scope="session")
def iconshift_file(private_cache) -> Path:
    """iconshift built once (about 20 s) into the private cache: the path of its benchmark file."""
    from harness.data import iconshift

    return iconshift.built_file(progress=False)


@pytest.fixture(scope="session")
def tiny_model():
    """A randomly initialised small CLIP (no pretraining needed)."""
    import torch

    from harness.models.clip import create_model

    torch.manual_seed(0)
    model, tokenizer = create_model("digit-vit-t", pretrained=None)
    return model.eval(), tokenizer


POSTGRES_ENV = "CAROT_TEST_POSTGRES_URL"
LOCAL_PROFILE = Path(__file__).resolve().parent / "slurm" / "local.yaml"  # the test cluster's SLURM profile


@pytest.fixture(scope="session")
def postgres_url():
    """A PostgreSQL server for shared-storage tests: .ci/run starts one (tests/postgres/start-local-postgres.sh)."""
    url = os.environ.get(POSTGRES_ENV)
    if not url:
        pytest.skip(f"no PostgreSQL server: run tests/postgres/start-local-postgres.sh and set {POSTGRES_ENV} to the "
                    "URL it prints (.ci/run does both)")
    return url


@pytest.fixture(scope="session")
def slurm_cluster() -> Path:
    """The one-node SLURM cluster that tests/slurm/start-local-cluster.sh starts (.ci/run does), as the path of its
    profile (``--profile``); skip without it."""
    if shutil.which("sinfo") is None:
        pytest.skip("no SLURM here: run tests/slurm/start-local-cluster.sh (.ci/run does)")
    states = subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True, timeout=30)
    if states.returncode != 0 or not {"idle", "mixed", "allocated"} & set(states.stdout.split()):
        pytest.skip(f"SLURM is installed but no node is up ({(states.stderr or states.stdout).strip()[:100]}): "
                    "run tests/slurm/start-local-cluster.sh")
    return LOCAL_PROFILE
