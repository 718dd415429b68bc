"""Training objectives. Features are given L2-normalised; ``logit_scale`` is the multiplier (exp already applied)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def contrastive_loss(
    image_features: torch.Tensor, text_features: torch.Tensor, logit_scale: torch.Tensor | float, label_smoothing: float = 0.0
) -> torch.Tensor:
    """Symmetric CLIP loss over a batch of matched (image i, caption i) pairs, with label smoothing in both directions.

    Per row: (1 - eps) * (-log p_target) + eps * mean_j(-log p_j), which is exactly what
    ``F.cross_entropy(label_smoothing=eps)`` computes; rows are averaged, then the two directions.
    """
    logits_per_image = logit_scale * image_features @ text_features.T
    targets = torch.arange(len(image_features), device=image_features.device)
    image_to_text = F.cross_entropy(logits_per_image, targets, label_smoothing=label_smoothing)
    text_to_image = F.cross_entropy(logits_per_image.T, targets, label_smoothing=label_smoothing)
    return (image_to_text + text_to_image) / 2
