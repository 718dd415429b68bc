from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import harness.data
from harness.core.errors import UnknownNameError
from harness.data import corruptions, load_benchmark
from harness.data.digitshift import build_digitshift
from harness.data.registry import PIXEL_MEAN, PIXEL_STD
from harness.data.sources import load_mnist_sheet

FIT_SETS = ("pretrain", "train", "val")


def _sets(benchmark):
    return {"pretrain": benchmark.pretrain, "train": benchmark.train, "val": benchmark.val, **benchmark.tests}


def test_api_shape(digitshift):
    assert digitshift.classnames == ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
    assert all("{}" in t for t in digitshift.templates + digitshift.zeroshot_templates)
    assert list(digitshift.tests)[0] == digitshift.id_test == "mnist"
    assert digitshift.ood_tests == ["uci", "rendered", "mnist-c1", "mnist-c2", "mnist-c3"]
    for dataset in _sets(digitshift).values():
        image, label = dataset[len(dataset) - 1]
        assert image.shape == (3, 32, 32) and image.dtype == torch.float32
        assert isinstance(label, int) and 0 <= label < 10


def test_sizes_and_class_balance(digitshift):
    expected = {"train": 200, "val": 50, "mnist": 100, "rendered": 500, "mnist-c1": 500, "mnist-c2": 500, "mnist-c3": 500}
    sets = _sets(digitshift)
    for name, per_class in expected.items():
        assert torch.bincount(sets[name].labels, minlength=10).tolist() == [per_class] * 10, name
    uci_total = 1797  # scikit-learn's load_digits
    uci_in_pretrain = sum(d == "uci" for d in digitshift.pretrain.meta["domain"])
    assert len(sets["uci"]) + uci_in_pretrain == uci_total
    domains = digitshift.pretrain.meta["domain"]
    assert {d: domains.count(d) for d in set(domains)} == {
        "mnist": 1500, "corrupted": 1500, "rendered": 1500, "uci": uci_in_pretrain}


def test_corrupted_sets_hold_every_corruption_of_every_id_test_image(digitshift):
    from harness.data.corruptions import CORRUPTIONS

    id_sources = digitshift.tests["mnist"].meta["source"]
    for severity in (1, 2, 3):
        meta = digitshift.tests[f"mnist-c{severity}"].meta
        pairs = set(zip(meta["source"], meta["detail"]))
        assert pairs == {(source, name) for source in id_sources for name in CORRUPTIONS}
        assert len(pairs) == len(meta["source"])  # each (image, corruption) once


def test_splits_are_disjoint(digitshift):
    sets = _sets(digitshift)
    sources = {name: set(d.meta["source"]) for name, d in sets.items()}
    for i, a in enumerate(FIT_SETS):
        for b in FIT_SETS[i + 1:]:
            assert not sources[a] & sources[b], (a, b)
    fitted = set().union(*(sources[name] for name in FIT_SETS))
    for name in digitshift.tests:
        assert not sources[name] & fitted, name
    # by content too: no fine-tuning image appears in any test set
    train_bytes = {image.numpy().tobytes() for image in digitshift.train.images}
    for name, dataset in digitshift.tests.items():
        assert not train_bytes & {image.numpy().tobytes() for image in dataset.images}, name


def test_mnist_tiles_match_the_sheet():
    tiles, labels = load_mnist_sheet()
    sheet = Image.open(Path(harness.data.__file__).parent / "assets" / "digits.png").convert("L")
    for index in (0, 99, 100, 2501, 4999):
        row, col = divmod(index, 100)
        crop = np.asarray(sheet.crop((col * 20, row * 20, col * 20 + 20, row * 20 + 20)))
        assert np.array_equal(tiles[index], crop)
        assert labels[index] == row // 5


def test_images_are_normalised_from_uint8(digitshift):
    raw = digitshift.train.images[7].float() / 255.0
    image, _ = digitshift.train[7]
    assert torch.allclose(image[1], (raw - PIXEL_MEAN) / PIXEL_STD)
    assert torch.equal(image[0], image[2])


def test_same_seed_same_tensors_other_seed_other_split(digitshift):
    again = build_digitshift(seed=0, progress=False)
    for name, dataset in _sets(digitshift).items():
        assert torch.equal(again[name]["images"], dataset.images), name
        assert torch.equal(again[name]["labels"], dataset.labels), name
    other = build_digitshift(seed=1, progress=False)
    assert set(other["train"]["source"]) != set(digitshift.train.meta["source"])
    assert not torch.equal(other["rendered"]["images"], digitshift.tests["rendered"].images)


def test_cached_load_returns_the_built_tensors(digitshift):
    reloaded = load_benchmark("digitshift", progress=False)
    assert torch.equal(reloaded.tests["mnist-c3"].images, digitshift.tests["mnist-c3"].images)


def test_unknown_benchmark():
    with pytest.raises(UnknownNameError, match="digitshift"):
        load_benchmark("cifar-99")


@pytest.mark.parametrize("name", corruptions.CORRUPTIONS)
def test_corruption_strength_grows_with_severity(digitshift, name):
    clean = digitshift.tests["mnist"].images[:40].numpy()
    distances = []
    for severity in corruptions.SEVERITIES:
        rng = np.random.default_rng(0)
        corrupted = np.stack([corruptions.corrupt(image, name, severity, rng) for image in clean])
        distances.append(np.abs(corrupted.astype(float) - clean).mean())
    assert 0 < distances[0] < distances[1] < distances[2], distances


def test_corruption_rejects_unknown_severity():
    with pytest.raises(ValueError, match="severity"):
        corruptions.corrupt(np.zeros((32, 32), np.uint8), "contrast", 4, np.random.default_rng(0))


def test_batches_serve_the_rows_in_the_order_given(digitshift):
    dataset = digitshift.val
    order = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(0))
    seen = torch.cat([index for _, _, index in dataset.batches(64, order)])
    assert torch.equal(seen, order)
    share = torch.arange(7, 20)  # e.g. one process's share of an evaluation
    images, labels, index = next(iter(dataset.batches(100, share)))
    assert torch.equal(index, share) and torch.equal(labels, dataset.labels[7:20])
    assert torch.equal(images[0], dataset[7][0])
    images, labels, index = next(iter(dataset.batches(5)))
    assert torch.equal(images[3], dataset[3][0]) and torch.equal(labels, dataset.labels[:5])
