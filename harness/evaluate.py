"""Zero-shot evaluation of a model on every test set of a benchmark.

    python -m harness.evaluate [CONFIG.yaml] [key=value ...]

prints accuracy, ECE (top-label, 15 equal-width bins, L1, over the whole set) and mean
confidence per test set, for ``model.name`` with ``model.pretrained`` on ``data.benchmark``.
"""

from __future__ import annotations

import argparse

import torch

from harness import metrics
from harness.cli import add_config_arguments, config_arguments, run_cli
from harness.config import load_run_config
from harness.data import Benchmark, ImageSet, load_benchmark
from harness.models import create_model, encode_images, logit_scale, require_known_model, zeroshot_head


@torch.inference_mode()
def predict_logits(model: torch.nn.Module, head: torch.Tensor, dataset: ImageSet, scale: torch.Tensor, batch_size: int) -> torch.Tensor:
    """Logits ``[N, C]`` = scale x cosine(image, class embedding), accumulated over the whole set."""
    device = head.device
    model.eval()
    chunks = [scale * encode_images(model, images.to(device)) @ head.T for images, _, _ in dataset.batches(batch_size)]
    return torch.cat(chunks).float().cpu()


def summarise(logits: torch.Tensor, labels: torch.Tensor, n_bins: int = 15) -> dict[str, float]:
    probs = logits.softmax(dim=1)
    return {
        "acc": metrics.accuracy(probs, labels),
        "ece": metrics.expected_calibration_error(probs, labels, n_bins),
        "confidence": metrics.mean_confidence(probs),
        "n": len(labels),
    }


@torch.inference_mode()
def evaluate_zeroshot(
    model: torch.nn.Module, tokenizer, benchmark: Benchmark, batch_size: int = 256, n_bins: int = 15
) -> dict[str, dict[str, float]]:
    """Build the zero-shot head once, then score every test set."""
    model.eval()
    head = zeroshot_head(model, tokenizer, benchmark.classnames, benchmark.zeroshot_templates)
    scale = logit_scale(model)
    return {
        name: summarise(predict_logits(model, head, dataset, scale, batch_size), dataset.labels, n_bins)
        for name, dataset in benchmark.tests.items()
    }


def format_table(results: dict[str, dict[str, float]], id_test: str | None = None) -> str:
    lines = [f"{'test set':<12} {'n':>6} {'acc':>7} {'ECE':>7} {'conf':>7}"]
    for name, row in results.items():
        label = f"{name} (ID)" if name == id_test else name
        lines.append(f"{label:<12} {row['n']:>6} {row['acc']:>7.2%} {row['ece']:>7.4f} {row['confidence']:>7.2%}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m harness.evaluate", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_config_arguments(parser, "run config")
    args = parser.parse_args(argv)
    config_path, overrides = config_arguments(args)
    config = load_run_config(config_path, overrides)
    torch.manual_seed(config.seed)
    require_known_model(config.model.name)
    benchmark = load_benchmark(config.data.benchmark)
    model, tokenizer = create_model(config.model.name, config.model.pretrained)
    results = evaluate_zeroshot(model, tokenizer, benchmark, config.eval.batch_size, config.eval.n_bins)
    print(f"{config.model.name} ({config.model.pretrained}) zero-shot on {benchmark.name}, "
          f"logit scale {logit_scale(model).item():.1f}")
    print(format_table(results, benchmark.id_test))
    return 0


if __name__ == "__main__":
    run_cli(main)
