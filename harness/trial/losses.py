"""CaRot's objective, term by term: L = L_MCL + λ_OC·L_OC + λ_cross·L_cross + λ_SD·L_SD.

Features are given L2-normalised; ``logit_scale`` is the multiplier (exp already applied).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def contrastive_loss(
    image_features: torch.Tensor,
    text_features: torch.Tensor,
    logit_scale: torch.Tensor | float,
    label_smoothing: float = 0.0,
    targets: torch.Tensor | None = None,
) -> torch.Tensor:
    """Symmetric CLIP loss over a batch of matched (image i, caption i) pairs, label smoothing in both directions.

    Per row: (1 - eps) * (-log p_target) + eps * mean_j(-log p_j), which is what
    ``F.cross_entropy(label_smoothing=eps)`` computes; rows are averaged, then the two directions.
    ``targets`` (optional, ``[B, B]`` rows summing to 1) replaces the one-hot diagonal, e.g. to
    make same-class pairs positives; smoothing then mixes it with the uniform distribution.
    """
    logits_per_image = logit_scale * image_features @ text_features.T
    if targets is None:
        targets = torch.arange(len(image_features), device=image_features.device)
        transposed = targets
    else:
        transposed = targets.T / targets.T.sum(dim=1, keepdim=True)
    image_to_text = F.cross_entropy(logits_per_image, targets, label_smoothing=label_smoothing)
    text_to_image = F.cross_entropy(logits_per_image.T, transposed, label_smoothing=label_smoothing)
    return (image_to_text + text_to_image) / 2


def orthogonality_penalty(proj: torch.Tensor) -> torch.Tensor:
    """||WᵀW - I||_F (not squared) for a projection W of shape [d_in, d_embed], in W's precision even under autocast."""
    with torch.autocast(proj.device.type, enabled=False):
        gram = proj.T @ proj
        return torch.linalg.matrix_norm(gram - torch.eye(gram.shape[0], device=proj.device, dtype=proj.dtype))


def cross_norm_penalty(visual_proj: torch.Tensor, text_proj: torch.Tensor) -> torch.Tensor:
    """||W_v W_tᵀ||_F for the visual [d_v, e] and text [d_t, e] projections, in their precision even under autocast."""
    with torch.autocast(visual_proj.device.type, enabled=False):
        return torch.linalg.matrix_norm(visual_proj @ text_proj.T)


def distillation_loss(
    student_logits_per_image: torch.Tensor,
    student_logits_per_text: torch.Tensor,
    teacher_logits_per_image: torch.Tensor,
    teacher_logits_per_text: torch.Tensor,
) -> torch.Tensor:
    """Soft-label cross-entropy from the teacher to the student, image->text plus text->image, mean over rows.

    No temperature: the logits already carry each model's own logit scale.
    """
    image_term = -(teacher_logits_per_image.softmax(dim=1) * student_logits_per_image.log_softmax(dim=1)).sum(dim=1)
    text_term = -(teacher_logits_per_text.softmax(dim=1) * student_logits_per_text.log_softmax(dim=1)).sum(dim=1)
    return (image_term + text_term).mean()
