"""Pre-train the small CLIP that plays CLIP's role on the embedded benchmark.

    python -m harness.pretrain [CONFIG.yaml] [key=value ...] [--out PATH] [-v | -q]

Without ``--out`` the weights land in the cache entry that ``model.pretrained=digitshift`` uses
(harness.train and harness.sweep run this on first use), built under the entry's lock as they build it,
so that a sweep starting meanwhile waits for these weights instead of writing its own. Prints the
pre-trained model's zero-shot result on every test set.
"""

from __future__ import annotations

from contextlib import nullcontext
from pathlib import Path

from harness.core.cli import config_parser, parse_config
from harness.core.storage import file_lock
from harness.trial.set_reports import format_table
from harness.trial.pretrain import PretrainConfig, pretrain, weights_path


def main(argv: list[str] | None = None) -> int:
    parser = config_parser("python -m harness.pretrain", __doc__, "pretraining config",
                           keys=f"keys: {', '.join(PretrainConfig.model_fields)} (harness.trial.pretrain.PretrainConfig)")
    parser.add_argument("--out", type=Path, help="where to save the weights (default: the cache entry for this config)")
    config, args = parse_config(parser, PretrainConfig, argv)
    out = args.out or weights_path(config)
    with file_lock(out.with_suffix(".lock")) if args.out is None else nullcontext():
        summary = pretrain(config, out)
    print(f"saved {out} (logit scale {summary['logit_scale']:.1f}, {summary['steps']} steps, "
          f"{summary['train_seconds']:.0f} s)")
    print(f"zero-shot result of the pre-trained {config.model}:")
    print(format_table(summary["zeroshot"], summary["id_test"]))
    return 0
