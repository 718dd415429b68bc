"""Device and precision: autocast changes the forward passes only; misconfigurations are refused up front."""

from __future__ import annotations

import pytest
import torch

from harness.core.config import ComputeConfig, LossConfig
from harness.core.errors import UsageError
from harness.trial.compute import autocast, check_precision, resolve_device
from harness.trial.distributed import SINGLE_PROCESS, DistributedEnvironment
from harness.trial.terms import contrastive_terms, projection_terms

CPU = torch.device("cpu")


def _terms(model, tokenizer, compute: ComputeConfig) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    images = torch.randn(6, 3, 32, 32, generator=generator)
    tokens = tokenizer(["a photo of a zero", "a photo of a one", "a photo of a two"])
    labels = torch.tensor([0, 1, 2, 0, 1, 2])
    loss = LossConfig(label_smoothing=0.1, oc_weight=0.2, cross_weight=0.05)
    with autocast(compute, CPU):
        image_rows, text_rows, scale = model(images, tokens)[:3]
        return contrastive_terms(image_rows, text_rows[labels], scale, labels, loss) | projection_terms(model, loss)


def test_bf16_autocast_keeps_the_weight_penalties_exact_and_the_loss_close(tiny_model):
    model, tokenizer = tiny_model
    full = _terms(model, tokenizer, ComputeConfig(precision="fp32"))
    half = _terms(model, tokenizer, ComputeConfig(precision="bf16"))
    assert all(value.dtype == torch.float32 for value in half.values())
    assert half["oc"].item() == full["oc"].item() and half["cross"].item() == full["cross"].item()
    assert half["contrastive"].item() == pytest.approx(full["contrastive"].item(), rel=2e-2)
    assert half["contrastive"].item() != full["contrastive"].item()  # the forward pass did run in bf16


def test_fp16_needs_cuda():
    with pytest.raises(UsageError, match="fp16 needs a CUDA device"):
        check_precision(ComputeConfig(precision="fp16"), CPU)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without CUDA")
def test_cuda_requested_without_cuda_is_refused_and_auto_falls_back_to_cpu():
    with pytest.raises(UsageError, match="CUDA is not available"):
        resolve_device(ComputeConfig(device="cuda"), SINGLE_PROCESS)
    assert resolve_device(ComputeConfig(device="auto"), DistributedEnvironment(rank=1, world_size=2, local_rank=1)) == CPU
