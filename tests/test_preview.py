"""The dry run tells what will run: resolved model, weights, data, steps, precision and resources, before any work."""

from __future__ import annotations

from pathlib import Path

from benchmark_files import write_benchmark
from imagenet_trees import imagenet_family

from harness.commands.sweep import main as sweep_main

SWEEPS = Path(__file__).resolve().parent.parent / "sweeps"


def test_the_imagenet_dry_run_names_what_each_trial_will_use(capsys, tmp_path):
    root = imagenet_family(tmp_path / "datasets", train_per_class=1)
    assert sweep_main([str(SWEEPS / "imagenet_ablation.yaml"), "--dry-run", "--out", str(tmp_path / "out"),
                       f"--set=base.data.root={root}"]) == 0
    out = capsys.readouterr().out
    assert f"model ViT-B-16-quickgelu, weights openai, benchmark imagenet, data root {root}" in out
    assert "epochs 10, batch 512, lr 1e-05" in out and "precision bf16" in out
    assert "carot: method=carot, loss.label_smoothing=0.1, loss.oc_weight=0.2, loss.sd_weight=1.5, loss.cross_weight=0.05" in out
    assert "slurm profile gpu-1: per trial 1 process, batch 512, 1 GPU(s), 12 CPUs per process, 64 GB, time limit " \
           "480 min" in out
    assert "#SBATCH --gpus-per-node=1" in out  # and the script submitit would submit
    assert not (tmp_path / "out").exists()  # a dry run writes nothing
    assert sweep_main([str(SWEEPS / "imagenet_ablation.yaml"), "--dry-run", "--out", str(tmp_path / "out"),
                       f"--set=base.data.root={root}", "--set=base.optim.accum_steps=4", "--profile=gpu-2"]) == 0
    out = capsys.readouterr().out
    assert "epochs 10, batch 512 = 4 micro-batches x 128 images a forward" in out
    assert "per trial 2 processes (DDP), batch 512 = 2 processes x 4 micro-batches x 64 images a forward" in out


def test_the_digitshift_dry_run_counts_steps_from_the_real_training_set(digitshift, capsys, tmp_path):
    assert sweep_main([str(SWEEPS / "ablation.yaml"), "--dry-run", "--out", str(tmp_path / "out")]) == 0
    out = capsys.readouterr().out
    per_epoch = len(digitshift.train) // 64  # the ablation's batch
    assert f"ft: method=ft; steps: {per_epoch} per epoch ({len(digitshift.train):,} training images / batch 64) " \
           f"x 8 epochs = {per_epoch * 8}" in out
    assert "zeroshot: none; steps: no training" in out
    assert "local: 2 trial(s) at once on this machine" in out


def test_a_benchmark_file_dry_run_counts_steps_from_its_files(capsys, tmp_path):
    written = write_benchmark(tmp_path / "data", per_class=10)  # 30 training images, 1 of each class held out
    assert sweep_main([str(SWEEPS / "file_ablation.yaml"), "--dry-run", "--out", str(tmp_path / "out"),
                       f"--set=base.data.benchmark={written.file}", "--set=base.model.name=digit-vit-t",
                       "--set=base.model.pretrained=null", "--set=base.optim.batch_size=9"]) == 0
    out = capsys.readouterr().out
    assert f"benchmark {written.file}" in out
    assert "carot: method=carot, loss.oc_weight=0.2, loss.sd_weight=1.5; steps: 3 per epoch (27 training images / " \
           "batch 9) x 10 epochs = 30" in out
    assert not (tmp_path / "out").exists()
