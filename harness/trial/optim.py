"""Optimizer set-up shared by pretraining and fine-tuning (decay groups, the warm-up + cosine schedule) and the
fine-tuning step (clipping, AdamW on the scaled gradients)."""

from __future__ import annotations

import math
from typing import Iterable, Literal

import torch

DecayOn = Literal["all", "matrices"]


def cosine_with_warmup(step: int, total_steps: int, warmup_steps: int) -> float:
    """Multiplier of the base learning rate: linear warm-up to 1, then cosine decay to 0 at ``total_steps``."""
    if warmup_steps > 0 and step < warmup_steps:
        return (step + 1) / warmup_steps
    remaining = max(1, total_steps - warmup_steps)
    progress = min(1.0, (step - warmup_steps) / remaining)
    return 0.5 * (1.0 + math.cos(math.pi * progress))


def decay_groups(named_parameters: Iterable[tuple[str, torch.nn.Parameter]], weight_decay: float,
                 on: DecayOn = "all") -> list[dict]:
    """AdamW groups. ``all``: decay on every parameter (the released CaRot code: one AdamW over all of
    them); ``matrices``: none on gains, biases, embeddings and the logit scale (open_clip's rule)."""
    decay, no_decay = [], []
    for name, param in named_parameters:
        if not param.requires_grad:
            continue
        exempt = on == "matrices" and (param.ndim < 2 or "embedding" in name or name.endswith("logit_scale"))
        (no_decay if exempt else decay).append(param)
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return [group for group in groups if group["params"]]


def set_learning_rate(optimizer: torch.optim.Optimizer, base_lr: float, factor: float) -> None:
    """lr of each group = base x factor x the group's own ``lr_mult`` (default 1)."""
    for group in optimizer.param_groups:
        group["lr"] = base_lr * factor * group.get("lr_mult", 1.0)


def clip_and_step(optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler, grad_clip: float | None) -> None:
    """The optimizer step on the gradients backpropagated through ``scaler`` (a no-op scaler unless fp16), first
    clipped to a global norm of ``grad_clip`` on the true (unscaled) gradients."""
    if grad_clip:
        scaler.unscale_(optimizer)
        torch.nn.utils.clip_grad_norm_([p for group in optimizer.param_groups for p in group["params"]], grad_clip)
    scaler.step(optimizer)
    scaler.update()
