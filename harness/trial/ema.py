"""The EMA teacher of CaRot's self-distillation and its momentum schedule.

The teacher starts as a copy of the pre-trained model. Every ``period`` optimizer steps,
θ_T ← m·θ_T + (1 - m)·θ_S, where m rises linearly from ``m_src`` to ``m_tar`` over the first
``warmup`` fraction of all steps and then stays at ``m_tar`` (released defaults 0.05 → 0.9 over
0.2, period 500 on ImageNet). Differences from the released code: floating-point buffers are
averaged too (it averages parameters only), and the first update comes after ``period`` steps
(it also updates at step 0, before the student has moved).
"""

from __future__ import annotations

import copy

import torch


def momentum_at(step: int, total_steps: int, m_src: float, m_tar: float, warmup: float) -> float:
    """Momentum m at optimizer step ``step`` (0-based) of ``total_steps``."""
    warmup_steps = warmup * total_steps
    if warmup_steps <= 0 or step >= warmup_steps:
        return float(m_tar)
    return float(m_src + (m_tar - m_src) * step / warmup_steps)


class EMATeacher:
    """A frozen copy of a model, moved towards the student by exponential moving averages."""

    def __init__(self, model: torch.nn.Module):
        self.model = copy.deepcopy(model).eval()
        for param in self.model.parameters():
            param.requires_grad_(False)

    @torch.no_grad()
    def update(self, student: torch.nn.Module, momentum: float) -> None:
        """θ_T ← m·θ_T + (1 - m)·θ_S for every parameter and floating-point buffer."""
        teacher_state = self.model.state_dict()
        for name, value in student.state_dict().items():
            target = teacher_state[name]
            if target.is_floating_point():
                target.mul_(momentum).add_(value.detach(), alpha=1.0 - momentum)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return self.model.state_dict()

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.model.load_state_dict(state)
