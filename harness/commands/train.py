"""One trial: fine-tune, evaluate, record.

    python -m harness.train [CONFIG.yaml] [key=value ...] [-v | -q]

Seeds everything, builds the model from its pre-trained weights (the embedded small CLIP is
pre-trained on first use), trains the method's stages, evaluates every test set, measures the ID
embedding spectrum and writes ``RUN_DIR/record.json``. Run it again with the same run directory
and it continues from ``RUN_DIR/checkpoint.pt``. Exit code 1 when the trial fails, 2 on bad input (checked
before any work: keys and values, the model and its weights, the benchmark and its data).
"""

from __future__ import annotations

from harness.core.cli import config_parser, parse_config
from harness.core.config import RunConfig
from harness.trial.preflight import preflight
from harness.trial.pretrain import ensure_weights
from harness.trial.runner import format_record, run


def main(argv: list[str] | None = None) -> int:
    config, _ = parse_config(config_parser("python -m harness.train", __doc__), RunConfig, argv)
    preflight([config])  # before pre-training or building anything
    ensure_weights(config.model)
    record = run(config)
    if record.status != "ok":
        print(f"trial failed: {record.error} (see {record.paths.error})")
        return 1
    print(format_record(record))
    print(f"record: {record.paths.record}")
    return 0
