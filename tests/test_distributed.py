"""Two processes on halves of a batch (gloo, DDP) give the loss and gradients of one process on the whole batch;
so do micro-batches (``optim.accum_steps``), in one process and in two.

The workers run the real training step (``Trainer.train_step``) of the tiny random CLIP on a
small synthetic benchmark, for a FLYP-style config (label smoothing, same-class positives), a
CaRot-style one (plus orthogonality, cross-norm and distillation from a perturbed teacher copy)
and the cross-entropy stages of FT (image tower and head) and LP (head), and write the loss terms and every parameter's gradient; the test compares them with one
in-process run on the whole batch. Batches come from tensors in memory (each rank slices its half)
or, as for ImageNet, from a loader over a dataset read item by item (each rank samples its share of
the epoch's permutation and the labels are gathered). Run as a script, this file is the worker.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from gloo_workers import spawn_workers
from gradients import assert_gradients_match
from item_sets import ItemByItem

from harness.core.config import load_run_config
from harness.data import Benchmark, ImageSet
from harness.trial.callbacks import TrainCallbacks
from harness.trial.distributed import (
    SINGLE_PROCESS,
    DistributedEnvironment,
    destroy_process_group,
    environment_from_env,
    gather_features,
    gather_objects,
    init_process_group,
    local_rows,
)
from harness.trial.trainer import Trainer

BATCH = 8
# float32 throughout; the two computations differ only in summation order (DDP's all-reduce, the
# gathered matmuls): observed |diff| <= 3e-6 of each gradient tensor's largest entry, losses equal.
# A wrong gather is off by 50% (test_a_plain_all_gather_gets_the_gradients_wrong).
RTOL, ATOL = 1e-4, 1e-6
CONTRASTIVE_CASES = {
    "flyp": ["method=flyp", "loss.label_smoothing=0.1", "loss.same_class_positives=true"],
    "carot": ["method=carot", "loss.label_smoothing=0.1", "loss.same_class_positives=true", "loss.oc_weight=0.2",
              "loss.cross_weight=0.05", "loss.sd_weight=1.5", "ema.period=1"],
}
# cross-entropy: each process's mean over its rows, averaged by DDP (ft: the image tower and the head; lp: the head)
CASES = CONTRASTIVE_CASES | {"ft": ["method=ft", "loss.label_smoothing=0.1"], "lp": ["method=lp"]}
SOURCES = ("tensors", "loader")
ACCUM_STEPS = 4  # 2 processes: one image per micro-batch, and some micro-batches without a caption of their own
WORKER_TIMEOUT_S = 120


def _benchmark() -> Benchmark:
    """16 random 32x32 images of 4 classes (so batches hold same-class pairs), 3 caption templates."""
    generator = torch.Generator().manual_seed(1)
    images = torch.randint(0, 256, (16, 32, 32), dtype=torch.uint8, generator=generator)
    train = ImageSet(images, torch.arange(16) % 4)
    return Benchmark(
        name="synthetic", classnames=["zero", "one", "two", "three"],
        templates=["a photo of {}.", "the digit {}", "{}"], zeroshot_templates=["the digit {}"],
        pretrain=train, train=train, val=train, tests={"id": train}, id_test="id",
    )


def _loader_benchmark() -> Benchmark:
    benchmark = _benchmark()
    benchmark.train = ItemByItem(benchmark.train)
    return benchmark


class _Record(TrainCallbacks):
    def __init__(self) -> None:
        self.losses: dict[str, float] = {}

    def on_step(self, step: int, losses: dict[str, float], lr: float) -> None:
        self.losses = losses


def _plain_gather(x: torch.Tensor) -> torch.Tensor:
    """The naive gather: a non-differentiable all_gather with this rank's rows put back (wrong by 1/W)."""
    env = environment_from_env()
    parts = [torch.empty_like(x) for _ in range(env.world_size)]
    torch.distributed.all_gather(parts, x.detach().contiguous())
    parts[env.rank] = x
    return torch.cat(parts)


def one_step(case: str, env: DistributedEnvironment, run_dir: Path, gather: str = "exact", source: str = "tensors",
             accum_steps: int = 1) -> dict:
    """One real training step of ``case``; its loss terms (main process), every parameter's gradient and the EMA
    teacher's weights after the step's update (CaRot)."""
    config = load_run_config(None, [*CASES[case], "model.name=digit-vit-t", "model.pretrained=null",
                                    f"optim.batch_size={BATCH}", "optim.epochs=1", "data.num_workers=0",
                                    f"optim.accum_steps={accum_steps}", f"run_dir={run_dir}"])
    torch.manual_seed(0)  # the same random init on every process and in the reference
    callbacks = _Record()
    benchmark = _benchmark() if source == "tensors" else _loader_benchmark()
    trainer = Trainer(config, benchmark, run_dir, callbacks, env)
    if gather == "plain":
        trainer.gather = _plain_gather
    if trainer.teacher is not None:  # a teacher equal to the student gives the distillation term no gradient
        generator = torch.Generator().manual_seed(2)
        with torch.no_grad():
            for param in trainer.teacher.model.parameters():
                param.add_(0.05 * torch.randn(param.shape, generator=generator))
    stage = trainer.method.stages[0]
    optimizer = trainer.make_optimizer(stage)
    trainer.model.train()
    trainer.train_step(stage, optimizer, 0, trainer.total_steps)
    named = [*trainer.model.named_parameters(), *(("head." + n, p) for n, p in trainer.head.named_parameters())]
    grads = {name: param.grad.detach().clone() for name, param in named if param.grad is not None}
    teacher = {name: value.clone() for name, value in trainer.teacher.model.state_dict().items()} if trainer.teacher else {}
    return {"losses": callbacks.losses, "grads": grads, "teacher": teacher}


def _worker(out_dir: Path, gathers: list[str]) -> None:
    """Each gather mode x each case, in one process group (process start-up dominates the test's time)."""
    env = environment_from_env()
    init_process_group(env)
    try:
        results = {gather: {case: one_step(case, env, out_dir / f"run-{gather}-{case}-{env.rank}", gather)
                            for case in (CASES if gather == "exact" else CONTRASTIVE_CASES)}
                   for gather in gathers if gather in ("exact", "plain")}
        if "accum" in gathers:
            results["accum"] = {case: one_step(case, env, out_dir / f"run-accum-{case}-{env.rank}",
                                               accum_steps=ACCUM_STEPS) for case in CASES}
        if "exact" in gathers:
            results["loader"] = {case: one_step(case, env, out_dir / f"run-loader-{case}-{env.rank}", source="loader")
                                 for case in CASES}
        results["objects"] = gather_objects([f"rank {env.rank}"] * (env.rank + 1))  # e.g. the teacher's caption logs
        torch.save(results, out_dir / f"rank{env.rank}.pt")
    finally:
        destroy_process_group()


def _spawn_two(out_dir: Path, gathers: str = "exact,plain,accum") -> list[dict]:
    """Run this file as 2 worker processes (gloo on CPU) and read what each wrote."""
    spawn_workers(__file__, [str(out_dir), gathers], WORKER_TIMEOUT_S)
    return [torch.load(out_dir / f"rank{rank}.pt", weights_only=True) for rank in range(2)]


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("single")
    return {case: one_step(case, SINGLE_PROCESS, root / case) for case in CASES}


@pytest.fixture(scope="module")
def accumulated(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("single-accum")
    return {case: one_step(case, SINGLE_PROCESS, root / case, accum_steps=ACCUM_STEPS) for case in CASES}


@pytest.fixture(scope="module")
def loader_reference(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("single-loader")
    return {case: one_step(case, SINGLE_PROCESS, root / case, source="loader") for case in CASES}


@pytest.fixture(scope="module")
def two_processes(tmp_path_factory) -> list[dict]:
    return _spawn_two(tmp_path_factory.mktemp("ddp"))


def _max_difference(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    return max((a[name] - b[name]).abs().max().item() for name in a)


@pytest.mark.slow
@pytest.mark.parametrize("source", SOURCES)
@pytest.mark.parametrize("case", list(CASES))
def test_two_processes_match_one_on_the_whole_batch(case, source, reference, loader_reference, two_processes):
    expected = (reference if source == "tensors" else loader_reference)[case]
    rank0, rank1 = [results["exact" if source == "tensors" else "loader"] for results in two_processes]
    assert set(rank0[case]["losses"]) == set(expected["losses"])
    for name, value in expected["losses"].items():
        assert rank0[case]["losses"][name] == pytest.approx(value, rel=RTOL, abs=ATOL), name
    assert rank1[case]["losses"] == {}  # only the main process reports
    for grads in (rank0[case]["grads"], rank1[case]["grads"]):
        assert_gradients_match(grads, expected["grads"], RTOL, ATOL)
    if case == "carot":
        assert expected["grads"]["visual.proj"].abs().max() > 0 and expected["losses"]["sd"] > 0
    trained = {name.split(".")[0] for name in expected["grads"]}
    assert trained == {"ft": {"visual", "head"}, "lp": {"head"}}.get(case, trained)


# AdamW's first step moves each weight by lr·g/(|g| + 1e-8): about ±lr wherever |g| >> 1e-8, so gradients equal
# up to float rounding can still move a near-zero-gradient weight differently, by at most 2·lr (lr = 1e-4 here);
# the teacher takes (1 - m) ≤ 1 of the student. An update per micro-batch would move it 0.05-sized steps.
TEACHER_ATOL = 2 * 1e-4 + 1e-6


@pytest.mark.slow
@pytest.mark.parametrize("processes", [1, 2])
@pytest.mark.parametrize("case", list(CASES))
def test_accumulated_micro_batches_match_one_step_on_the_whole_batch(case, processes, reference, accumulated,
                                                                      two_processes):
    """optim.accum_steps=4: the loss terms, gradients and EMA teacher of one step on the whole batch, in one
    process (micro-batches of 2) and in two under DDP (micro-batches of 1, some without a caption of their own)."""
    expected = reference[case]
    results = [accumulated[case]] if processes == 1 else [rank["accum"][case] for rank in two_processes]
    assert set(results[0]["losses"]) == set(expected["losses"])
    for name, value in expected["losses"].items():
        assert results[0]["losses"][name] == pytest.approx(value, rel=RTOL, abs=ATOL), name
    for result in results:
        assert_gradients_match(result["grads"], expected["grads"], RTOL, ATOL)
        assert set(result["teacher"]) == set(expected["teacher"])
        for name, weights in expected["teacher"].items():
            torch.testing.assert_close(result["teacher"][name], weights, rtol=0, atol=TEACHER_ATOL)
    if case == "carot":
        assert expected["losses"]["sd"] > 0 and expected["grads"]["logit_scale"].abs() > 0


@pytest.mark.slow
def test_every_rank_gathers_every_ranks_objects(two_processes):
    expected = [["rank 0"], ["rank 1", "rank 1"]]
    assert [results["objects"] for results in two_processes] == [expected, expected]
    assert gather_objects("alone") == ["alone"]  # no process group


@pytest.mark.slow
def test_a_plain_all_gather_gets_the_gradients_wrong(reference, two_processes):
    """The check above can fail: without autograd through the gather, feature gradients are 1/W too small."""
    rank0 = two_processes[0]["plain"]
    for case in CONTRASTIVE_CASES:
        expected = reference[case]
        assert rank0[case]["losses"]["contrastive"] == pytest.approx(expected["losses"]["contrastive"], rel=RTOL)
        wrong = [name for name, grad in expected["grads"].items()
                 if not torch.allclose(rank0[case]["grads"][name], grad, rtol=RTOL, atol=ATOL)]
        assert "visual.conv1.weight" in wrong and "text_projection" in wrong
        conv = "visual.conv1.weight"
        assert torch.allclose(rank0[case]["grads"][conv], expected["grads"][conv] / 2, rtol=RTOL, atol=ATOL)
        # parameters reached only directly (the logit scale) are still right
        assert "logit_scale" not in wrong



def test_local_rows_and_single_process_gather():
    env = DistributedEnvironment(rank=1, world_size=2)
    assert local_rows(8, env) == slice(4, 8)
    with pytest.raises(ValueError):
        local_rows(7, env)
    x = torch.randn(3, 2, requires_grad=True)
    assert gather_features(x) is x  # no process group: identity
    assert SINGLE_PROCESS.is_main and not SINGLE_PROCESS.is_distributed


def test_environment_from_standard_variables(monkeypatch):
    for key in ("SUBMITIT_EXECUTOR", "WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(key, raising=False)
    assert environment_from_env() == SINGLE_PROCESS
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("RANK", "3")
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setenv("MASTER_ADDR", "node7")
    monkeypatch.setenv("MASTER_PORT", "12345")
    env = environment_from_env()
    assert (env.rank, env.world_size, env.local_rank, env.master_addr, env.master_port) == (3, 4, 1, "node7", 12345)
    assert not env.is_main and env.is_distributed


if __name__ == "__main__":
    _worker(Path(sys.argv[1]), sys.argv[2].split(","))


def test_environment_of_a_plain_srun_task(monkeypatch):
    """What ``srun -n 2`` sets (checked on the local SLURM cluster); the batch script's own SLURM_NTASKS is not a
    world (no SLURM_STEP_NUM_TASKS there: its one process would wait for tasks that never start)."""
    for key in ("SUBMITIT_EXECUTOR", "WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(key, raising=False)
    batch_script = {"SLURM_PROCID": "0", "SLURM_NTASKS": "2", "SLURM_LOCALID": "0", "SLURM_JOB_ID": "1234",
                    "SLURM_JOB_NODELIST": "node7"}
    for key, value in batch_script.items():
        monkeypatch.setenv(key, value)
    assert environment_from_env() == SINGLE_PROCESS
    step = {"SLURM_PROCID": "3", "SLURM_STEP_NUM_TASKS": "4", "SLURM_LOCALID": "1", "SLURM_STEP_NODELIST": "node7"}
    for key, value in step.items():
        monkeypatch.setenv(key, value)
    assert environment_from_env() == DistributedEnvironment(rank=3, world_size=4, local_rank=1, master_addr="node7",
                                                            master_port=20000 + 1234)
    monkeypatch.setenv("MASTER_PORT", "12345")
    assert environment_from_env().master_port == 12345
