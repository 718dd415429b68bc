"""Benchmarks described by a file: what they serve, the partial-class scoring, the content digest, every bad input
refused with one line before any work, and FLYP and CaRot trials on one through the sweep's local launcher."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import yaml
from benchmark_files import CLASSES, PARTIAL, write_benchmark
from PIL import Image
from torchmetrics.functional.classification import multiclass_calibration_error

from harness.commands.sweep import main as sweep_main
from harness.commands.train import main as train_main
from harness.core.cli import run_cli
from harness.core.config import DataConfig
from harness.core.errors import ConfigError
from harness.data import LoadedBenchmarks, check_benchmark, load_benchmark
from harness.data.benchmark_file import benchmark_digest, read_benchmark_file, training_size
from harness.data.pipeline import clip_preprocess
from harness.models.clip import classifier_head, create_model
from harness.trial.set_reports import set_report


@pytest.fixture
def written(tmp_path):
    return write_benchmark(tmp_path / "data")


def _load(file: Path, **data):
    return load_benchmark(str(file), data=DataConfig(benchmark=str(file), num_workers=0, **data), progress=False)


def _as_written(dataset, root: Path) -> list[tuple[str, str]]:
    """(path relative to root, class name) of every sample of a set, read back through its label space."""
    return sorted((str(Path(dataset.path(i)).relative_to(root)), dataset.classnames[int(dataset.labels[i])])
                  for i in range(len(dataset)))


def test_sets_hold_the_images_and_labels_that_were_written(written):
    benchmark = _load(written.file)
    assert benchmark.name == "toy" and benchmark.classnames == CLASSES and benchmark.id_test == "toy"
    assert list(benchmark.tests) == ["toy", "sketch", "photos"] and benchmark.ood_tests == ["sketch", "photos"]
    assert benchmark.zeroshot_templates == benchmark.templates == ["a photo of a {}.", "a picture of a {}."]
    assert _as_written(benchmark.tests["toy"], written.root) == sorted(written.sets["test"])
    assert _as_written(benchmark.tests["sketch"], written.root) == sorted(written.sets["sketch"])  # names and indices
    assert _as_written(benchmark.tests["photos"], written.root) == sorted(written.sets["photos"])
    assert benchmark.tests["photos"].classnames == ("cat", "dog")  # in the benchmark's class order
    assert benchmark.file == str(written.file) and len(benchmark.digest) == 16


def test_validation_is_a_fixed_share_of_each_training_class(written):
    benchmark = _load(written.file)
    train, val = _as_written(benchmark.train, written.root), _as_written(benchmark.val, written.root)
    assert sorted(train + val) == sorted(written.sets["train"]) and not set(train) & set(val)
    assert sorted(name for _, name in val) == sorted(CLASSES)  # round(0.1 x 6) = 1 image of each class
    assert _as_written(_load(written.file).val, written.root) == val  # the same images on every load
    assert training_size(read_benchmark_file(written.file, check=False)) == 6 * 3 - 3  # listed, nothing opened
    half = write_benchmark(written.root.parent / "half", val_share=0.5)
    assert sorted(name for _, name in _as_written(_load(half.file).val, half.root)) == sorted(CLASSES * 3)


def test_a_given_val_split_classnames_file_and_root(tmp_path):
    data = write_benchmark(tmp_path / "images").root
    (tmp_path / "classes.txt").write_text("\n".join(CLASSES) + "\n")
    spec = yaml.safe_load((data / "bench.yaml").read_text())
    del spec["classnames"]
    spec |= {"classnames_file": "classes.txt", "root": "images"}
    spec["splits"]["val"] = {"folder": "test"}
    (tmp_path / "bench.yaml").write_text(yaml.safe_dump(spec))
    benchmark = _load(tmp_path / "bench.yaml")
    assert benchmark.classnames == CLASSES
    assert _as_written(benchmark.val, data) == _as_written(benchmark.tests["toy"], data)
    assert len(benchmark.train) == 18  # the whole training folder: nothing held out


def test_images_of_any_size_get_the_models_preprocessing(written):
    benchmark = _load(written.file)
    model, _ = create_model("digit-vit-t", None)
    benchmark.set_transforms(clip_preprocess(model, train=True), clip_preprocess(model))
    sizes = {Image.open(written.root / path).size for path, _ in written.sets["test"]}
    assert len(sizes) > 1  # mixed sizes on disk
    images = [benchmark.tests["toy"][i][0] for i in range(len(benchmark.tests["toy"]))]
    assert {tuple(image.shape) for image in images} == {(3, 32, 32)}  # the model's image size


def test_a_partial_class_set_is_scored_on_its_classes_logits(written):
    photos = _load(written.file).tests["photos"]
    rng = np.random.default_rng(1)
    logits = rng.normal(size=(len(photos), len(CLASSES))) * 2
    logits[0, CLASSES.index("bird")] = 40.0  # a confident prediction outside the set's classes: must not count
    # By hand: the set's labels are positions among its classes (cat, dog), the softmax over their columns only.
    columns = [CLASSES.index("cat"), CLASSES.index("dog")]
    truth = np.array([["cat", "dog"].index(photos.classnames[int(label)]) for label in photos.labels])
    restricted = torch.tensor(logits[:, columns]).softmax(dim=1)
    expected_acc = float((restricted.argmax(dim=1).numpy() == truth).mean())
    expected_ece = multiclass_calibration_error(restricted, torch.tensor(truth), num_classes=2, n_bins=15).item()
    report = set_report(torch.tensor(logits), photos)
    assert report["n"] == len(photos) == len(PARTIAL) * 2
    assert report["acc"] == pytest.approx(expected_acc)
    assert report["ece"] == pytest.approx(expected_ece)


def test_the_digest_follows_the_data_not_its_location(written, tmp_path):
    digest = benchmark_digest(written.file)
    assert benchmark_digest(written.file) == digest
    moved = tmp_path / "moved"
    shutil.copytree(written.root, moved)
    assert benchmark_digest(written.file, DataConfig(benchmark=str(written.file), root=str(moved))) == digest
    image = moved / written.sets["train"][0][0]
    image.write_bytes(image.read_bytes() + b"\0")  # one file's size
    assert benchmark_digest(moved / "bench.yaml") != digest
    relabelled = write_benchmark(tmp_path / "relabelled")
    csv = relabelled.root / "sketch.csv"
    csv.write_text(csv.read_text().replace("sketches/s0.png,0", "sketches/s0.png,dog"))
    assert benchmark_digest(relabelled.file) != benchmark_digest(write_benchmark(tmp_path / "same").file)


def test_a_process_serves_a_loaded_benchmark_again_until_its_data_changes(written):
    loaded, data = LoadedBenchmarks(), DataConfig(benchmark=str(written.file), num_workers=0)
    first = loaded.load(data, progress=False)
    assert loaded.load(data, progress=False) is first
    image = written.root / written.sets["test"][0][0]
    image.write_bytes(image.read_bytes() + b"\0")
    again = loaded.load(data, progress=False)
    assert again is not first and again.digest != first.digest


def _rewrite(written, change) -> None:
    spec = yaml.safe_load(written.file.read_text())
    change(spec)
    written.file.write_text(yaml.safe_dump(spec))


def _csv_line(written, line: str) -> None:
    with open(written.root / "sketch.csv", "a") as handle:
        handle.write(line + "\n")


def _garbage_first_test_image(written) -> None:
    (written.root / sorted(written.sets["test"])[0][0]).write_text("not an image")


def _empty_test_folder(written) -> None:
    (written.root / "empty").mkdir()
    _rewrite(written, lambda s: s["splits"].update(test={"folder": "empty"}))


BAD_FILES = {
    "missing folder": (lambda w: _rewrite(w, lambda s: s["splits"].update(train={"folder": "trian"})),
                       "splits.train.folder: directory not found"),
    "missing CSV column": (lambda w: _rewrite(w, lambda s: s["splits"]["ood"]["sketch"].update(label_column="lbl")),
                           "no column 'lbl' (columns: path, label)"),
    "unknown class in a CSV": (lambda w: _csv_line(w, "sketches/s0.png,horse"), "unknown class 'horse'"),
    "unknown class index": (lambda w: _csv_line(w, "sketches/s0.png,7"), "unknown class '7'"),
    "unknown class folder": (lambda w: (w.root / "train" / "horse").mkdir(), "folder 'horse'"),
    "unknown class in classes": (lambda w: _rewrite(w, lambda s: s["splits"]["ood"]["photos"].update(classes=["cat", "cta"])),
                                 "splits.ood.photos.classes: unknown class 'cta'"),
    "empty split": (_empty_test_folder, "splits.test: empty split"),
    "unreadable image": (_garbage_first_test_image, "splits.test: cannot read image"),
    "missing image of a CSV": (lambda w: (w.root / "sketches" / "s3.png").unlink(), "image file not found"),
    "unknown key": (lambda w: _rewrite(w, lambda s: s.update(colour="red")), "colour: unknown key"),
    "template without a slot": (lambda w: _rewrite(w, lambda s: s.update(templates=["a photo"])), "must hold '{}'"),
}


@pytest.mark.parametrize("case", BAD_FILES)
def test_bad_benchmark_files_raise_one_line_naming_the_problem(written, case):
    change, words = BAD_FILES[case]
    change(written)
    with pytest.raises(ConfigError) as info:
        check_benchmark(DataConfig(benchmark=str(written.file)))
    assert words in str(info.value) and "\n" not in str(info.value)


def _spec(tmp_path: Path, benchmark: str, methods: tuple[str, ...] = ("flyp",), **base) -> Path:
    spec = {"name": "files", "base": {"model": {"name": "digit-vit-t", "pretrained": None},
                                      "data": {"benchmark": benchmark, "num_workers": 0},
                                      "optim": {"epochs": 1, "batch_size": 6, "warmup_steps": 1},
                                      "eval": {"batch_size": 16, "bootstrap": 20, "floor_draws": 20}, **base},
            "search": {"method": {"grid": list(methods)}}, "launcher": {"kind": "local", "parallelism": 2},
            "tracking": {"mode": "disabled"}, "out": str(tmp_path / "out")}
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


BAD_SETTINGS = {  # (spec overrides, words): the model, its weights, the data root, and an unknown benchmark
    "unknown model": (["base.model.name=ViT-Q"], "model.name: unknown model 'ViT-Q'"),
    "unknown pretrained tag": (["base.model.name=ViT-B-32", "base.model.pretrained=laion9"],
                               "unknown pretrained tag 'laion9' for ViT-B-32"),
    "missing weights file": (["base.model.pretrained=/nowhere/weights.pt"], "/nowhere/weights.pt: no such weights file"),
    "hf-hub model not cached": (["base.model.name=hf-hub:nobody/nothing"], "not in the local Hugging Face cache"),
    "projection the orthogonality term cannot find": (
        ["base.model.name=ViT-B-16-SigLIP", "search.method.grid=[carot]"], "no final visual projection found in TimmModel"),
    "missing data root": (["base.data.root=/nowhere"], "data.root: directory not found: /nowhere"),
    "unknown benchmark": (["base.data.benchmark=digitshfit"], "unknown benchmark 'digitshfit'"),
    "a batch larger than the training set": (["base.optim.batch_size=64"],
                                             "optim.batch_size (64) exceeds the training set (15 images of"),
    "imagenet without its root": (["base.data.benchmark=imagenet", "base.data.root=/nowhere"],
                                  "data.root: directory not found: /nowhere"),
}


def _dry_run_exit(path: Path, extra: list[str], capsys) -> tuple[int, list[str]]:
    with pytest.raises(SystemExit) as info:
        run_cli(sweep_main, [str(path), "--dry-run", *extra])
    return info.value.code, capsys.readouterr().err.strip().splitlines()


@pytest.mark.parametrize("case", BAD_FILES)
def test_a_dry_run_refuses_a_bad_benchmark_file_with_exit_2(written, tmp_path, capsys, case):
    change, words = BAD_FILES[case]
    change(written)
    code, err = _dry_run_exit(_spec(tmp_path, str(written.file)), [], capsys)
    assert code == 2 and len(err) == 1 and words in err[0], err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("case", BAD_SETTINGS)
def test_a_dry_run_refuses_a_bad_model_or_data_root_with_exit_2(written, tmp_path, capsys, case):
    overrides, words = BAD_SETTINGS[case]
    code, err = _dry_run_exit(_spec(tmp_path, str(written.file)), [f"--set={o}" for o in overrides], capsys)
    assert code == 2 and len(err) == 1 and words in err[0], err
    assert not (tmp_path / "out").exists()


def test_a_dry_run_of_a_good_benchmark_file_passes(written, tmp_path, capsys):
    assert sweep_main([str(_spec(tmp_path, str(written.file), ("carot",))), "--dry-run"]) == 0
    assert f"benchmark {written.file}" in capsys.readouterr().out


def test_train_checks_before_pre_training_anything(tmp_path, monkeypatch, capsys):
    cold = tmp_path / "cold-cache"
    monkeypatch.setenv("CAROT_HARNESS_CACHE", str(cold))
    with pytest.raises(SystemExit) as info:
        run_cli(train_main, ["data.benchmark=typo"])  # the embedded model is not built: it would pre-train first
    assert info.value.code == 2 and "unknown benchmark 'typo'" in capsys.readouterr().err
    assert not (cold / "pretrained").exists()


# --------------------------------------------------------------------------- trials through the local launcher


@pytest.fixture(scope="module")
def file_sweep(tmp_path_factory, private_cache):
    tmp_path = tmp_path_factory.mktemp("file-sweep")
    written = write_benchmark(tmp_path / "data", per_class=8)
    path = _spec(tmp_path, str(written.file), ("flyp", "carot"))
    assert sweep_main([str(path)]) == 0
    return tmp_path, path, written


def _photo_logits(record: dict, written) -> tuple[torch.Tensor, list[str]]:
    """Logits of the trial's saved model on the partial set's images, computed here from files and weights."""
    model, tokenizer = create_model("digit-vit-t", None)
    model.load_state_dict(torch.load(record["paths"]["model"], weights_only=True))
    model.eval()
    head = classifier_head(model, tokenizer, CLASSES, ["a photo of a {}.", "a picture of a {}."])
    preprocess = clip_preprocess(model)
    paths = sorted(written.sets["photos"])
    images = torch.stack([preprocess(Image.open(written.root / path).convert("RGB")) for path, _ in paths])
    with torch.no_grad():
        return head(F.normalize(model.encode_image(images), dim=-1)), [name for _, name in paths]


@pytest.mark.slow
def test_flyp_and_carot_trials_on_a_benchmark_file(file_sweep):
    tmp_path, _, written = file_sweep
    out = tmp_path / "out"
    lines = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert sorted(line["params"]["method"] for line in lines) == ["carot", "flyp"]
    for line in lines:
        assert line["state"] == "COMPLETE", line["error"]
        record = json.loads((out / line["record"]).read_text())
        assert record["benchmark"] == "toy" and record["benchmark_file"] == str(written.file)
        assert record["data_digest"] == benchmark_digest(written.file)
        assert set(record["tests"]) == {"val", "toy", "sketch", "photos"} and record["ood_tests"] == ["sketch", "photos"]
        assert record["tests"]["sketch"]["n"] == 7 and record["tests"]["photos"]["n"] == 4
        logits, names = _photo_logits(record, written)
        restricted = logits[:, [CLASSES.index("cat"), CLASSES.index("dog")]].softmax(dim=1).double()
        truth = torch.tensor([["cat", "dog"].index(name) for name in names])
        photos = record["tests"]["photos"]
        assert photos["acc"] == pytest.approx((restricted.argmax(dim=1) == truth).double().mean().item())
        expected = multiclass_calibration_error(restricted, truth, num_classes=2, n_bins=15).item()
        assert photos["ece"] == pytest.approx(expected, abs=1e-5)
        if line["params"]["method"] == "carot":
            assert set(record["teacher"]["tests"]) == {"val", "toy", "sketch", "photos"}


@pytest.mark.slow
def test_the_study_refuses_a_benchmark_whose_data_changed(file_sweep, capsys):
    tmp_path, path, written = file_sweep
    image = written.root / written.sets["test"][0][0]
    saved = image.read_bytes()
    image.write_bytes(saved + b"\0")
    try:
        with pytest.raises(SystemExit) as info:
            run_cli(sweep_main, [str(path)])
    finally:
        image.write_bytes(saved)
    assert info.value.code == 2 and "benchmark files' data changed" in capsys.readouterr().err
    assert len((tmp_path / "out" / "results.jsonl").read_text().splitlines()) == 2
