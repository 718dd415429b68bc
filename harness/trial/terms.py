"""The loss terms of one training batch and their weighted sum, for each objective a stage can have.

Contrastive stages (FLYP, CaRot) compare every image with every caption of the whole batch, under
CaRot with the orthogonality and cross-norm penalties and self-distillation from the EMA teacher;
cross-entropy stages (LP, FT) classify the images with the trained head. ``weighted_loss`` applies
the λs, so the terms themselves can be logged unweighted. The forwards that give the features are
``harness.trial.microbatches``'s.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F

from harness.core.config import LossConfig
from harness.models.clip import encode_images, text_projection, visual_projection
from harness.trial.distributed import Gather, identity
from harness.trial.ema import EMATeacher
from harness.trial.losses import (
    contrastive_loss,
    cross_norm_penalty,
    distillation_loss,
    orthogonality_penalty,
)


def contrastive_terms(
    image_rows: torch.Tensor,
    text_rows: torch.Tensor,
    scale: torch.Tensor,
    labels: torch.Tensor,
    loss: LossConfig,
    teacher_logits: torch.Tensor | None = None,
    gather: Gather = identity,
) -> dict[str, torch.Tensor]:
    """The unweighted loss terms of one contrastive batch (FLYP / CaRot) that depend on its features, over the
    *whole* batch: the contrastive loss and, given the teacher's logits, self-distillation.

    ``image_rows`` are this process's images' normalised features and ``text_rows`` their captions' (row i is
    image i's caption); ``labels`` and ``teacher_logits`` are the whole batch's. ``gather`` concatenates every
    process's rows (``harness.trial.distributed.gather_features``; identity in a single process), so the
    logits and same-class targets are those of the whole batch on every process. Logits and losses are
    computed in fp32 even under autocast: bf16 cosines (8 bits of mantissa) would blur a 1000-way softmax.
    """
    image_features, text_features = gather(image_rows.float()), gather(text_rows.float())
    targets = None
    if loss.same_class_positives:
        same = (labels[:, None] == labels[None, :]).float()
        targets = same / same.sum(dim=1, keepdim=True)
    terms = {"contrastive": contrastive_loss(image_features, text_features, scale, loss.label_smoothing, targets)}
    if teacher_logits is not None:
        student_logits = scale * image_features @ text_features.T
        terms["sd"] = distillation_loss(student_logits, student_logits.T, teacher_logits, teacher_logits.T)
    return terms


def projection_terms(model: torch.nn.Module, loss: LossConfig) -> dict[str, torch.Tensor]:
    """CaRot's penalties on the projections themselves (orthogonality, cross-norm), where their weights are not 0."""
    terms = {}
    if loss.oc_weight > 0:
        terms["oc"] = orthogonality_penalty(visual_projection(model))
    if loss.cross_weight > 0:
        terms["cross"] = cross_norm_penalty(visual_projection(model), text_projection(model))
    return terms


def teacher_logits(teacher: EMATeacher, image_chunks: Sequence[torch.Tensor], captions: Sequence[str],
                   tokens: torch.Tensor, caption_index: torch.Tensor, gather: Gather = identity) -> torch.Tensor:
    """The EMA teacher's logits of the whole batch, from this process's images (encoded chunk by chunk, so that no
    more rows than a micro-batch's are in flight) and its distinct ``captions`` (their embeddings cached by caption)."""
    if len(captions) != len(tokens):
        raise ValueError(f"{len(captions)} captions for {len(tokens)} rows of tokens: the teacher keys its"
                         " caption embeddings by caption")
    with torch.inference_mode():  # cheaper than no_grad: no version counters, no views tracked
        teacher_images = torch.cat([encode_images(teacher.model, chunk) for chunk in image_chunks])
    teacher_texts = teacher.caption_embeddings(captions, tokens)[caption_index]
    # normal tensors, so that they can be gathered and autograd may save the logits as a target
    teacher_images, teacher_texts = gather(teacher_images.float()), gather(teacher_texts.float())
    return teacher.model.logit_scale.exp().detach() * teacher_images @ teacher_texts.T


def cross_entropy_terms(classifier: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor,
                        label_smoothing: float) -> dict[str, torch.Tensor]:
    """The cross-entropy of ``classifier`` (an ``ImageClassifier`` or its DDP wrapper) on this process's rows
    (``images`` and their ``labels``): a mean over rows, which DDP's gradient average makes the whole batch's."""
    return {"cross_entropy": F.cross_entropy(classifier(images), labels, label_smoothing=label_smoothing)}


_SUM_ORDER = ("contrastive", "cross_entropy", "oc", "cross", "sd")  # one order, whatever order the terms came in


def weighted_loss(terms: dict[str, torch.Tensor], loss: LossConfig) -> torch.Tensor:
    """L = sum of the terms, λ_OC, λ_cross and λ_SD applied, always added in the same order (float addition is not
    associative: the same terms in another order would give a loss, and gradients, a rounding apart)."""
    weights = {"oc": loss.oc_weight, "cross": loss.cross_weight, "sd": loss.sd_weight}
    unknown = set(terms) - set(_SUM_ORDER)
    if unknown:
        raise ValueError(f"unknown loss terms {sorted(unknown)}")
    return sum(weights.get(name, 1.0) * terms[name] for name in _SUM_ORDER if name in terms)
