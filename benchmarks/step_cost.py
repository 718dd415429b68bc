"""Cost of one CaRot training step relative to one FLYP step, on the same batches and model.

    python benchmarks/step_cost.py [--model digit-vit-xs] [--batch-size 64] [--steps 30] [--warmup 5]

Both trainers are built in one process and their steps alternate, so machine noise hits both
alike. A step is everything the trainer does per batch (captions, forward, backward, AdamW,
and for CaRot the teacher's no-grad forward, the OC and cross terms and the EMA update when due).
Prints medians and, as the last line, one JSON object with flyp_step_s, carot_step_s, ratio.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch

from harness.config import load_run_config
from harness.data import load_benchmark
from harness.train import TrainCallbacks, Trainer


def build(method: str, args: argparse.Namespace, run_dir: Path, extra: list[str]) -> Trainer:
    config = load_run_config(None, [f"method={method}", f"model.name={args.model}", "model.pretrained=null",
                                    f"optim.batch_size={args.batch_size}", *extra])
    return Trainer(config, load_benchmark(config.data.benchmark), run_dir, TrainCallbacks())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="digit-vit-xs")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=5)
    args = parser.parse_args()
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        trainers = {
            "flyp": build("flyp", args, Path(tmp), []),
            # the released weights (λ_OC 0.2, λ_SD 1.5, λ_cross 0.05); an EMA update every 5th step
            "carot": build("carot", args, Path(tmp), ["loss.cross_weight=0.05", "ema.period=5"]),
        }
        stages = {name: trainer.method.stages[0] for name, trainer in trainers.items()}
        optimizers = {name: trainer.make_optimizer(stages[name]) for name, trainer in trainers.items()}
        samples: dict[str, list[float]] = {name: [] for name in trainers}
        for step in range(args.warmup + args.steps):
            for name, trainer in trainers.items():
                trainer.model.train()
                started = time.perf_counter()
                trainer.train_step(stages[name], optimizers[name], trainer.step, trainer.total_steps)
                if step >= args.warmup:
                    samples[name].append(time.perf_counter() - started)
    flyp, carot = statistics.median(samples["flyp"]), statistics.median(samples["carot"])
    print(f"model {args.model}, batch {args.batch_size}, median of {args.steps} steps each after {args.warmup} "
          f"warm-up, {torch.get_num_threads()} threads")
    print(f"flyp  {flyp * 1000:.1f} ms/step")
    print(f"carot {carot * 1000:.1f} ms/step  (ratio {carot / flyp:.3f})")
    print(json.dumps({"model": args.model, "batch_size": args.batch_size, "steps": args.steps,
                      "flyp_step_s": round(flyp, 5), "carot_step_s": round(carot, 5), "ratio": round(carot / flyp, 3)}))


if __name__ == "__main__":
    main()
