"""A whole trial over two processes (gloo, DDP) ends with the metrics of one process, for the cross-entropy
methods too, and sharded evaluation gathers exactly the features one process computes.

The trials run on the tiny ImageNet tree (images read from files by loader batches): ``ft`` and
``lpft`` (whose second stage re-wraps the model for DDP), each with per-epoch validation,
temperature scaling, WiSE-FT and the spectrum; every rank encodes its share of each set. Run as a
script, this file is the worker.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from gloo_workers import spawn_workers
from imagenet_trees import imagenet_family

from harness.core.config import RunConfig
from harness.core.record import RunRecord
from harness.data import ImageSet
from harness.models.clip import create_model
from harness.trial.distributed import (
    SINGLE_PROCESS,
    DistributedEnvironment,
    destroy_process_group,
    environment_from_env,
    gather_rows,
    init_process_group,
    shard_rows,
)
from harness.trial.set_reports import image_features
from harness.trial.runner import run

METHODS = ("ft", "lpft")
WORKER_TIMEOUT_S = 180
# float32 throughout; the runs differ only in summation order (DDP's all-reduce, batch shapes of the
# evaluation), and the few optimizer steps carry that into the weights
RTOL, ATOL = 1e-4, 1e-5


def _config(method: str, data_root: Path, run_dir: Path) -> RunConfig:
    return RunConfig.model_validate({
        "model": {"name": "digit-vit-t", "pretrained": None},
        "data": {"benchmark": "imagenet", "root": str(data_root), "val_per_class": 1, "num_workers": 0,
                 "templates": "simple"},
        "method": method, "loss": {"label_smoothing": 0.1},
        "optim": {"epochs": 1, "lp_epochs": 1, "batch_size": 4, "warmup_steps": 1, "lr": 1e-3},
        "eval": {"batch_size": 3, "wise_alphas": [0.5], "bootstrap": 0},
        "tracking": {"mode": "disabled"}, "run_dir": str(run_dir),
    })


def _uneven_set() -> ImageSet:
    """15 images: two processes encode 8 and 7 of them."""
    generator = torch.Generator().manual_seed(3)
    return ImageSet(torch.randint(0, 256, (15, 32, 32), dtype=torch.uint8, generator=generator), torch.arange(15) % 4)


def _model() -> torch.nn.Module:
    torch.manual_seed(0)
    return create_model("digit-vit-t", None)[0]


def _worker(method: str, data_root: Path, out_dir: Path) -> None:
    """One job: sharded features (in the first), then one trial, which ends the process group as a job's does."""
    env = environment_from_env()
    init_process_group(env)
    try:
        if method == METHODS[0]:
            features = image_features(_model(), _uneven_set(), batch_size=4, env=env)
            single_row = gather_rows(torch.full((1 - env.rank, 2), float(env.rank)))  # rank 1 has no rows
            torch.save({"features": features, "single_row": single_row}, out_dir / f"features{env.rank}.pt")
        record = run(_config(method, data_root, out_dir / method), progress=False, env=env)
        (out_dir / f"{method}-rank{env.rank}.json").write_text(record.model_dump_json())
    finally:
        destroy_process_group()


@pytest.fixture(scope="module")
def data_root(tmp_path_factory) -> Path:
    return imagenet_family(tmp_path_factory.mktemp("data"))


@pytest.fixture(scope="module")
def two_processes(data_root, tmp_path_factory) -> Path:
    out_dir = tmp_path_factory.mktemp("ddp")
    for method in METHODS:
        spawn_workers(__file__, [method, str(data_root), str(out_dir)], WORKER_TIMEOUT_S)
    return out_dir


def test_shares_cover_the_rows_once_in_order():
    for n, world in ((15, 2), (8, 2), (5, 4), (1, 3)):
        shares = [shard_rows(n, DistributedEnvironment(rank=r, world_size=world)) for r in range(world)]
        assert [i for share in shares for i in range(n)[share]] == list(range(n))
    assert shard_rows(7, SINGLE_PROCESS) == slice(0, 7)


@pytest.mark.slow
def test_sharded_features_equal_one_process(two_processes):
    expected = image_features(_model(), _uneven_set(), batch_size=4)
    for rank in range(2):
        gathered = torch.load(two_processes / f"features{rank}.pt", weights_only=True)
        assert gathered["features"].shape == expected.shape == (15, expected.shape[1])
        torch.testing.assert_close(gathered["features"], expected, rtol=RTOL, atol=1e-6)
        assert gathered["single_row"].tolist() == [[0.0, 0.0]]


@pytest.mark.slow
@pytest.mark.parametrize("method", METHODS)
def test_a_two_process_trial_ends_with_the_metrics_of_one(method, data_root, two_processes, tmp_path):
    torch.set_num_threads(1)  # as the workers: the same summation order in each matmul
    expected = run(_config(method, data_root, tmp_path / method), progress=False)
    assert expected.status == "ok", expected.error
    written = RunRecord.read(two_processes / method / "record.json")
    rank0, rank1 = (RunRecord.model_validate_json((two_processes / f"{method}-rank{rank}.json").read_text())
                    for rank in range(2))
    assert written.status == rank0.status == rank1.status == "ok", written.error
    assert (written.world_size, rank1.rank) == (2, 1)
    assert (two_processes / method / "model.pt").exists() and (two_processes / method / "head.pt").exists()
    for record in (written, rank1):  # every rank computed the same evaluation; rank 0 wrote it
        assert record.timings.steps == expected.timings.steps
        assert set(record.summary) == set(expected.summary)
        for key, value in expected.summary.items():
            assert record.summary[key] == pytest.approx(value, rel=RTOL, abs=ATOL), key
        for name, report in expected.tests.items():
            assert record.tests[name].n == report.n
            assert record.tests[name].acc == report.acc, name
            assert record.tests[name].ece == pytest.approx(report.ece, rel=RTOL, abs=ATOL), name
    assert [h.val_acc for h in written.history] == [h.val_acc for h in expected.history]
    assert [h.val_nll for h in written.history] == pytest.approx([h.val_nll for h in expected.history], rel=RTOL)


if __name__ == "__main__":
    _worker(sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3]))
