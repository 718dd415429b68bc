"""Pre-training on any benchmark's pool: a benchmark file's ``splits.pretrain`` (captions or labels), its cache key,
and the checks of ``model.pretrained`` before any work."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from benchmark_files import CLASSES, write_benchmark
from harness.commands.train import main as train_main
from harness.core.cli import run_cli
from harness.core.config import ModelConfig
from harness.data import load_benchmark
from harness.data.pipeline import clip_preprocess
from harness.models.clip import classifier_head, create_model, encode_images
from harness.trial.pretrain import PretrainConfig, PretrainPool, pretrain, pretrains_on, weights_path


def _with_pool(tmp_path, rows: list[str], header: str):
    written = write_benchmark(tmp_path)
    (tmp_path / "pool.csv").write_text("\n".join([header, *rows]) + "\n")
    spec = written.file.read_text().replace("splits:\n", "splits:\n  pretrain: {csv: pool.csv}\n", 1)
    written.file.write_text(spec)
    return written


def _caption_rows(written) -> list[str]:
    return [f"{path},a tiny picture of a {name}" for path, name in written.sets["train"]]


def test_a_benchmark_files_caption_pool_pretrains_and_reports_its_saved_weights_zero_shot(tmp_path):
    written = write_benchmark(tmp_path / "probe")
    written = _with_pool(tmp_path, _caption_rows(written), "path,caption")
    config = PretrainConfig(model="digit-vit-t", benchmark=str(written.file), epochs=2, batch_size=6, warmup_steps=0)
    out = tmp_path / "weights.pt"
    summary = pretrain(config, out, progress=False)
    assert summary["steps"] == 2 * (18 // 6)  # 18 pool rows (6 a class), 2 epochs
    model, tokenizer = create_model("digit-vit-t", pretrained=str(out))
    model.eval()
    head = classifier_head(model, tokenizer, CLASSES, ["a photo of a {}.", "a picture of a {}."])
    preprocess = clip_preprocess(model)
    paths = written.sets["test"]
    images = torch.stack([preprocess(Image.open(written.root / path).convert("RGB")) for path, _ in paths])
    labels = torch.tensor([CLASSES.index(name) for _, name in paths])
    with torch.no_grad():
        accuracy = (head(encode_images(model, images)).argmax(1) == labels).float().mean().item()
    assert summary["zeroshot"]["toy"]["acc"] == pytest.approx(accuracy, abs=1e-6)
    assert json.loads(out.with_suffix(".json").read_text())["config"]["benchmark"] == str(written.file)


def test_a_labelled_pool_is_captioned_with_each_rows_class_in_the_files_templates(tmp_path):
    written = write_benchmark(tmp_path / "probe")
    rows = [f"{path},{name}" for path, name in written.sets["train"]]
    written = _with_pool(tmp_path, rows, "path,label")
    benchmark = load_benchmark(str(written.file), progress=False)
    model, _ = create_model("digit-vit-t", pretrained=None)
    pool = PretrainPool(benchmark, model, batch_size=6)
    order = torch.randperm(len(pool), generator=torch.Generator().manual_seed(0))
    captions = [c for _, batch in pool.epoch(order.view(3, 6), np.random.default_rng(0)) for c in batch]
    expected_class = [written.sets["train"][i][1] for i in order.tolist()]
    templates = ["a photo of a {}.", "a picture of a {}."]
    assert all(caption in {t.format(name) for t in templates} for caption, name in zip(captions, expected_class))
    assert len(set(captions)) > len(CLASSES)  # both templates drawn


def test_the_weights_key_covers_the_pool_files_content_and_the_model(tmp_path):
    written = write_benchmark(tmp_path / "probe")
    written = _with_pool(tmp_path, _caption_rows(written), "path,caption")
    config = PretrainConfig(model="digit-vit-t", benchmark=str(written.file))
    base = weights_path(config)
    assert weights_path(PretrainConfig(model="digit-vit-t", benchmark=str(written.file))) == base
    assert weights_path(PretrainConfig(model="digit-vit-xs", benchmark=str(written.file))) != base
    assert base.name.startswith("digit-vit-t-bench-")
    first = written.root / written.sets["train"][0][0]
    Image.fromarray(np.zeros((50, 60, 3), np.uint8)).save(first)  # another image under the same name
    assert weights_path(config) != base


def test_pretrained_names_a_benchmark_only_when_it_is_one():
    assert pretrains_on("digitshift") and pretrains_on("iconshift") and pretrains_on("/data/bench.yaml")
    assert pretrains_on("imagenet")  # a benchmark: refused below for having no pool, not taken for a tag
    assert not pretrains_on("openai") and not pretrains_on(None) and not pretrains_on("/weights/model.pt")


@pytest.mark.parametrize("pretrained, message", [
    ("imagenet", "'imagenet' has no pre-training pool; benchmarks with one: digitshift, iconshift"),
    ("NOFILE", "no splits.pretrain, so there is no pool to pre-train on"),
])
def test_a_benchmark_without_a_pool_is_refused_before_any_work(tmp_path, capsys, pretrained, message):
    written = write_benchmark(tmp_path)
    pretrained = str(written.file) if pretrained == "NOFILE" else pretrained
    with pytest.raises(SystemExit) as info:
        run_cli(train_main, [f"model.pretrained={pretrained}", f"run_dir={tmp_path / 'run'}"])
    assert info.value.code == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_embedded_weights_default_to_digitshift_pool():
    config = PretrainConfig(model=ModelConfig().name, benchmark=ModelConfig().pretrained)
    assert config == PretrainConfig()
