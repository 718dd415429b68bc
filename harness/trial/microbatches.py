"""One optimizer step's loss and gradients, computed in ``optim.accum_steps`` micro-batches with the whole
batch's semantics, so that a batch too large for the accelerator's memory still trains as one batch.

A contrastive loss couples every row of the batch, so micro-batch losses cannot simply be summed. As
open_clip's ``accum_freq`` does, every micro-batch is first encoded without gradients (the cache); then
each micro-batch's forward runs again with gradients and the loss of the *whole* batch is computed from its
fresh features and the cached others, and backpropagated. Each pass differentiates only through its own
rows, so the passes' gradients sum to the whole batch's. Images and the batch's distinct captions are split
into micro-batches separately (a caption shared by several images is still encoded once). Terms that reach
parameters directly (the logit scale, the projection penalties) are differentiated in the last pass only, so
they count once (open_clip's accumulation differentiates the logit scale in every pass, i.e. k times). The
teacher's logits of the whole batch are computed once. Cross-entropy is a mean over rows: each micro-batch's
mean counts by its share of the rows. Under DDP only the last pass synchronises gradients. With one
micro-batch a step is the plain one, without a cache pass.

Exact for towers without batch statistics (ViTs); a BatchNorm tower (open_clip's ModifiedResNet) normalises
each micro-batch by its own statistics, so there accumulation approximates a larger batch.
"""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import Callable

import torch

from harness.core.config import LossConfig
from harness.trial.batches import Captions
from harness.trial.distributed import Gather, identity
from harness.trial.ema import EMATeacher
from harness.trial.terms import (
    contrastive_terms,
    cross_entropy_terms,
    projection_terms,
    teacher_logits,
    weighted_loss,
)


def micro_slices(n: int, parts: int) -> list[slice]:
    """``n`` rows in ``parts`` contiguous slices, in order, whose sizes differ by at most one, the larger ones last
    (with fewer rows than parts, the last pass, which synchronises DDP, still has some)."""
    sizes = [n // parts + (i >= parts - n % parts) for i in range(parts)]
    starts = [sum(sizes[:i]) for i in range(parts)]
    return [slice(start, start + size) for start, size in zip(starts, sizes)]


def _splice(cached: torch.Tensor, rows: slice, fresh: torch.Tensor) -> torch.Tensor:
    """``cached`` with ``rows`` replaced by ``fresh`` (which carries the gradient)."""
    return torch.cat([cached[: rows.start], fresh, cached[rows.stop :]])


@dataclass
class MicroBatches:
    """How one optimizer step runs: through ``trained`` (the trained module or its DDP wrapper), in ``parts``
    micro-batches, forwards under ``precision`` (an autocast context factory), backwards through ``scaler``."""

    trained: torch.nn.Module
    parts: int
    precision: Callable[[], AbstractContextManager]
    scaler: torch.amp.GradScaler

    def _sync_unless(self, last: bool) -> AbstractContextManager:
        """DDP synchronises gradients in the last pass only (forward and backward of the others under ``no_sync``)."""
        if last or not hasattr(self.trained, "no_sync"):
            return nullcontext()
        return self.trained.no_sync()

    def contrastive(self, model: torch.nn.Module, images: torch.Tensor, captions: Captions, labels: torch.Tensor,
                    loss: LossConfig, teacher: EMATeacher | None = None, gather: Gather = identity
                    ) -> dict[str, torch.Tensor]:
        """Backpropagate the whole batch's contrastive (and CaRot) loss; its terms and ``loss``, detached.

        ``images`` are this process's rows, ``captions`` their distinct captions and each image's among them,
        ``labels`` the whole batch's; ``model`` is the module ``trained`` wraps (its projections are penalised).
        """
        image_parts = micro_slices(len(images), self.parts)
        text_parts = micro_slices(len(captions.tokens), self.parts)
        image_chunks = [images[rows] for rows in image_parts]
        targets = None
        if teacher is not None:
            with self.precision():
                targets = teacher_logits(teacher, image_chunks, captions.texts, captions.tokens, captions.index, gather)
        cached = self._cache(model, image_chunks, [captions.tokens[rows] for rows in text_parts])
        for part, (rows, texts) in enumerate(zip(image_parts, text_parts)):
            last = part == self.parts - 1
            with self._sync_unless(last):
                with self.precision():
                    image_rows, text_rows, scale = self.trained(images[rows], captions.tokens[texts])[:3]
                    if cached is not None:
                        image_rows = _splice(cached[0], rows, image_rows.float())
                        text_rows = _splice(cached[1], texts, text_rows.float())
                    terms = contrastive_terms(image_rows, text_rows[captions.index], scale if last else scale.detach(),
                                              labels, loss, targets, gather)
                    if last:
                        terms |= projection_terms(model, loss)
                    total = weighted_loss(terms, loss)
                self.scaler.scale(total).backward()
        return {name: value.detach() for name, value in terms.items()} | {"loss": total.detach()}

    def _cache(self, model: torch.nn.Module, image_chunks: list[torch.Tensor], token_chunks: list[torch.Tensor]
               ) -> tuple[torch.Tensor, torch.Tensor] | None:
        """Every micro-batch's image and caption features without gradients (none with one micro-batch)."""
        if self.parts == 1:
            return None
        with torch.no_grad(), self.precision():
            encoded = [model(chunk, tokens)[:2] for chunk, tokens in zip(image_chunks, token_chunks)]
        return (torch.cat([image.float() for image, _ in encoded]), torch.cat([text.float() for _, text in encoded]))

    def cross_entropy(self, images: torch.Tensor, labels: torch.Tensor, label_smoothing: float
                      ) -> dict[str, torch.Tensor]:
        """Backpropagate the cross-entropy of this process's rows (each micro-batch's mean weighted by its share
        of the rows); the mean, detached, as its term and ``loss``."""
        mean = torch.zeros((), device=images.device)
        for part, rows in enumerate(micro_slices(len(images), self.parts)):
            with self._sync_unless(part == self.parts - 1):
                with self.precision():
                    share = (rows.stop - rows.start) / len(images)
                    term = cross_entropy_terms(self.trained, images[rows], labels[rows], label_smoothing)["cross_entropy"]
                self.scaler.scale(term * share).backward()
            mean = mean + share * term.detach().float()
        return {"cross_entropy": mean, "loss": mean}
