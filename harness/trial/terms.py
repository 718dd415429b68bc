"""The loss terms of one training batch and their weighted sum, for each objective a stage can have.

Contrastive stages (FLYP, CaRot) compare every image with every caption of the whole batch, under
CaRot with the orthogonality and cross-norm penalties and self-distillation from the EMA teacher;
cross-entropy stages (LP, FT) classify the images with the trained head. ``weighted_loss`` applies
the λs, so the terms themselves can be logged unweighted.
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
    forward: torch.nn.Module,
    model: torch.nn.Module,
    images: torch.Tensor,
    tokens: torch.Tensor,
    caption_index: torch.Tensor,
    labels: torch.Tensor,
    loss: LossConfig,
    teacher: EMATeacher | None = None,
    gather: Gather = identity,
    captions: Sequence[str] = (),
) -> dict[str, torch.Tensor]:
    """The unweighted loss terms of one contrastive batch (FLYP / CaRot), over the *whole* batch.

    ``images`` are this process's rows, ``tokens`` its distinct captions (``captions``, which key
    the teacher's cached caption embeddings) and ``caption_index`` each image's caption among them
    (identical captions are encoded once: rows are independent); ``labels`` are the whole batch's.
    ``forward`` is ``model`` or its DDP wrapper (the features must come from its forward for DDP to
    average the gradients). ``gather`` concatenates every process's rows
    (``harness.trial.distributed.gather_features``; identity in a single process), so the logits,
    same-class targets and teacher logits are those of the whole batch on every process.
    """
    image_features, text_features, scale = forward(images, tokens)[:3]  # open_clip CLIP: normalised features, exp(scale)
    # logits and losses in fp32 under autocast: bf16 cosines (8 bits of mantissa) would blur a 1000-way softmax
    image_features, text_features = gather(image_features.float()), gather(text_features[caption_index].float())
    targets = None
    if loss.same_class_positives:
        same = (labels[:, None] == labels[None, :]).float()
        targets = same / same.sum(dim=1, keepdim=True)
    terms = {"contrastive": contrastive_loss(image_features, text_features, scale, loss.label_smoothing, targets)}
    if loss.oc_weight > 0:
        terms["oc"] = orthogonality_penalty(visual_projection(model))
    if loss.cross_weight > 0:
        terms["cross"] = cross_norm_penalty(visual_projection(model), text_projection(model))
    if teacher is not None:
        if len(captions) != len(tokens):
            raise ValueError(f"{len(captions)} captions for {len(tokens)} rows of tokens: the teacher keys its"
                             " caption embeddings by caption")
        with torch.inference_mode():  # cheaper than no_grad: no version counters, no views tracked
            teacher_images = encode_images(teacher.model, images)
        teacher_texts = teacher.caption_embeddings(captions, tokens)[caption_index]
        # normal tensors, so that they can be gathered and autograd may save the logits as a target
        teacher_images, teacher_texts = gather(teacher_images.float()), gather(teacher_texts.float())
        teacher_logits = teacher.model.logit_scale.exp().detach() * teacher_images @ teacher_texts.T
        student_logits = scale * image_features @ text_features.T
        terms["sd"] = distillation_loss(student_logits, student_logits.T, teacher_logits, teacher_logits.T)
    return terms


def cross_entropy_terms(classifier: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor,
                        label_smoothing: float) -> dict[str, torch.Tensor]:
    """The cross-entropy of ``classifier`` (an ``ImageClassifier`` or its DDP wrapper) on this process's rows
    (``images`` and their ``labels``): a mean over rows, which DDP's gradient average makes the whole batch's."""
    return {"cross_entropy": F.cross_entropy(classifier(images), labels, label_smoothing=label_smoothing)}


def weighted_loss(terms: dict[str, torch.Tensor], loss: LossConfig) -> torch.Tensor:
    """L = sum of the terms, λ_OC, λ_cross and λ_SD applied."""
    weights = {"oc": loss.oc_weight, "cross": loss.cross_weight, "sd": loss.sd_weight}
    return sum(weights.get(name, 1.0) * value for name, value in terms.items())
