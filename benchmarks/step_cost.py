"""Cost of one CaRot training step relative to one FLYP step, on the same batches and model.

    python benchmarks/step_cost.py [--model digit-vit-xs] [--batch-size 64] [--steps 30] [--warmup 5]
    python benchmarks/step_cost.py --model ViT-B-16-quickgelu --batch-size 128 --device cuda --precision bf16

The two configs are the ``flyp`` and ``carot`` rows of sweeps/ablation.yaml (its base, its λs and
its EMA period, 2% of the ablation's steps), with the model, batch size, device and precision given
here. Both trainers are built in one process and their steps alternate, so machine noise hits both
alike. A step is everything the trainer does per batch (captions, forward, backward, AdamW, and for
CaRot the teacher's no-grad forward, the OC term and the EMA update when due). ``teacher_image_s``
times the teacher's no-grad image forward alone on CaRot's batches: the part of CaRot's extra cost
that no bookkeeping can remove, so the floor of the ratio is 1 + teacher_image_s / flyp_step_s.
Models are randomly initialised. The digit-* models train on digitshift's images; any other model
on random images at its own input size (what a step costs does not depend on the pixels).
Prints medians and images/s and, as the last line, one JSON object with flyp_step_s,
carot_step_s, teacher_image_s, ratio, floor (1 + teacher_image_s / flyp_step_s) and excess_s, the
median over steps of carot - flyp - teacher image forward, which pairs the three timings of a step
and so shrugs off more of the machine's noise than the difference of the medians.

Where a CaRot step goes (digit-vit-xs, batch 64, fp32, CPU with 2 threads shared with other work;
the ablation's carot row: λ_OC 0.2, λ_SD 0.5, EMA period 5 of 248 steps). torch.profiler, ms per
step over 20 steps, before / after the teacher's caption cache (load differed between the two):

    train_step                                  175.8 / 199.5
      contrastive_terms (forwards, loss terms)   76.8 /  84.0
        teacher image forward (no grad)          33.9 /  36.4   the floor
        teacher caption forward (no grad)         2.9 /   1.2   every step / 9 encodings in 20 steps
        contrastive, distillation, OC losses      0.8 /   1.1
      backward                                   72.0 /  83.2
      AdamW step                                 24.1 /  28.7
      EMA update                                  0.9 /   1.2   4.5-6 ms every 5th step
    top ops by self CPU (before): aten::mm 18.8%, aten::addmm 12.5%, aten::copy_ 7.9%,
    flash attention backward and forward, layer norm; nothing CaRot-specific beyond the teacher.

After, timed inside the steps (60 steps, medians): the CaRot step is 37.7 ms longer than FLYP's
(188.5 vs 150.8): the teacher's image forward 35.2 (31-33 alone, on a cache the step has not just
filled), the caption cache 1.3 (its misses), the EMA update 0.9, the loss terms and the rest 0.5;
backward and AdamW cost the same in both.

JSON lines of this script, 100 steps each, runs interleaved on the same machine:

    before (uncached teacher captions):
      ratio 1.257 floor 1.227 excess_s 0.0047 | 1.271 1.236 0.0057 | 1.283 1.233 0.0058
    after:
      ratio 1.264 floor 1.232 excess_s 0.0036 | 1.260 1.237 0.0017 | 1.260 1.230 0.0042

(flyp_step_s 0.139-0.165, teacher_image_s 0.033-0.038 in all six.) The first version of this
script (λ_SD 1.5, λ_cross 0.05 hard-coded, no teacher timing) gave ratio 1.326 under heavier load.
Again after ft/lp/lp-ft moved under DDP and the logged terms became a mean over ranks (100 steps,
machine otherwise idle): ratio 1.258, floor 1.257, excess_s 0.0010 (flyp 110.7 ms, carot 139.2 ms,
teacher image forward 28.5 ms).
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import tempfile
import time
from pathlib import Path

import open_clip
import torch

from harness.core.config import RunConfig, apply_overrides, build
from harness.data import Benchmark, ImageSet, load_benchmark
from harness.models.clip import encode_images
from harness.sweep.spec import VARIANT, load_spec, trial_config
from harness.trial.callbacks import TrainCallbacks
from harness.trial.compute import autocast, resolve_device
from harness.trial.distributed import SINGLE_PROCESS
from harness.trial.trainer import Trainer

log = logging.getLogger("step_cost")
ABLATION = Path(__file__).resolve().parent.parent / "sweeps" / "ablation.yaml"


def random_images(model: str, batches: int, batch_size: int) -> Benchmark:
    """Enough random grey images at the model's input size for every step, as an in-memory benchmark."""
    size = open_clip.get_model_config(model)["vision_cfg"]["image_size"]
    images = torch.randint(0, 256, (batches * batch_size, size, size), dtype=torch.uint8)
    train = ImageSet(images, torch.arange(len(images)) % 10)
    names = [str(k) for k in range(10)]
    return Benchmark("random", names, ["a photo of {}."], ["a photo of {}."], None, train, train, {"random": train}, "random")


def ablation_config(variant: str, args: argparse.Namespace, run_dir: Path) -> RunConfig:
    """The ablation's ``variant`` row (first seed) with this benchmark's model, batch size, device and precision."""
    spec = load_spec(ABLATION)
    params = {VARIANT: variant}
    config = trial_config(spec, params, spec.seeds_for(params)[0], run_dir / variant, ABLATION.parent)
    data = apply_overrides(config.model_dump(mode="json"), [
        f"model.name={args.model}", "model.pretrained=null", f"optim.batch_size={args.batch_size}",
        f"compute.device={args.device}", f"compute.precision={args.precision}"])
    return build(RunConfig, data, source=f"{ABLATION.name} {variant}")


def build_trainer(config: RunConfig, args: argparse.Namespace) -> Trainer:
    if args.model.startswith("digit-"):
        benchmark = load_benchmark(config.data.benchmark)
    else:
        benchmark = random_images(args.model, args.warmup + args.steps, args.batch_size)
    return Trainer(config, benchmark, Path(config.run_dir), TrainCallbacks(),
                   device=resolve_device(config.compute, SINGLE_PROCESS))


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed_step(trainer: Trainer, stage, optimizer: torch.optim.Optimizer) -> float:
    """Seconds of one training step, the device synchronised on both sides."""
    trainer.model.train()
    synchronize(trainer.device)
    started = time.perf_counter()
    trainer.train_step(stage, optimizer, trainer.step, trainer.total_steps)
    synchronize(trainer.device)
    return time.perf_counter() - started


def timed_teacher_images(trainer: Trainer, step: int) -> float:
    """Seconds of the teacher's no-grad image forward on the batch of ``step``, as the CaRot step runs it."""
    images = trainer.batches.at(step).images
    synchronize(trainer.device)
    started = time.perf_counter()
    with autocast(trainer.config.compute, trainer.device), torch.inference_mode():
        encode_images(trainer.teacher.model, images)
    synchronize(trainer.device)
    return time.perf_counter() - started


def measure(trainers: dict[str, Trainer], warmup: int, steps: int) -> dict[str, list[float]]:
    """Seconds of each trainer's steps and of the teacher's image forward, after ``warmup`` unmeasured steps.

    The two trainers take turns going first, so neither always runs on the caches the other left.
    """
    stages = {name: trainer.method.stages[0] for name, trainer in trainers.items()}
    optimizers = {name: trainer.make_optimizer(stages[name]) for name, trainer in trainers.items()}
    samples: dict[str, list[float]] = {name: [] for name in (*trainers, "teacher_image")}
    for step in range(warmup + steps):
        order = list(trainers) if step % 2 == 0 else list(reversed(trainers))
        times = {name: timed_step(trainers[name], stages[name], optimizers[name]) for name in order}
        times["teacher_image"] = timed_teacher_images(trainers["carot"], step)
        if step >= warmup:
            for name, seconds in times.items():
                samples[name].append(seconds)
    return samples


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="digit-vit-xs")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    parser.add_argument("--precision", choices=("fp32", "bf16", "fp16"), default="fp32")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        trainers = {name: build_trainer(ablation_config(name, args, Path(tmp)), args) for name in ("flyp", "carot")}
        carot = trainers["carot"]
        log.info("carot: λ_OC %g, λ_SD %g, λ_cross %g, EMA period %d of %d steps", carot.config.loss.oc_weight,
                 carot.config.loss.sd_weight, carot.config.loss.cross_weight, carot.ema_period, carot.total_steps)
        samples = measure(trainers, args.warmup, args.steps)
        device = carot.device
    flyp, carot_s, teacher = (statistics.median(samples[name]) for name in ("flyp", "carot", "teacher_image"))
    excess = statistics.median(c - f - t for f, c, t in zip(samples["flyp"], samples["carot"], samples["teacher_image"]))
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu, {torch.get_num_threads()} threads"
    log.info("model %s, batch %d, %s, %s: median of %d steps each after %d warm-up", args.model, args.batch_size,
             args.precision, where, args.steps, args.warmup)
    log.info("flyp  %.1f ms/step  %.1f images/s", flyp * 1000, args.batch_size / flyp)
    log.info("carot %.1f ms/step  %.1f images/s  (ratio %.3f; floor 1 + teacher image forward %.1f ms = %.3f;"
             " per step, carot - flyp - teacher image forward %.1f ms)", carot_s * 1000, args.batch_size / carot_s,
             carot_s / flyp, teacher * 1000, 1 + teacher / flyp, excess * 1000)
    print(json.dumps({"model": args.model, "batch_size": args.batch_size, "steps": args.steps, "device": where,
                      "precision": args.precision, "flyp_step_s": round(flyp, 5), "carot_step_s": round(carot_s, 5),
                      "teacher_image_s": round(teacher, 5), "flyp_images_s": round(args.batch_size / flyp, 1),
                      "carot_images_s": round(args.batch_size / carot_s, 1), "ratio": round(carot_s / flyp, 3),
                      "floor": round(1 + teacher / flyp, 3), "excess_s": round(excess, 5)}))


if __name__ == "__main__":
    main()
