"""Cost of one CaRot training step relative to one FLYP step, on the same batches and model.

    python benchmarks/step_cost.py [--model digit-vit-xs] [--batch-size 64] [--steps 30] [--warmup 5]
    python benchmarks/step_cost.py --model ViT-B-16-quickgelu --batch-size 128 --device cuda --precision bf16

Both trainers are built in one process and their steps alternate, so machine noise hits both
alike. A step is everything the trainer does per batch (captions, forward, backward, AdamW,
and for CaRot the teacher's no-grad forward, the OC and cross terms and the EMA update when due).
Models are randomly initialised. The digit-* models train on digitshift's images; any other model
on random images at its own input size (what a step costs does not depend on the pixels).
Prints medians and images/s and, as the last line, one JSON object with flyp_step_s, carot_step_s, ratio.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import open_clip
import torch

from harness.core.config import load_run_config
from harness.data import Benchmark, ImageSet, load_benchmark
from harness.trial.callbacks import TrainCallbacks
from harness.trial.compute import resolve_device
from harness.trial.distributed import SINGLE_PROCESS
from harness.trial.train import Trainer


def random_images(model: str, batches: int, batch_size: int) -> Benchmark:
    """Enough random grey images at the model's input size for every step, as an in-memory benchmark."""
    size = open_clip.get_model_config(model)["vision_cfg"]["image_size"]
    images = torch.randint(0, 256, (batches * batch_size, size, size), dtype=torch.uint8)
    train = ImageSet(images, torch.arange(len(images)) % 10)
    names = [str(k) for k in range(10)]
    return Benchmark("random", names, ["a photo of {}."], ["a photo of {}."], None, train, train, {"random": train}, "random")


def build(method: str, args: argparse.Namespace, run_dir: Path, extra: list[str]) -> Trainer:
    config = load_run_config(None, [f"method={method}", f"model.name={args.model}", "model.pretrained=null",
                                    f"optim.batch_size={args.batch_size}", f"compute.device={args.device}",
                                    f"compute.precision={args.precision}", *extra])
    if args.model.startswith("digit-"):
        benchmark = load_benchmark(config.data.benchmark)
    else:
        benchmark = random_images(args.model, args.warmup + args.steps, args.batch_size)
    return Trainer(config, benchmark, run_dir, TrainCallbacks(), device=resolve_device(config.compute, SINGLE_PROCESS))


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="digit-vit-xs")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    parser.add_argument("--precision", choices=("fp32", "bf16", "fp16"), default="fp32")
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
                synchronize(trainer.device)
                started = time.perf_counter()
                trainer.train_step(stages[name], optimizers[name], trainer.step, trainer.total_steps)
                synchronize(trainer.device)
                if step >= args.warmup:
                    samples[name].append(time.perf_counter() - started)
        device = trainers["flyp"].device
    flyp, carot = statistics.median(samples["flyp"]), statistics.median(samples["carot"])
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu, {torch.get_num_threads()} threads"
    print(f"model {args.model}, batch {args.batch_size}, {args.precision}, {where}: median of {args.steps} steps each "
          f"after {args.warmup} warm-up")
    print(f"flyp  {flyp * 1000:.1f} ms/step  {args.batch_size / flyp:.1f} images/s")
    print(f"carot {carot * 1000:.1f} ms/step  {args.batch_size / carot:.1f} images/s  (ratio {carot / flyp:.3f})")
    print(json.dumps({"model": args.model, "batch_size": args.batch_size, "steps": args.steps, "device": where,
                      "precision": args.precision, "flyp_step_s": round(flyp, 5), "carot_step_s": round(carot, 5),
                      "flyp_images_s": round(args.batch_size / flyp, 1), "carot_images_s": round(args.batch_size / carot, 1),
                      "ratio": round(carot / flyp, 3)}))


if __name__ == "__main__":
    main()
