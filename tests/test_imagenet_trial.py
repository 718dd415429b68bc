"""The imagenet benchmark end to end on a tiny generated tree: a CaRot trial reads its images through loader
batches, and each test set is scored over its own classes (checked against a hand computation)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from imagenet_trees import PICK, WNIDS, imagenet_family
from PIL import Image
from torch.utils.data import Dataset
from torchmetrics.functional.classification import multiclass_calibration_error

from harness.core.config import DataConfig, RunConfig
from harness.core.errors import ConfigError, UsageError
from harness.data import load_benchmark
from harness.data.finetune_captions import CaptionedImages, TemplateCaptions
from harness.data.imagenet import imagenet_classnames
from harness.data.pipeline import EpochSampler, clip_preprocess
from harness.models.clip import classifier_head, create_model
from harness.trial.batches import LoaderBatches
from harness.trial.distributed import DistributedEnvironment
from harness.trial.runner import run

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def family(tmp_path_factory):
    return imagenet_family(tmp_path_factory.mktemp("data"))


@pytest.fixture(scope="module")
def record(family, tmp_path_factory):
    config = RunConfig.model_validate({
        "model": {"name": "digit-vit-t", "pretrained": None},
        "data": {"benchmark": "imagenet", "root": str(family), "val_per_class": 1, "num_workers": 0, "templates": "simple"},
        "method": "carot", "loss": {"sd_weight": 1.0, "oc_weight": 0.2},
        "ema": {"period": 1}, "optim": {"epochs": 1, "batch_size": 4, "warmup_steps": 1},
        "eval": {"batch_size": 8, "wise_alphas": [0.5]}, "tracking": {"mode": "disabled"},
        "run_dir": str(tmp_path_factory.mktemp("run")),
    })
    torch.manual_seed(0)
    return run(config, progress=False)


def _logits(record: dict, paths: list, border: int = 0) -> torch.Tensor:
    """1000-way logits of the trial's fine-tuned model on image files, computed here from its saved weights."""
    model, tokenizer = create_model("digit-vit-t", None)
    model.load_state_dict(torch.load(record.paths.model, weights_only=True))
    model.eval()
    from open_clip.zero_shot_metadata import SIMPLE_IMAGENET_TEMPLATES

    head = classifier_head(model, tokenizer, imagenet_classnames(), [t("{}") for t in SIMPLE_IMAGENET_TEMPLATES])
    preprocess = clip_preprocess(model)
    images = []
    for path in paths:
        image = Image.open(path).convert("RGB")
        width, height = image.size
        images.append(preprocess(image.crop((border, border, width - border, height - border))))
    with torch.no_grad():
        return head(F.normalize(model.encode_image(torch.stack(images)), dim=-1))


def _expected(logits: torch.Tensor, labels: list[int]) -> tuple[float, float]:
    probs = logits.softmax(dim=1)
    target = torch.tensor(labels)
    acc = (probs.argmax(dim=1) == target).float().mean().item()
    ece = multiclass_calibration_error(probs, target, num_classes=probs.shape[1], n_bins=15, norm="l1").item()
    return acc, ece


def test_trial_reports_every_set_found(record):
    assert record.status == "ok", record.error
    assert record.ood_tests == ["imagenet-v2", "imagenet-r", "objectnet"]  # no -A, no Sketch in the tree
    sizes = {name: report.n for name, report in record.tests.items()}
    assert sizes == {"val": 4, "imagenet": 8, "imagenet-v2": 8, "imagenet-r": 4, "objectnet": 6}
    assert record.timings.steps == 3  # 12 training images (16 minus 1 per class for val) / batch 4
    assert record.teacher is not None and len(record.wise_ft) == 1


def test_imagenet_r_is_scored_over_its_own_classes(record, family):
    folders = [family / "imagenet-r" / WNIDS[i] for i in PICK[1:3]]
    paths = [p for folder in folders for p in sorted(folder.iterdir())]
    labels = [k for k, folder in enumerate(folders) for _ in sorted(folder.iterdir())]
    acc, ece = _expected(_logits(record, paths)[:, PICK[1:3]], labels)
    assert record.tests["imagenet-r"].acc == pytest.approx(acc, abs=1e-6)
    assert record.tests["imagenet-r"].ece == pytest.approx(ece, abs=1e-4)


def test_objectnet_pools_the_max_logit_of_each_class_with_and_without_temperature(record, family):
    """Classes: bananas (ImageNet 3), chairs (17 and 250: max of both), mugs (981); the unmapped folder is left out;
    the 1-pixel border is cropped; the temperature-scaled report pools the scaled logits."""
    folders = ["bananas", "chairs", "mugs"]
    paths = [family / "objectnet-1.0" / "images" / f / f"{j}.png" for f in folders for j in range(2)]
    logits = _logits(record, paths, border=1)
    temperature = record.temperature_scaled.temperature
    for scaled, report in ((logits, record.tests), (logits / temperature, record.temperature_scaled.tests)):
        pooled = torch.stack([scaled[:, 3], scaled[:, [17, 250]].max(dim=1).values, scaled[:, 981]], dim=1)
        acc, ece = _expected(pooled, [0, 0, 1, 1, 2, 2])
        assert report["objectnet"].acc == pytest.approx(acc, abs=1e-6)
        assert report["objectnet"].ece == pytest.approx(ece, abs=1e-4)


class _Numbered(Dataset):
    """Image ``i`` is a constant tensor of value ``i``, so a batch shows which images it holds."""

    def __len__(self) -> int:
        return 24

    def __getitem__(self, index: int):
        return torch.full((1, 2, 2), float(index)), index % 3


def _ids(batch) -> list[int]:
    return batch.images[:, 0, 0, 0].long().tolist()


def _source(rank: int = 0, world: int = 1, batch_size: int = 4) -> LoaderBatches:
    env = DistributedEnvironment(rank=rank, world_size=world)
    captioned = CaptionedImages(_Numbered(), TemplateCaptions(["a", "b", "c"], ["x {}", "y {}", "z {}"], seed=7))
    return LoaderBatches(captioned, batch_size, 7, env, CPU, num_workers=0)


def test_loader_batches_resume_mid_epoch_on_the_same_images_and_captions():
    steps = 6  # one epoch of 24 / 4 batches, then the next epoch begins
    straight = _source()
    sequence = [straight.at(step) for step in range(steps + 2)]
    assert sorted(i for b in sequence[:steps] for i in _ids(b)) == list(range(24))  # an epoch sees each image once
    assert _ids(sequence[steps]) != _ids(sequence[0])  # the next epoch has its own order
    resumed = _source()
    for step in (3, 4, 7):  # a jump mid-epoch, the next step, a jump into the next epoch
        again = resumed.at(step)
        assert _ids(again) == _ids(sequence[step])
        assert again.captions == sequence[step].captions
        assert again.labels.tolist() == sequence[step].labels.tolist()


def test_two_ranks_share_each_batch_of_one_process():
    single, ranks = _source(), [_source(rank, 2) for rank in (0, 1)]
    for step in range(8):
        halves = [source.at(step) for source in ranks]
        assert all(len(_ids(half)) == 2 for half in halves)
        assert sorted(_ids(halves[0]) + _ids(halves[1])) == sorted(_ids(single.at(step)))


def test_epoch_sampler_start_skips_this_ranks_first_keys():
    sampler = EpochSampler(10, seed=1, num_replicas=2, rank=1)
    sampler.set_epoch(3)
    full = list(sampler)
    sampler.set_epoch(3, start=2)
    assert list(sampler) == full[2:] and len(sampler) == 3


@pytest.mark.parametrize("data, message", [
    (lambda root: {"root": None}, "data.root"),
    (lambda root: {"root": str(root / "nowhere")}, "directory not found"),
    (lambda root: {"root": str(root), "val_per_class": 4}, "val_per_class=4"),
])
def test_bad_data_settings_name_the_problem(family, data, message):
    with pytest.raises(ConfigError, match=message):
        load_benchmark("imagenet", data=DataConfig(benchmark="imagenet", **data(family)), progress=False)


def test_a_root_without_any_shift_is_refused(tmp_path, family):
    (tmp_path / "imagenet").symlink_to(family / "imagenet")
    with pytest.raises(ConfigError, match="no distribution-shift set"):
        load_benchmark("imagenet", data=DataConfig(benchmark="imagenet", root=str(tmp_path)), progress=False)


def test_val_split_is_the_same_for_every_trial_and_disjoint_from_train(family):
    data = DataConfig(benchmark="imagenet", root=str(family), val_per_class=1, num_workers=0)
    first, second = (load_benchmark("imagenet", data=data, progress=False) for _ in range(2))
    val = {first.val.path(i) for i in range(len(first.val))}
    assert val == {second.val.path(i) for i in range(len(second.val))}
    assert not val & {first.train.path(i) for i in range(len(first.train))}
    assert sorted(np.bincount(first.val.labels.numpy(), minlength=1000)[PICK]) == [1, 1, 1, 1]


def _caption_table(family, path) -> int:
    """A CSV captioning every image of imagenet/train (validation images included), paths relative to the table."""
    rows = sorted((family / "imagenet" / "train").glob("*/*.JPEG"))
    path.write_text("filepath,caption\n" + "".join(f"{p.relative_to(path.parent)},a photo of thing {p.parent.name}\n"
                                                 for p in rows))
    return len(rows)


def test_a_caption_table_replaces_templates_without_the_validation_images(family, tmp_path):
    rows = _caption_table(family, family / "captions.csv")
    data = DataConfig(benchmark="imagenet", root=str(family), val_per_class=1, num_workers=0,
                      captions=str(family / "captions.csv"))
    benchmark = load_benchmark("imagenet", data=data, progress=False)
    val = {benchmark.val.path(i) for i in range(len(benchmark.val))}
    table = benchmark.train.table
    assert len(table) == rows - len(val) == 12 and not val & set(table.paths)
    config = RunConfig.model_validate({
        "model": {"name": "digit-vit-t", "pretrained": None}, "data": data.model_dump() | {"templates": "simple"},
        "method": "flyp", "optim": {"epochs": 1, "batch_size": 4, "warmup_steps": 1},
        "eval": {"batch_size": 8, "temperature_scaling": False}, "tracking": {"mode": "disabled"},
        "run_dir": str(tmp_path / "flyp"),
    })
    record = run(config, progress=False)
    assert record.status == "ok", record.error
    assert record.timings.steps == 3
    with pytest.raises(UsageError, match="caption table has no class labels, which ft needs"):
        run(config.model_copy(update={"method": "ft", "run_dir": str(tmp_path / "ft")}), progress=False)


def test_a_sweep_with_a_wrong_data_root_stops_before_any_job(tmp_path):
    from harness.commands.sweep import main as sweep_main

    spec = Path(__file__).resolve().parent.parent / "sweeps" / "imagenet_ablation.yaml"
    with pytest.raises(ConfigError, match="data.root: directory not found"):
        sweep_main([str(spec), "--launcher", "local", "--out", str(tmp_path / "out"),
                    "--storage", f"sqlite:///{tmp_path / 'study.db'}", "--set", f"base.data.root={tmp_path / 'nowhere'}"])
    assert not (tmp_path / "study.db").exists() and not (tmp_path / "out" / "jobs").exists()
