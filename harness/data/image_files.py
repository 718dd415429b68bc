"""Image sets read from files, and the label space that lets a set cover only some of a benchmark's classes.

``FolderImageSet`` serves ``(transform(image), label)`` from a list of (path, label) samples, with the
label in the set's *own* classes. Its ``LabelSpace`` says how those classes relate to the
benchmark's C classes (the columns of the model's logits): class ``k`` of the set is a group of
benchmark indices. ``LabelSpace.project`` maps ``[N, C]`` logits to ``[N, K]`` logits over the
set's classes *before* the softmax, so a set that covers some classes only (ImageNet-R/-A, a
benchmark file's ``classes:``) is scored over those classes, and ``harness.core.metrics`` applies
unchanged. A group of several indices (ObjectNet) is pooled by ``max`` (as the WiSE-FT code) or
``logsumexp`` (the marginal probability).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Sequence

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from harness.core.errors import ConfigError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".ppm", ".tif", ".tiff")


@dataclass(frozen=True)
class LabelSpace:
    """A set's classes as groups of the benchmark's ``total`` class indices: class ``k`` is ``groups[k]``."""

    groups: tuple[tuple[int, ...], ...]
    names: tuple[str, ...]
    total: int
    pooling: str = "max"  # how a group of several logits becomes one: "max" | "logsumexp"

    def __post_init__(self):
        if self.pooling not in ("max", "logsumexp"):
            raise ValueError(f"pooling must be 'max' or 'logsumexp', got {self.pooling!r}")
        flat = [i for group in self.groups for i in group]
        if len(flat) != len(set(flat)) or not all(0 <= i < self.total for i in flat) or not all(self.groups):
            raise ValueError(f"label space groups must be non-empty, disjoint sets of indices 0..{self.total - 1}")

    @classmethod
    def full(cls, names: Sequence[str]) -> LabelSpace:
        """Every class of a benchmark whose class names are ``names``, in order."""
        return cls(tuple((i,) for i in range(len(names))), tuple(names), len(names))

    @classmethod
    def subset(cls, indices: Sequence[int], names: Sequence[str]) -> LabelSpace:
        """The classes ``indices`` (sorted) of a benchmark whose class names are ``names``."""
        chosen = sorted(indices)
        return cls(tuple((i,) for i in chosen), tuple(names[i] for i in chosen), len(names))

    @property
    def num_classes(self) -> int:
        return len(self.groups)

    @property
    def is_full(self) -> bool:
        return self.num_classes == self.total and all(g == (i,) for i, g in enumerate(self.groups))

    @property
    def class_subset(self) -> list[int] | None:
        """Sorted benchmark indices the set covers; None when it is every class in order."""
        return None if self.is_full else sorted(i for group in self.groups for i in group)

    def project(self, logits: torch.Tensor) -> torch.Tensor:
        """``[N, total]`` logits -> ``[N, K]`` logits over this set's classes (pre-softmax)."""
        if logits.ndim != 2 or logits.shape[1] != self.total:
            raise ValueError(f"expected [N, {self.total}] logits, got {tuple(logits.shape)}")
        if self.is_full:
            return logits
        columns = torch.tensor([i for group in self.groups for i in group], device=logits.device)
        owner = torch.tensor([k for k, group in enumerate(self.groups) for _ in group], device=logits.device)
        picked = logits.index_select(1, columns)
        if all(len(group) == 1 for group in self.groups):
            return picked  # groups are sorted by index for subsets: a plain column selection
        if self.pooling == "max":
            out = torch.full((len(logits), self.num_classes), -math.inf, dtype=logits.dtype, device=logits.device)
            return out.scatter_reduce(1, owner.expand(len(logits), -1), picked, reduce="amax")
        return torch.stack([logits[:, list(group)].logsumexp(dim=1) for group in self.groups], dim=1)


def project_logits(logits: torch.Tensor, dataset_or_space) -> torch.Tensor:
    """Logits over a set's own classes from the benchmark's logits (identity for full-space sets)."""
    space = getattr(dataset_or_space, "label_space", dataset_or_space)
    return space.project(logits)


def projected_logits_and_labels(
    logits: torch.Tensor, dataset, labels: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(logits over the set's K classes, labels in 0..K-1)``: what ``harness.core.metrics`` takes.

    ``labels`` (in the set's space) default to ``dataset.labels``.
    """
    space = getattr(dataset, "label_space", dataset)
    return space.project(logits), dataset.labels if labels is None else labels


def held_out_per_class(labels: np.ndarray, count: Callable[[int], int], seed: int) -> np.ndarray:
    """A mask of ``count(n)`` rows of each class of ``n`` rows, drawn by (``seed``, class) alone: the same rows
    whatever the trial's seed, and a class's rows do not depend on the other classes."""
    from harness.data.pipeline import mix64

    held = np.zeros(len(labels), dtype=bool)
    for label in np.unique(labels):
        members = np.flatnonzero(labels == label)
        rng = np.random.default_rng(mix64(seed, int(label)))
        held[rng.choice(members, count(len(members)), replace=False)] = True
    return held


def require_dir(path: Path, what: str) -> Path:
    if not path.is_dir():
        raise ConfigError(f"{what}: directory not found: {path}")
    return path


def class_dirs(root: Path) -> list[Path]:
    return sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))


def images_in(folder: Path) -> list[str]:
    """Image files under ``folder`` (recursively), sorted; ``os.scandir`` so a 1.28M-file tree lists in seconds."""
    found, pending = [], [str(folder)]
    while pending:
        with os.scandir(pending.pop()) as entries:
            for entry in entries:
                if entry.name.startswith("."):
                    continue
                if entry.is_dir():
                    pending.append(entry.path)
                elif os.path.splitext(entry.name)[1].lower() in IMAGE_SUFFIXES and entry.is_file():
                    found.append(entry.path)
    return sorted(found)


def load_rgb(path: str | os.PathLike, border: int = 0) -> Image.Image:
    """Open an image as RGB, cropping ``border`` pixels off every side."""
    with Image.open(path) as image:
        image = image.convert("RGB")
    if border:
        width, height = image.size
        if width <= 2 * border or height <= 2 * border:
            raise ValueError(f"{path}: {width}x{height} image is too small to crop a {border}-px border")
        image = image.crop((border, border, width - border, height - border))
    return image


class FolderImageSet(Dataset):
    """Images read from files: ``(transform(image), label)`` with ``label`` in the set's own space.

    ``labels`` (a tensor, as ``ImageSet``), ``label_space``, ``class_subset`` and ``classnames``
    describe the classes; ``batches`` serves ``(images, labels, indices)`` through a DataLoader so
    ``harness.trial.set_reports.predict_logits`` runs on it unchanged.
    """

    def __init__(
        self,
        samples: Sequence[tuple[str, int]],
        label_space: LabelSpace,
        transform: Callable | None = None,
        border: int = 0,
        name: str = "",
        num_workers: int = 0,
    ):
        # Paths as one numpy bytes array: worker processes share it without copy-on-access (a list of
        # 1.28M Python strings would be copied page by page as reference counts change).
        self._paths = np.array([os.fsencode(path) for path, _ in samples], dtype=np.bytes_)
        self.labels = torch.tensor([label for _, label in samples], dtype=torch.long)
        self.label_space = label_space
        self.transform = transform
        self.border = border
        self.name = name
        self.num_workers = num_workers

    def __len__(self) -> int:
        return len(self._paths)

    def path(self, index: int) -> str:
        return os.fsdecode(self._paths[index])

    def __getitem__(self, index: int):
        image = load_rgb(self.path(index), self.border)
        return (self.transform(image) if self.transform else image), int(self.labels[index])

    @property
    def class_subset(self) -> list[int] | None:
        return self.label_space.class_subset

    @property
    def classnames(self) -> tuple[str, ...]:
        return self.label_space.names

    @property
    def benchmark_labels(self) -> torch.Tensor:
        """Each sample's benchmark class index (the first of its class's group)."""
        first = torch.tensor([group[0] for group in self.label_space.groups])
        return first[self.labels]

    def batches(
        self, batch_size: int, order: torch.Tensor | None = None
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        from harness.data.pipeline import make_loader

        order = torch.arange(len(self)) if order is None else order
        subset = torch.utils.data.Subset(_Indexed(self), order.tolist())
        loader = make_loader(subset, batch_size, train=False, num_workers=self.num_workers)
        for images, labels, index in loader:
            yield images, labels, index


class _Indexed(Dataset):
    def __init__(self, base: Dataset):
        self.base = base

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, index: int):
        image, label = self.base[index]
        return image, label, index
