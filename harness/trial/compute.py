"""Where a trial's tensors live and in which precision its forward passes run (``compute`` config section)."""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext

import torch

from harness.core.config import ComputeConfig
from harness.core.errors import UsageError
from harness.trial.distributed import DistributedEnvironment

_AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def resolve_device(compute: ComputeConfig, env: DistributedEnvironment) -> torch.device:
    """This process's device: its own GPU (``cuda:LOCAL_RANK``, one process per GPU) or the CPU."""
    if compute.device == "cpu" or (compute.device == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise UsageError("compute.device=cuda but CUDA is not available to this process (use auto or cpu)")
    if env.local_rank >= torch.cuda.device_count():
        raise UsageError(f"process {env.local_rank} of this node has no GPU of its own "
                         f"({torch.cuda.device_count()} visible); run one process per GPU")
    return torch.device("cuda", env.local_rank)


def check_precision(compute: ComputeConfig, device: torch.device) -> None:
    """fp16 needs CUDA (its loss scaler is CUDA's); bf16 autocast also runs on CPUs, slowly on most."""
    if compute.precision == "fp16" and device.type != "cuda":
        raise UsageError(f"compute.precision=fp16 needs a CUDA device (this trial runs on {device.type}); use bf16 or fp32")


def autocast(compute: ComputeConfig, device: torch.device) -> AbstractContextManager:
    """The autocast context of forward passes (none for fp32)."""
    if compute.precision == "fp32":
        return nullcontext()
    return torch.autocast(device.type, dtype=_AUTOCAST_DTYPES[compute.precision])


def grad_scaler(compute: ComputeConfig, device: torch.device) -> torch.amp.GradScaler:
    """Loss scaling for fp16 (small gradients would underflow); a pass-through otherwise."""
    return torch.amp.GradScaler(device.type, enabled=compute.precision == "fp16")
