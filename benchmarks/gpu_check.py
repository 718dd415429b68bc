"""The cluster path's checks on a CUDA machine, one JSON line per check (run by benchmarks/gpu_check.sh).

    python benchmarks/gpu_check.py [--device cuda] [--steps 6]

- ``precision``: bf16 and fp16 (the grad scaler: scaled backward, ``unscale_`` before clipping at
  ``optim.grad_clip``) on a few CaRot steps of ViT-B/16 (random init, batch 32): every loss finite, the
  loss after the steps, fp16's loss scale;
- ``accumulation``: one CaRot step of the tiny model with ``optim.accum_steps=4`` against one with 1, on
  the device: the largest gradient difference relative to each tensor's largest entry;
- ``ddp_nccl`` (two GPUs or more): one CaRot step as 2 NCCL processes against one process on the whole
  batch, the same measure. Each worker is this script with ``--ddp-worker``.

The cost of a CaRot step against FLYP's and images/s of ViT-B/16 at batch 128 come from
``benchmarks/step_cost.py`` (gpu_check.sh runs it).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import open_clip
import torch

from harness.core.config import load_run_config
from harness.data import Benchmark, ImageSet
from harness.models.clip import with_embedded_configs
from harness.trial.callbacks import TrainCallbacks
from harness.trial.distributed import (
    SINGLE_PROCESS,
    DistributedEnvironment,
    destroy_process_group,
    environment_from_env,
    init_process_group,
)
from harness.trial.trainer import Trainer

CAROT = ["method=carot", "loss.label_smoothing=0.1", "loss.oc_weight=0.2", "loss.sd_weight=1.5",
         "loss.cross_weight=0.05", "ema.period=1", "model.pretrained=null", "data.num_workers=0"]


def report(check: str, **values) -> None:
    print(json.dumps({"check": check, **values}), flush=True)


def synthetic(image_size: int, images: int) -> Benchmark:
    """Random grey images of 10 classes at the model's input size, in memory."""
    generator = torch.Generator().manual_seed(0)
    data = ImageSet(torch.randint(0, 256, (images, image_size, image_size), dtype=torch.uint8, generator=generator),
                    torch.arange(images) % 10)
    names = [f"class {k}" for k in range(10)]
    return Benchmark("synthetic", names, ["a photo of {}."], ["a photo of {}."], data, data, data, {"id": data}, "id")


def trainer(overrides: list[str], run_dir: Path, benchmark: Benchmark, device: torch.device,
            env: DistributedEnvironment | None = None, callbacks: TrainCallbacks | None = None) -> Trainer:
    config = load_run_config(None, [*CAROT, *overrides, f"run_dir={run_dir}"])
    torch.manual_seed(0)
    return Trainer(config, benchmark, run_dir, callbacks or TrainCallbacks(), env or SINGLE_PROCESS, device)


def image_size(model: str) -> int:
    with_embedded_configs()
    return open_clip.get_model_config(model)["vision_cfg"]["image_size"]


def one_step_gradients(trained: Trainer) -> dict[str, torch.Tensor]:
    stage = trained.method.stages[0]
    optimizer = trained.make_optimizer(stage)
    trained.model.train()
    trained.train_step(stage, optimizer, 0, trained.total_steps)
    return {name: param.grad.detach().float().cpu() for name, param in trained.model.named_parameters()
            if param.grad is not None}


def relative_difference(actual: dict[str, torch.Tensor], expected: dict[str, torch.Tensor]) -> float:
    return max((actual[name] - grad).abs().max().item() / max(grad.abs().max().item(), 1e-12)
               for name, grad in expected.items())


def check_precision(precision: str, model: str, device: torch.device, steps: int, tmp: Path) -> None:
    losses: list[float] = []

    class Losses(TrainCallbacks):
        def on_step(self, step, values, lr):
            losses.append(values["loss"])

    overrides = [f"model.name={model}", "optim.batch_size=32", f"optim.epochs={steps}", f"compute.precision={precision}",
                 "optim.grad_clip=1.0", "optim.warmup_steps=0", "optim.lr=1e-5"]
    trained = trainer(overrides, tmp / precision, synthetic(image_size(model), 32), device, callbacks=Losses())
    trained.train(progress=False)
    report("precision", precision=precision, model=model, steps=len(losses), finite=all(map(math.isfinite, losses)),
           loss_first=round(losses[0], 4), loss_last=round(losses[-1], 4),
           loss_scale=trained.scaler.get_scale() if trained.scaler.is_enabled() else None)


def check_accumulation(device: torch.device, tmp: Path) -> None:
    benchmark = synthetic(32, 16)
    common = ["model.name=digit-vit-t", "optim.batch_size=16"]
    whole = one_step_gradients(trainer(common, tmp / "k1", benchmark, device))
    micro = one_step_gradients(trainer([*common, "optim.accum_steps=4"], tmp / "k4", benchmark, device))
    report("accumulation", accum_steps=4, device=str(device), max_rel_grad_diff=relative_difference(micro, whole))


def ddp_worker(out: Path) -> None:
    env = environment_from_env()
    device = torch.device("cuda", env.local_rank)
    init_process_group(env, device)
    try:
        grads = one_step_gradients(trainer(["model.name=digit-vit-t", "optim.batch_size=16"], out / f"rank{env.rank}",
                                           synthetic(32, 16), device, env))
        torch.save(grads, out / f"grads{env.rank}.pt")
    finally:
        destroy_process_group()


def check_ddp(tmp: Path) -> None:
    if torch.cuda.device_count() < 2:
        report("ddp_nccl", skipped=f"{torch.cuda.device_count()} GPU(s)")
        return
    env = os.environ | {"OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port=29517",
               __file__, "--ddp-worker", str(tmp)]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    if done.returncode != 0:
        report("ddp_nccl", ok=False, error=done.stderr[-2000:])
        return
    single = one_step_gradients(trainer(["model.name=digit-vit-t", "optim.batch_size=16"], tmp / "single",
                                        synthetic(32, 16), torch.device("cuda", 0)))
    differences = [relative_difference(torch.load(tmp / f"grads{rank}.pt", weights_only=True), single)
                   for rank in range(2)]
    report("ddp_nccl", ok=True, processes=2, max_rel_grad_diff=max(differences))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--precisions", default="bf16,fp16")
    parser.add_argument("--model", default="ViT-B-16-quickgelu", help="the precision checks' model")
    parser.add_argument("--ddp-worker", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.ddp_worker:
        ddp_worker(args.ddp_worker)
        return
    device = torch.device(args.device)
    with tempfile.TemporaryDirectory() as folder:
        tmp = Path(folder)
        for precision in args.precisions.split(","):
            check_precision(precision, args.model, device, args.steps, tmp)
        check_accumulation(device, tmp)
        if device.type == "cuda":
            check_ddp(tmp)


if __name__ == "__main__":
    main()
