"""The EMA teacher of CaRot's self-distillation, its momentum schedule and its caption embeddings.

The teacher starts as a copy of the pre-trained model. Every ``period`` optimizer steps,
θ_T ← m·θ_T + (1 - m)·θ_S, where m rises linearly from ``m_src`` to ``m_tar`` over the first
``warmup`` fraction of all steps and then stays at ``m_tar`` (released defaults 0.05 → 0.9 over
0.2, period 500 on ImageNet). Differences from the released code: floating-point buffers are
averaged too (it averages parameters only), and the first update comes after ``period`` steps
(it also updates at step 0, before the student has moved).

Between two updates the teacher is constant, and the fine-tuning captions are few (class names in
templates), so the teacher's caption embeddings are computed once per caption and teacher state
(``caption_embeddings``) instead of once per step; the trainer also drops them at each checkpoint,
where a resumed run starts without them.
"""

from __future__ import annotations

import copy
from typing import Sequence

import torch

from harness.models.clip import encode_texts

MAX_CACHED_CAPTIONS = 65_536  # the cache starts again when full (e.g. 128 MiB of 512-d fp32 embeddings)


def momentum_at(step: int, total_steps: int, m_src: float, m_tar: float, warmup: float) -> float:
    """Momentum m at optimizer step ``step`` (0-based) of ``total_steps``."""
    warmup_steps = warmup * total_steps
    if warmup_steps <= 0 or step >= warmup_steps:
        return float(m_tar)
    return float(m_src + (m_tar - m_src) * step / warmup_steps)


class EMATeacher:
    """A frozen copy of a model, moved towards the student by exponential moving averages.

    Change its weights through ``update`` and ``load_state_dict`` only: they drop the cached caption
    embeddings, which belong to the weights they were computed with.
    """

    def __init__(self, model: torch.nn.Module):
        self.model = copy.deepcopy(model).eval()
        for param in self.model.parameters():
            param.requires_grad_(False)
        self._captions: dict[str, torch.Tensor] = {}

    @torch.no_grad()
    def update(self, student: torch.nn.Module, momentum: float) -> None:
        """θ_T ← m·θ_T + (1 - m)·θ_S for every parameter and floating-point buffer."""
        self.forget_captions()
        teacher_state = self.model.state_dict()
        for name, value in student.state_dict().items():
            target = teacher_state[name]
            if target.is_floating_point():
                target.mul_(momentum).add_(value.detach(), alpha=1.0 - momentum)

    def caption_embeddings(self, captions: Sequence[str], tokens: torch.Tensor) -> torch.Tensor:
        """The teacher's normalised embeddings of distinct ``captions`` (``tokens``: theirs, row by row).

        Only captions not seen since the weights last changed are encoded. The text tower encodes
        each caption independently, so this gives the rows that encoding them all would, up to float
        rounding (a batch's composition can change a kernel's summation order).
        """
        missing = [i for i, caption in enumerate(captions) if caption not in self._captions]
        if len(self._captions) + len(missing) > MAX_CACHED_CAPTIONS:
            self.forget_captions()  # captions that rarely repeat (a caption table) would fill the memory
            missing = list(range(len(captions)))
        if missing:
            with torch.inference_mode():  # cheaper than no_grad: no version counters, no views tracked
                encoded = encode_texts(self.model, tokens if len(missing) == len(captions) else tokens[missing])
            self._captions.update(zip((captions[i] for i in missing), encoded))
        return torch.stack([self._captions[caption] for caption in captions])

    def forget_captions(self) -> None:
        """Drop the cached caption embeddings (they are not part of the state, so a checkpoint drops them too)."""
        self._captions.clear()

    def state_dict(self) -> dict[str, torch.Tensor]:
        return self.model.state_dict()

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.forget_captions()
        self.model.load_state_dict(state)
