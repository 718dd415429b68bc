"""Evaluation of a model + classifier head on every test set of a benchmark.

    python -m harness.evaluate [CONFIG.yaml] [key=value ...]

prints zero-shot accuracy, ECE (top-label, 15 equal-width bins, L1, over the whole set) and
mean confidence per test set, for ``model.name`` with ``model.pretrained`` on ``data.benchmark``.
"""

from __future__ import annotations

import torch
from torch.utils.data import Dataset

from harness.core.metrics import (
    CalibrationUncertainty,
    calibration_uncertainty,
    classification_report,
)
from harness.data import Benchmark, ImageSet
from harness.models.clip import (
    classifier_head,
    encode_images,
)
from harness.trial.distributed import (
    SINGLE_PROCESS,
    DistributedEnvironment,
    gather_rows,
    shard_rows,
)


@torch.no_grad()
def image_features(model: torch.nn.Module, dataset: ImageSet, batch_size: int = 256,
                   env: DistributedEnvironment = SINGLE_PROCESS) -> torch.Tensor:
    """Normalised image features ``[N, D]`` of a whole set, in fp32 on the model's device: computed once per
    model and set, then shared by the logits of every head and by the embedding spectrum.

    In a multi-process trial every rank must call it: each encodes its share of the set and all get every row.
    """
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    share = torch.arange(len(dataset))[shard_rows(len(dataset), env)]
    chunks = [encode_images(model, images.to(device)).float() for images, _, _ in dataset.batches(batch_size, share)]
    model.train(was_training)
    features = torch.cat(chunks) if chunks else torch.empty(0, device=device)
    return gather_rows(features) if env.is_distributed else features


@torch.no_grad()
def head_logits(head: torch.nn.Module, features: torch.Tensor) -> torch.Tensor:
    """Logits ``[N, C]`` on the CPU from features computed by ``image_features``."""
    return head(features.to(head.weight.dtype)).float().cpu()


def predict_logits(model: torch.nn.Module, head: torch.nn.Module, dataset: ImageSet, batch_size: int = 256) -> torch.Tensor:
    """Logits ``[N, C]`` = head(normalised image features), accumulated over the whole set."""
    return head_logits(head, image_features(model, dataset, batch_size))


def set_logits_and_labels(logits: torch.Tensor, dataset: Dataset) -> tuple[torch.Tensor, torch.Tensor]:
    """A set's logits over its own classes and its labels: a set with a label space (ImageNet-R/-A: 200
    classes, ObjectNet: 113) gets the benchmark's logits projected onto its classes before the softmax."""
    if hasattr(dataset, "label_space"):
        from harness.data.image_files import projected_logits_and_labels

        return projected_logits_and_labels(logits, dataset)
    return logits, dataset.labels


def set_report(logits: torch.Tensor, dataset: Dataset, n_bins: int = 15) -> dict:
    """Every metric of one set, over its own classes."""
    return classification_report(*set_logits_and_labels(logits, dataset), n_bins)


def set_report_with_uncertainty(logits: torch.Tensor, dataset: Dataset, n_bins: int, resamples: int,
                                draws: int) -> tuple[dict, CalibrationUncertainty]:
    """``set_report`` plus the ECE's bootstrap interval and the set's calibration noise floor."""
    logits, labels = set_logits_and_labels(logits, dataset)
    uncertainty = calibration_uncertainty(logits.double().softmax(dim=1), labels, n_bins, resamples, draws)
    return classification_report(logits, labels, n_bins) | uncertainty.fields(), uncertainty


def evaluate_sets(
    model: torch.nn.Module, head: torch.nn.Module, sets: dict[str, ImageSet], batch_size: int = 256, n_bins: int = 15
) -> dict[str, dict]:
    """The full metric report of every set."""
    return {name: set_report(predict_logits(model, head, dataset, batch_size), dataset, n_bins) for name, dataset in sets.items()}


def evaluate_zeroshot(model: torch.nn.Module, tokenizer, benchmark: Benchmark, batch_size: int = 256, n_bins: int = 15) -> dict[str, dict]:
    """Build the zero-shot head once, then score every test set."""
    head = classifier_head(model, tokenizer, benchmark.classnames, benchmark.zeroshot_templates)
    return evaluate_sets(model, head, benchmark.tests, batch_size, n_bins)


def format_table(results: dict[str, dict], id_test: str | None = None) -> str:
    """One line per set; with intervals, the ECE's 95% bootstrap interval and the set's calibration noise floor."""
    uncertain = any("ece_ci" in row for row in results.values())
    header = f"{'set':<13} {'n':>6} {'acc':>7} {'ECE':>7} {'conf':>7}"
    lines = [header + (f"  {'ECE 95% CI':>15} {'floor':>6}" if uncertain else "")]
    for name, row in results.items():
        label = f"{name} (ID)" if name == id_test else name
        line = f"{label:<13} {row['n']:>6} {row['acc']:>7.2%} {row['ece']:>7.4f} {row['confidence']:>7.2%}"
        if "ece_ci" in row:
            line += f"  [{row['ece_ci'][0]:.4f}, {row['ece_ci'][1]:.4f}] {row['ece_floor']:>6.4f}"
        lines.append(line)
    return "\n".join(lines)
