"""digitshift: the embedded benchmark. MNIST is the ID task; UCI scans, printed digits and
corrupted MNIST are its distribution shifts, in the roles ImageNet-V2/-R/-C play in the paper.

Splits (all seeded and disjoint by source image; sizes per class x 10 classes):

=========== ============================================================ =========
set         contents                                                     size
=========== ============================================================ =========
pretrain    MNIST 150/class + the same images corrupted once (random     5,096
            corruption, severity 1-3) + UCI 1/3 + 150 printed/class
train       MNIST 200/class (ID fine-tuning)                             2,000
val         MNIST 50/class (ID validation: model selection, temperature)   500
mnist       MNIST 100/class (ID test)                                    1,000
uci         the other 2/3 of UCI optical digits (per class)             1,201
rendered    500 printed digits/class, a separate random stream           5,000
mnist-c1..3 every ID test image under each of the 5 corruptions, one     5,000 each
            set per severity
=========== ============================================================ =========

The OOD sets are as large as their sources allow (UCI: all that pretraining leaves; the corrupted
sets: every corruption of every ID test image), so that their ECE resolves differences of about
a point: with 1,000 images at ~65% confidence, a perfectly calibrated model already shows an
expected ECE near 3% (its calibration noise floor, stored per set in every record). The ID test
cannot grow: the sheet's 5,000 digits are all allocated.

The corrupted test sets are made from the ID test images, as ImageNet-C is made from
ImageNet's validation set; no test image's source appears in pretrain, train or val.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from tqdm.auto import tqdm

from harness.core.config import DataConfig
from harness.core.storage import atomic_torch_save, cache_dir
from harness.data import captions, corruptions, sources
from harness.data.registry import Benchmark, ImageSet, register_benchmark

log = logging.getLogger(__name__)

VERSION = 2  # bump whenever the generated images change (2: OOD test sets 5x larger)
MNIST_SPLIT = {"pretrain": 150, "train": 200, "val": 50, "mnist": 100}  # per class, sums to 500
UCI_PRETRAIN_FRACTION = 1 / 3
RENDERED_PER_CLASS = {"pretrain": 150, "rendered": 500}
ID_TEST = "mnist"
TEST_SETS = (ID_TEST, "uci", "rendered", *(f"mnist-c{s}" for s in corruptions.SEVERITIES))
SMALL_TEST_PER_CLASS = 20  # digitshift-small

# Independent random streams, so that changing one part leaves the others as they were.
_STREAMS = {"mnist": 0, "uci": 1, "rendered-pretrain": 2, "rendered-test": 3, "corrupt-pretrain": 4, "corrupt-test": 5}


def _rng(seed: int, stream: str) -> np.random.Generator:
    return np.random.default_rng([seed, _STREAMS[stream]])


def _part(images: np.ndarray, labels: np.ndarray, source: list[str], domain: str, detail: list[str] | None = None) -> dict:
    return {
        "images": images.astype(np.uint8),
        "labels": labels.astype(np.int64),
        "source": list(source),
        "domain": [domain] * len(labels),
        "detail": list(detail) if detail is not None else [""] * len(labels),
    }


def _concat(parts: list[dict]) -> dict:
    return {
        key: np.concatenate([p[key] for p in parts]) if key in ("images", "labels") else sum((p[key] for p in parts), [])
        for key in parts[0]
    }


def _split_mnist(seed: int) -> dict[str, dict]:
    raw, labels = sources.load_mnist_sheet()
    framed = sources.frame_all(raw)
    rng = _rng(seed, "mnist")
    chosen: dict[str, list[int]] = {name: [] for name in MNIST_SPLIT}
    for label in range(10):
        order = rng.permutation(np.flatnonzero(labels == label))
        start = 0
        for name, count in MNIST_SPLIT.items():
            chosen[name].extend(order[start : start + count].tolist())
            start += count
    return {
        name: _part(framed[idx], labels[idx], [f"mnist:{i}" for i in idx], "mnist") for name, idx in chosen.items()
    }


def _split_uci(seed: int) -> tuple[dict, dict]:
    raw, labels = sources.load_uci_digits()
    framed = sources.frame_all(raw)
    rng = _rng(seed, "uci")
    pretrain, test = [], []
    for label in range(10):
        order = rng.permutation(np.flatnonzero(labels == label))
        cut = int(len(order) * UCI_PRETRAIN_FRACTION)
        pretrain.extend(order[:cut].tolist())
        test.extend(order[cut:].tolist())
    make = lambda idx: _part(framed[idx], labels[idx], [f"uci:{i}" for i in idx], "uci")  # noqa: E731
    return make(pretrain), make(test)


def _rendered(seed: int, split: str, fonts: list[Path]) -> dict:
    labels = np.repeat(np.arange(10), RENDERED_PER_CLASS[split])
    stream = "rendered-pretrain" if split == "pretrain" else "rendered-test"
    images, font_names = sources.render_digits(labels, fonts, _rng(seed, stream))
    return _part(images, labels, [f"rendered-{split}:{i}" for i in range(len(labels))], "rendered", font_names)


def _corrupted_pretrain(seed: int, clean: dict) -> dict:
    rng = _rng(seed, "corrupt-pretrain")
    names = [corruptions.CORRUPTIONS[int(rng.integers(len(corruptions.CORRUPTIONS)))] for _ in clean["labels"]]
    severities = rng.integers(1, len(corruptions.SEVERITIES) + 1, len(names))
    images = np.stack([corruptions.corrupt(im, n, int(s), rng) for im, n, s in zip(clean["images"], names, severities)])
    return _part(images, clean["labels"], clean["source"], "corrupted", names)


def _corrupted_tests(seed: int, clean: dict) -> dict[str, dict]:
    """Per severity, every clean image under every corruption (corruption-major order), as ImageNet-C does."""
    rng = _rng(seed, "corrupt-test")
    tests = {}
    for severity in corruptions.SEVERITIES:
        parts = [
            _part(np.stack([corruptions.corrupt(im, name, severity, rng) for im in clean["images"]]),
                  clean["labels"], clean["source"], "corrupted", [name] * len(clean["labels"]))
            for name in corruptions.CORRUPTIONS
        ]
        tests[f"mnist-c{severity}"] = _concat(parts)
    return tests


def build_digitshift(seed: int = 0, progress: bool = True) -> dict[str, dict]:
    """Generate every split from the raw sources; returns ``{set name: arrays and provenance}``."""
    steps = tqdm(total=5, desc="building digitshift", disable=not progress, leave=False)
    mnist = _split_mnist(seed)
    steps.update()
    uci_pretrain, uci_test = _split_uci(seed)
    steps.update()
    fonts = sources.usable_digit_fonts()
    rendered_pretrain, rendered_test = _rendered(seed, "pretrain", fonts), _rendered(seed, "rendered", fonts)
    steps.update()
    corrupted_pretrain = _corrupted_pretrain(seed, mnist["pretrain"])
    steps.update()
    corrupted_tests = _corrupted_tests(seed, mnist[ID_TEST])
    steps.update()
    steps.close()
    sets = {
        "pretrain": _concat([mnist["pretrain"], corrupted_pretrain, uci_pretrain, rendered_pretrain]),
        "train": mnist["train"],
        "val": mnist["val"],
        ID_TEST: mnist[ID_TEST],
        "uci": uci_test,
        "rendered": rendered_test,
        **corrupted_tests,
    }
    return {name: {**data, "images": torch.from_numpy(data["images"]), "labels": torch.from_numpy(data["labels"])}
            for name, data in sets.items()}


def cache_path(seed: int) -> Path:
    return cache_dir() / "benchmarks" / f"digitshift-v{VERSION}-seed{seed}.pt"


def _load_or_build(seed: int, progress: bool) -> dict[str, dict]:
    path = cache_path(seed)
    if path.exists():
        return torch.load(path, weights_only=True)
    started = time.perf_counter()
    sets = build_digitshift(seed, progress)
    atomic_torch_save(sets, path)
    if progress:
        log.info("built digitshift (seed %d) in %.1f s -> %s", seed, time.perf_counter() - started, path)
    return sets


@register_benchmark("digitshift", version=VERSION, pretrains=True, train_size=MNIST_SPLIT["train"] * len(captions.DIGIT_NAMES))
def load_digitshift(seed: int = 0, progress: bool = True, data: DataConfig | None = None) -> Benchmark:
    """The digitshift benchmark; built on first use and cached under the harness cache dir.

    ``data`` (the run config's data section) has nothing to set for an embedded benchmark.
    """
    return _benchmark("digitshift", _load_or_build(seed, progress), seed)


@register_benchmark("digitshift-small", version=VERSION, train_size=MNIST_SPLIT["train"] * len(captions.DIGIT_NAMES))
def load_digitshift_small(seed: int = 0, progress: bool = True, data: DataConfig | None = None) -> Benchmark:
    """digitshift with each test set cut to its first ``SMALL_TEST_PER_CLASS`` images of every class (200 per set,
    1,200 in all instead of 22,201); pretraining pool, training and validation sets unchanged.

    For smoke runs and the test suite, where evaluation would otherwise dominate: a 200-image ECE has a
    noise floor of several points (about sqrt(5) times that of 1,000 images), so it resolves nothing.
    Never for results.
    """
    sets = _load_or_build(seed, progress)
    for name in TEST_SETS:
        sets[name] = _first_per_class(sets[name], SMALL_TEST_PER_CLASS)
    return _benchmark("digitshift-small", sets, seed)


def _first_per_class(data: dict, per_class: int) -> dict:
    labels = data["labels"]
    keep = torch.cat([torch.nonzero(labels == c).flatten()[:per_class] for c in labels.unique()]).sort().values
    return {key: value[keep] if isinstance(value, torch.Tensor) else [value[i] for i in keep.tolist()]
            for key, value in data.items()}


def _pool_captions(pool: dict) -> Callable[[int, np.random.Generator], str]:
    """Pool image i's caption, drawn from its domain's templates (``captions.pretrain_caption``)."""
    labels, domains, details = pool["labels"].tolist(), pool["domain"], pool["detail"]
    return lambda i, rng: captions.pretrain_caption(labels[i], domains[i], details[i], rng)


def _benchmark(name: str, sets: dict[str, dict], seed: int) -> Benchmark:
    datasets = {
        set_name: ImageSet(data["images"], data["labels"], {k: data[k] for k in ("source", "domain", "detail")})
        for set_name, data in sets.items()
    }
    return Benchmark(
        name=name,
        classnames=list(captions.DIGIT_NAMES),
        templates=list(captions.CAPTION_TEMPLATES),
        zeroshot_templates=list(captions.ZEROSHOT_TEMPLATES),
        pretrain=datasets["pretrain"],
        train=datasets["train"],
        val=datasets["val"],
        tests={name: datasets[name] for name in TEST_SETS},
        id_test=ID_TEST,
        pretrain_caption=_pool_captions(sets["pretrain"]),
        info={"seed": seed, "version": VERSION, "cache": str(cache_path(seed))},
    )
