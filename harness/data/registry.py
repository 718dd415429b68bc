"""The benchmark contract (``Benchmark``, ``ImageSet``) and the registry behind ``load_benchmark``."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import torch
from torch.utils.data import Dataset

from harness.core.config import DataConfig, is_benchmark_file
from harness.core.errors import UnknownNameError

# Pixel normalisation of the embedded benchmarks: grey levels in [0, 1] mapped to [-1, 1].
PIXEL_MEAN = 0.5
PIXEL_STD = 0.5


class ImageSet(Dataset):
    """Grey uint8 images ``[N, H, W]`` with labels, served as normalised ``[3, H, W]`` float tensors.

    ``meta`` holds per-sample provenance (``source``: a unique id of the original image,
    ``domain``, ``detail``: font or corruption), used for captions and to prove splits disjoint.
    """

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, meta: dict[str, list[str]] | None = None):
        if images.dtype != torch.uint8 or images.ndim != 3:
            raise ValueError(f"images must be uint8 [N, H, W], got {images.dtype} {tuple(images.shape)}")
        if len(images) != len(labels):
            raise ValueError(f"{len(images)} images but {len(labels)} labels")
        self.images = images
        self.labels = labels.long()
        self.meta = meta or {}

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return self.normalise(self.images[index : index + 1])[0], int(self.labels[index])

    @staticmethod
    def normalise(images: torch.Tensor) -> torch.Tensor:
        """uint8 ``[B, H, W]`` -> float ``[B, 3, H, W]`` as the models expect."""
        pixels = (images.float() / 255.0 - PIXEL_MEAN) / PIXEL_STD
        return pixels.unsqueeze(1).expand(-1, 3, -1, -1)

    def batches(
        self, batch_size: int, order: torch.Tensor | None = None
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        """Yield ``(images, labels, indices)`` of the rows ``order`` (default: all, in order; e.g. a permutation, or
        one process's share) by slicing tensors: far faster than a DataLoader for in-memory data."""
        order = torch.arange(len(self)) if order is None else order
        for start in range(0, len(order), batch_size):
            index = order[start : start + batch_size]
            yield self.normalise(self.images[index]), self.labels[index], index


@dataclass
class Benchmark:
    """One fine-tuning task with its pretraining pool and its ID and OOD test sets."""

    name: str
    classnames: list[str]
    templates: list[str]  # fine-tuning caption templates, "{}" = class name
    zeroshot_templates: list[str]  # averaged into the zero-shot head
    pretrain: Dataset | None  # the pool the embedded CLIP is pre-trained on (None: the weights come from elsewhere)
    train: Dataset
    val: Dataset
    tests: dict[str, Dataset]  # ID test first, then each OOD set
    id_test: str
    info: dict = field(default_factory=dict)
    file: str | None = None  # the benchmark file it was read from (absolute), for benchmarks described by a file
    digest: str | None = None  # content digest of a file benchmark's data (``harness.data.benchmark_file``)
    # How pool image i of an in-memory pool is captioned (digitshift's domain-aware captions); None: a template
    # filled with its class name. Pools read from files carry their captions or labels themselves.
    pretrain_caption: Callable[[int, np.random.Generator], str] | None = None

    @property
    def ood_tests(self) -> list[str]:
        return [name for name in self.tests if name != self.id_test]

    @property
    def in_memory(self) -> bool:
        """Tensors in memory (sliced into batches) rather than files read by loader processes."""
        return isinstance(self.train, ImageSet)

    def set_transforms(self, train: Callable, evaluation: Callable) -> None:
        """Give sets read from files the model's preprocessing (known only once the model is built)."""
        if self.in_memory:
            return
        self.train.transform = train
        for dataset in [self.val, *self.tests.values()]:
            dataset.transform = evaluation


_REGISTRY: dict[str, Callable[..., Benchmark]] = {}
_VERSIONS: dict[str, int] = {}
_TRAIN_SIZES: dict[str, int] = {}
_CHECKS: dict[str, Callable[[DataConfig], None]] = {}
_POOLS: set[str] = set()
_FILES: dict[str, Callable[[bool], Path]] = {}


def register_benchmark(name: str, version: int = 1, train_size: int | None = None,
                       check: Callable[[DataConfig], None] | None = None, pretrains: bool = False,
                       file: Callable[[bool], Path] | None = None
                       ) -> Callable[[Callable[..., Benchmark]], Callable[..., Benchmark]]:
    """Register a loader ``loader(data: DataConfig | None = None, progress: bool = True) -> Benchmark``.

    ``version`` changes whenever what it serves changes (caches built on it key on it); ``train_size``: the
    training set's size when it is fixed (what a dry run needs to count steps without data); ``check``: a quick
    test of the config's data section (a data root's layout, say) that raises ``ConfigError``, run by the dry
    run and before any job or pre-training, without reading the whole data set. ``pretrains``: it has a
    pre-training pool, so ``model.pretrained=NAME`` names the embedded weights pre-trained on it. ``file``: the
    benchmark is served from a benchmark file that ``file(progress)`` builds (on first use) and returns; caches
    then key on that file's content digest.
    """
    def decorate(loader: Callable[..., Benchmark]) -> Callable[..., Benchmark]:
        _REGISTRY[name] = loader
        _VERSIONS[name] = version
        if train_size is not None:
            _TRAIN_SIZES[name] = train_size
        if check is not None:
            _CHECKS[name] = check
        if pretrains:
            _POOLS.add(name)
        if file is not None:
            _FILES[name] = file
        return loader

    return decorate


def benchmark_version(name: str) -> int:
    """The registered version of a benchmark (a benchmark file has none: its ``digest`` says what it serves)."""
    require_known_benchmark(name)
    if is_benchmark_file(name):
        raise UnknownNameError(f"{name}: a benchmark file has no registered version; use its digest")
    return _VERSIONS[name]


def pretraining_benchmarks() -> list[str]:
    """Registered benchmarks with a pre-training pool (a benchmark file has one when it has ``splits.pretrain``)."""
    from harness.core.plugins import load_installed_plugins

    load_installed_plugins()
    return sorted(_POOLS)


def benchmark_content(name: str, progress: bool = True) -> str:
    """What a benchmark serves, for cache keys: a file's content digest (a registered benchmark served from a file
    it builds: that file's), else the registered version."""
    require_known_benchmark(name)
    if is_benchmark_file(name) or name in _FILES:
        from harness.data.benchmark_file import benchmark_digest

        return f"digest {benchmark_digest(name if is_benchmark_file(name) else _FILES[name](progress))}"
    return f"version {_VERSIONS[name]}"


def known_train_size(name: str) -> int | None:
    """The training set's size when the benchmark fixes it (embedded ones), else None (it depends on the data read)."""
    require_known_benchmark(name)
    return None if is_benchmark_file(name) else _TRAIN_SIZES.get(name)


def available_benchmarks() -> list[str]:
    return sorted(_REGISTRY)


def require_known_benchmark(name: str) -> None:
    """A registered name (plugins' included), or the path of a benchmark file that exists."""
    from harness.core.plugins import load_installed_plugins

    load_installed_plugins()
    if is_benchmark_file(name):
        if not Path(name).is_file():
            raise UnknownNameError(f"data.benchmark: benchmark file not found: {name}")
    elif name not in _REGISTRY:
        raise UnknownNameError(f"data.benchmark: unknown benchmark {name!r}; available: {', '.join(available_benchmarks())}, "
                               "or the path of a benchmark file (.yaml)")


def check_benchmark(data: DataConfig) -> int | None:
    """Everything about ``data`` that can be checked before any work: the name, a benchmark file with its folders,
    columns, classes and a sample of its images, or a registered benchmark's own ``check`` (its data root).

    Returns the training set's size when it is known without reading the data in full (listed from a benchmark
    file, or fixed by an embedded benchmark), else None."""
    require_known_benchmark(data.benchmark)
    if is_benchmark_file(data.benchmark):
        from harness.data.benchmark_file import read_benchmark_file, training_size

        return training_size(read_benchmark_file(data.benchmark, data))
    if data.benchmark in _CHECKS:
        _CHECKS[data.benchmark](data)
    return _TRAIN_SIZES.get(data.benchmark)


def load_benchmark(name: str, **options) -> Benchmark:
    """Load a benchmark by registered name or file path (``options`` go to its loader: ``data``, the config's data
    section; ``progress``)."""
    require_known_benchmark(name)
    if is_benchmark_file(name):
        from harness.data.benchmark_file import load_benchmark_file

        return load_benchmark_file(name, data=options.get("data"), progress=options.get("progress", True))
    return _REGISTRY[name](**options)


class LoadedBenchmarks:
    """Benchmarks loaded once per process and shared, read-only, by the trials it runs (a warm sweep worker's).

    Keyed by the config's data section; a benchmark file's content digest is checked before it is served
    again, so that data changed on disk is loaded anew rather than served stale.
    """

    def __init__(self):
        self._loaded: dict[str, Benchmark] = {}

    def load(self, data: DataConfig, progress: bool = True) -> Benchmark:
        key = data.model_dump_json()
        loaded = self._loaded.get(key)
        if loaded is not None and loaded.digest is not None:  # read from a file: served again only if unchanged
            from harness.data.benchmark_file import benchmark_digest

            loaded = loaded if benchmark_digest(loaded.file, data) == loaded.digest else None
        if loaded is None:
            loaded = self._loaded[key] = load_benchmark(data.benchmark, data=data, progress=progress)
        return loaded
