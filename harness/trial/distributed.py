"""Multi-process trials: where this process sits in the job, the process group, and feature gathering.

A trial may run as W processes (one per GPU, e.g. a submitit job with ``tasks_per_node=W``), each
on 1/W of every batch, the trained module wrapped in ``DistributedDataParallel``. The contrastive
and distillation losses compare every image with every caption of the *whole* batch, so each
process gathers all processes' features (``gather_features``) and computes the loss of the whole
batch; with DDP's gradient averaging this gives exactly the loss and gradients of one process on
the whole batch (see ``gather_features``). Cross-entropy (ft, lp, lp-ft) is a mean over rows, so
each process takes the mean over its own rows and DDP's average is the whole batch's gradient.
Evaluation is sharded: each process encodes its share of a set (``shard_rows``) and every process
gets all rows (``gather_rows``). Only the main process (rank 0) logs and writes.
"""

from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass
from typing import Any, Callable

import torch
import torch.distributed as dist

Gather = Callable[[torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class DistributedEnvironment:
    """This process's place in the job; the default is a single process (no process group)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    master_addr: str = "127.0.0.1"
    master_port: int = 29500

    @property
    def is_distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0 alone logs and writes records and checkpoints (the others would duplicate them)."""
        return self.rank == 0


SINGLE_PROCESS = DistributedEnvironment()


def _submitit_job_environment() -> bool:
    try:
        import submitit

        return submitit.JobEnvironment().activated()
    except Exception:  # not installed, or not inside a job
        return False


def environment_from_env() -> DistributedEnvironment:
    """The environment of this process: submitit's inside a submitit job; else torchrun's variables (RANK,
    WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT); else a task of a plain ``srun -n W`` (``_srun_environment``);
    else a single process.

    Inside submitit, ``TorchDistributedEnvironment`` derives ranks from SLURM's variables and a master
    port from the job id; ``export()`` also sets MASTER_ADDR/MASTER_PORT/RANK/WORLD_SIZE so that
    ``init_process_group(init_method="env://")`` works.
    """
    if _submitit_job_environment():
        from submitit.helpers import TorchDistributedEnvironment

        env = TorchDistributedEnvironment().export(set_cuda_visible_devices=False, overwrite=True)
        return DistributedEnvironment(env.rank, env.world_size, env.local_rank, env.master_addr, env.master_port)
    if "WORLD_SIZE" in os.environ:
        return DistributedEnvironment(
            rank=int(os.environ.get("RANK", 0)),
            world_size=int(os.environ["WORLD_SIZE"]),
            local_rank=int(os.environ.get("LOCAL_RANK", 0)),
            master_addr=os.environ.get("MASTER_ADDR", "127.0.0.1"),
            master_port=int(os.environ.get("MASTER_PORT", 29500)),
        )
    return _srun_environment() or SINGLE_PROCESS


def _srun_environment() -> DistributedEnvironment | None:
    """A task of ``srun -n W`` (W > 1): rank SLURM_PROCID, local rank SLURM_LOCALID, W from SLURM_STEP_NUM_TASKS
    (set in job steps only: the batch script's SLURM_NTASKS counts tasks it has not started), the step's first node
    as master (or MASTER_ADDR) on a port derived from the job id (or MASTER_PORT), as submitit derives one."""
    world_size = int(os.environ.get("SLURM_STEP_NUM_TASKS", 1))
    if world_size < 2:
        return None
    nodes = os.environ.get("SLURM_STEP_NODELIST") or os.environ.get("SLURM_JOB_NODELIST", "127.0.0.1")
    port = os.environ.get("MASTER_PORT") or 20000 + int(os.environ.get("SLURM_JOB_ID", 0)) % 20000
    return DistributedEnvironment(rank=int(os.environ["SLURM_PROCID"]), world_size=world_size,
                                  local_rank=int(os.environ.get("SLURM_LOCALID", 0)),
                                  master_addr=os.environ.get("MASTER_ADDR") or _first_host(nodes),
                                  master_port=int(port))


def _first_host(nodelist: str) -> str:
    """The first host of a SLURM node list (``gpu[01-04],gpu07``: gpu01), expanded by ``scontrol`` when compressed."""
    if "[" not in nodelist and "," not in nodelist:
        return nodelist
    hosts = subprocess.run(["scontrol", "show", "hostnames", nodelist], capture_output=True, text=True, check=True)
    return hosts.stdout.split()[0]


def init_process_group(env: DistributedEnvironment, device: torch.device | str = "cpu") -> None:
    """Join the job's process group (nccl on CUDA, gloo on CPU); a no-op for a single process."""
    if not env.is_distributed or dist.is_initialized():
        return
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.set_device(env.local_rank)
    dist.init_process_group(
        backend="nccl" if device.type == "cuda" else "gloo",
        init_method=f"tcp://{env.master_addr}:{env.master_port}",
        rank=env.rank,
        world_size=env.world_size,
    )


def destroy_process_group() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def agree(flag: bool) -> bool:
    """Rank 0's ``flag`` on every rank, so that all ranks take the same branch (e.g. stop when rank 0's pruner says
    so; a rank that stopped alone would leave the others waiting in the next collective forever)."""
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return flag
    value = torch.tensor([int(flag)], device=_collective_device())
    dist.broadcast(value, src=0)
    return bool(value.item())


def _collective_device() -> torch.device:
    """NCCL moves CUDA tensors only; gloo, CPU tensors."""
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def barrier() -> None:
    """Wait for every rank (e.g. until rank 0 has written a checkpoint the others will resume from)."""
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.barrier()


def gather_objects(obj: Any) -> list[Any]:
    """Every rank's picklable ``obj`` in rank order, on every rank (``[obj]`` in a single process)."""
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return [obj]
    gathered: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, obj)
    return gathered


def identity(x: torch.Tensor) -> torch.Tensor:
    """The gather of a single process."""
    return x


def gather_features(x: torch.Tensor) -> torch.Tensor:
    """All ranks' rows of ``x`` concatenated in rank order; gradients flow back to each rank's own rows.

    Uses ``torch.distributed.nn.functional.all_gather``, whose backward *sums* the gradients of
    every rank's copy of the gathered tensor onto the rank that owns the rows. Why this is exact:
    every rank computes the same loss L of the whole batch (same gathered features, same global
    labels). For rank r's features x_r, rank k's loss gives dL/dx_r, so rank r receives
    sum_k dL/dx_r = W·dL/dx_r and its parameter gradient is W·(dL/dx_r)(dx_r/dθ) plus the direct
    terms dL/dθ_direct (logit scale, projection penalties), which every rank computes in full.
    DDP averages over ranks: (1/W)·sum_r W·(dL/dx_r)(dx_r/dθ) + (1/W)·W·dL/dθ_direct
    = sum_r (dL/dx_r)(dx_r/dθ) + dL/dθ_direct = dL/dθ, the single-process gradient.
    (A plain ``all_gather`` with the local rows put back would give rank r only dL/dx_r, i.e.
    1/W of the feature part after averaging.) All ranks must pass the same shape.
    Tensors without grad (the EMA teacher's features) go through a plain all_gather.
    """
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return x
    if x.requires_grad:
        from torch.distributed.nn.functional import all_gather

        return torch.cat(all_gather(x), dim=0)
    parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, x.contiguous())
    return torch.cat(parts, dim=0)


def wrap_for_training(model: torch.nn.Module, env: DistributedEnvironment, device: torch.device) -> torch.nn.Module:
    """The module to run the training forward through: ``model`` itself, or in a multi-process trial its
    ``DistributedDataParallel`` wrapper, which averages the gradients over the processes in backward.

    Call it once what is trained requires grad (and nothing else does): DDP registers those parameters.
    """
    if not env.is_distributed:
        return model
    from torch.nn.parallel import DistributedDataParallel

    return DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)


def local_rows(n: int, env: DistributedEnvironment) -> slice:
    """This rank's contiguous share of a batch of ``n`` rows (``n`` divisible by the world size)."""
    if n % env.world_size:
        raise ValueError(f"a batch of {n} cannot be split evenly over {env.world_size} processes")
    share = n // env.world_size
    return slice(env.rank * share, (env.rank + 1) * share)


def shard_rows(n: int, env: DistributedEnvironment) -> slice:
    """This rank's contiguous share of ``n`` rows to evaluate: ceil(n / W) each, the last ranks fewer (or none)."""
    share = -(-n // env.world_size)
    return slice(min(env.rank * share, n), min((env.rank + 1) * share, n))


def gather_rows(x: torch.Tensor) -> torch.Tensor:
    """Every rank's rows of ``x`` (their numbers may differ) in rank order, on every rank, on ``x``'s device.

    Goes through ``gather_objects`` (pickled CPU tensors), which takes rows of unequal numbers;
    meant for evaluation features, gathered once per set, not for every training step.
    """
    parts = [part for part in gather_objects(x.cpu()) if len(part)]
    return torch.cat(parts).to(x.device)


def mean_over_ranks(values: dict[str, torch.Tensor]) -> dict[str, float]:
    """Each scalar averaged over the ranks, as floats on every rank: the whole batch's cross-entropy from each rank's
    mean over its own rows; terms of the whole batch (contrastive) are the same on every rank and stay so."""
    stacked = torch.stack([value.detach().float() for value in values.values()])
    if dist.is_initialized() and dist.get_world_size() > 1:
        stacked = stacked.to(_collective_device())
        dist.all_reduce(stacked)
        stacked /= dist.get_world_size()
    return dict(zip(values, stacked.tolist()))
