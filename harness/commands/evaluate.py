"""Zero-shot evaluation of a model on every test set of a benchmark.

    python -m harness.evaluate [CONFIG.yaml] [key=value ...] [-v | -q]

prints zero-shot accuracy, ECE (top-label, 15 equal-width bins, L1, over the whole set) and
mean confidence per test set, for ``model.name`` with ``model.pretrained`` on ``data.benchmark``.
"""

from __future__ import annotations

import torch

from harness.core.cli import config_parser, parse_config
from harness.core.config import RunConfig
from harness.data import load_benchmark
from harness.data.pipeline import clip_preprocess
from harness.models.clip import create_model, logit_scale
from harness.trial.compute import resolve_device
from harness.trial.distributed import SINGLE_PROCESS
from harness.trial.set_reports import evaluate_zeroshot, format_table
from harness.trial.preflight import preflight
from harness.trial.pretrain import ensure_weights


def main(argv: list[str] | None = None) -> int:
    config, _ = parse_config(config_parser("python -m harness.evaluate", __doc__), RunConfig, argv)
    torch.manual_seed(config.seed)
    preflight([config])
    model, tokenizer = create_model(config.model.name, ensure_weights(config.model))
    model.to(resolve_device(config.compute, SINGLE_PROCESS))
    benchmark = load_benchmark(config.data.benchmark, data=config.data)
    benchmark.set_transforms(clip_preprocess(model, train=True), clip_preprocess(model))
    results = evaluate_zeroshot(model, tokenizer, benchmark, config.eval.batch_size, config.eval.n_bins)
    print(f"{config.model.name} ({config.model.pretrained}) zero-shot on {benchmark.name}, "
          f"logit scale {logit_scale(model).item():.1f}")
    print(format_table(results, benchmark.id_test))
    return 0
