"""The EMA teacher of CaRot's self-distillation, its momentum schedule and its caption embeddings.

The teacher starts as a copy of the pre-trained model. Every ``period`` optimizer steps,
θ_T ← m·θ_T + (1 - m)·θ_S, where m rises linearly from ``m_src`` to ``m_tar`` over the first
``warmup`` fraction of all steps and then stays at ``m_tar`` (released defaults 0.05 → 0.9 over
0.2, period 500 on ImageNet). Differences from the released code: floating-point buffers are
averaged too (it averages parameters only), and the first update comes after ``period`` steps
(it also updates at step 0, before the student has moved).

Between two updates the teacher is constant, and the fine-tuning captions are few (class names in
templates), so the teacher's caption embeddings are computed once per caption and teacher state
(``caption_embeddings``) instead of once per step. A cached row can differ from one encoded in
another batch by float rounding, so a resumed run rebuilds the cache by encoding the same captions
in the same groups as the run it continues (``encoded_captions``, ``replay_captions``).
"""

from __future__ import annotations

import copy
from typing import Callable, Sequence

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
        self._encoded: list[list[str]] = []  # the captions of each encoding since the weights last changed

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
            group = [captions[i] for i in missing]
            with torch.inference_mode():  # cheaper than no_grad: no version counters, no views tracked
                encoded = encode_texts(self.model, tokens if len(missing) == len(captions) else tokens[missing])
            self._captions.update(zip(group, encoded))
            self._encoded.append(group)
        return torch.stack([self._captions[caption] for caption in captions])

    def encoded_captions(self) -> list[list[str]]:
        """The captions encoded since the weights last changed, encoding by encoding (what a checkpoint keeps)."""
        return [list(group) for group in self._encoded]

    def replay_captions(self, groups: list[list[str]], tokenize: Callable[[list[str]], torch.Tensor]) -> None:
        """Rebuild the cache as ``encoded_captions`` left it, bit for bit: the same captions in the same batches.

        Call it under the autocast of the training step, with the weights the groups were encoded with.
        """
        self.forget_captions()
        for group in groups:
            self.caption_embeddings(group, tokenize(group))

    def forget_captions(self) -> None:
        """Drop the cached caption embeddings."""
        self._captions.clear()
        self._encoded.clear()

    def state_dict(self) -> dict[str, torch.Tensor]:
        return self.model.state_dict()

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.forget_captions()
        self.model.load_state_dict(state)
