"""ImageNet and its distribution shifts, read from class folders under a data root.

Layouts (each set under its own directory; ``imagenet_sets`` finds them under ``data.root``):

============  =============================================  ==============================================
set           directory (default name under the data root)   class folders
============  =============================================  ==============================================
imagenet      ``imagenet/train``, ``imagenet/val``           WordNet ids (``n01440764``), 1000 classes
imagenet-v2   ``imagenetv2-matched-frequency-format-val``    class index ``0`` .. ``999`` (matched-frequency)
imagenet-r    ``imagenet-r``                                 WordNet ids, a 200-class subset
imagenet-a    ``imagenet-a``                                 WordNet ids, a 200-class subset
sketch        ``sketch``                                     WordNet ids, 1000 classes
objectnet     ``objectnet-1.0`` (``images/``, ``mappings/``)  ObjectNet folder names, 113 map to ImageNet
============  =============================================  ==============================================

**Label spaces.** The model always scores the 1000 ImageNet classes (index = position of the
WordNet id in sorted order, the standard order; ``IMAGENET_CLASSNAMES`` of open_clip follows it).
Each set carries a ``LabelSpace``: class ``k`` of the set is a group of ImageNet indices, and a
set's labels are indices into its *own* classes. ``project_logits`` maps ``[N, 1000]`` logits to
``[N, K]`` logits over the set's classes *before* the softmax, so accuracy and ECE are over K
classes and ``harness.core.metrics`` applies unchanged:

- ImageNet, V2, Sketch: K = 1000, identity (``class_subset`` is None).
- ImageNet-R / -A: the classes are the WordNet-id folders present (200 in the releases), sorted by
  ImageNet index; the projection selects those columns (``class_subset``).
- ObjectNet: the 113 ObjectNet classes that map to ImageNet, ordered by folder name; a class with
  several ImageNet ids gets the **max of their logits** (``pooling="max"``), then the softmax is
  over the 113 pooled logits. This is the rule of the WiSE-FT / model-soups / FLYP code that
  CaRot's ObjectNet numbers come from, so results are comparable; a prediction is correct when the
  top ImageNet id among the 113 classes' ids belongs to the true class, and the confidence is the
  softmax of the pooled logits. ``pooling="logsumexp"`` instead sums the probabilities of the ids
  (a proper marginal); it is offered, not the default.

**ObjectNet files.** The release ships ``objectnet-1.0/mappings/``:
``folder_to_objectnet_label.json`` ({folder: ObjectNet label}), ``objectnet_to_imagenet_1k.json``
({ObjectNet label: ImageNet labels joined by ``"; "``}), ``imagenet_to_label_2012_v2`` (text, one
ImageNet label per line) and ``pytorch_to_imagenet_2012_id.json`` ({model index: line of that
text file}). Its images carry a **1-pixel red border** (the release README: "individual images ...
may only be posted to the web including their 1 pixel red border"), cropped here before the
transform (``OBJECTNET_BORDER = 1``; WiSE-FT/model-soups crop 2 px, some code 3: pass ``border``).

The 1000 WordNet ids (``assets/imagenet_wnids.txt``) are a copy of ``timm/data/_info/imagenet_synsets.txt``
(timm 1.0.31), the ILSVRC-2012 synsets in sorted order.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Callable, Iterator, Sequence

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from harness.core.errors import ConfigError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".ppm", ".tif", ".tiff")
N_IMAGENET = 1000
OBJECTNET_BORDER = 1

# Directory of each set under the data root (the names the releases unpack to, as in WiSE-FT).
DEFAULT_DIRS = {
    "imagenet": "imagenet/val",
    "imagenet-train": "imagenet/train",
    "imagenet-v2": "imagenetv2-matched-frequency-format-val",
    "imagenet-r": "imagenet-r",
    "imagenet-a": "imagenet-a",
    "sketch": "sketch",
    "objectnet": "objectnet-1.0",
}
OOD_SETS = ("imagenet-v2", "imagenet-r", "imagenet-a", "sketch", "objectnet")


@lru_cache(maxsize=1)
def imagenet_wnids() -> tuple[str, ...]:
    """The 1000 ILSVRC-2012 WordNet ids in the standard (sorted) class order."""
    text = (Path(__file__).parent / "assets" / "imagenet_wnids.txt").read_text()
    wnids = tuple(line.strip() for line in text.splitlines() if line.strip())
    assert len(wnids) == N_IMAGENET and list(wnids) == sorted(wnids), "corrupt imagenet_wnids.txt"
    return wnids


@lru_cache(maxsize=1)
def wnid_to_index() -> dict[str, int]:
    return {wnid: i for i, wnid in enumerate(imagenet_wnids())}


def imagenet_classnames() -> tuple[str, ...]:
    from open_clip.zero_shot_metadata import IMAGENET_CLASSNAMES

    return tuple(IMAGENET_CLASSNAMES)


# --------------------------------------------------------------------------- label spaces


@dataclass(frozen=True)
class LabelSpace:
    """How a set's classes relate to ImageNet's: class ``k`` is the group ``groups[k]`` of ImageNet indices."""

    groups: tuple[tuple[int, ...], ...]
    names: tuple[str, ...]
    pooling: str = "max"  # how a group of several ImageNet logits becomes one: "max" | "logsumexp"

    def __post_init__(self):
        if self.pooling not in ("max", "logsumexp"):
            raise ValueError(f"pooling must be 'max' or 'logsumexp', got {self.pooling!r}")
        flat = [i for group in self.groups for i in group]
        if len(flat) != len(set(flat)) or not all(0 <= i < N_IMAGENET for i in flat) or not all(self.groups):
            raise ValueError("label space groups must be non-empty, disjoint sets of ImageNet indices")

    @classmethod
    def full(cls) -> LabelSpace:
        return cls(tuple((i,) for i in range(N_IMAGENET)), imagenet_classnames())

    @classmethod
    def subset(cls, indices: Sequence[int]) -> LabelSpace:
        names = imagenet_classnames()
        return cls(tuple((i,) for i in sorted(indices)), tuple(names[i] for i in sorted(indices)))

    @property
    def num_classes(self) -> int:
        return len(self.groups)

    @property
    def is_full(self) -> bool:
        return self.num_classes == N_IMAGENET and all(g == (i,) for i, g in enumerate(self.groups))

    @property
    def class_subset(self) -> list[int] | None:
        """Sorted ImageNet indices the set covers; None when it is all 1000 in order."""
        return None if self.is_full else sorted(i for group in self.groups for i in group)

    def project(self, logits: torch.Tensor) -> torch.Tensor:
        """``[N, 1000]`` ImageNet logits -> ``[N, K]`` logits over this set's classes (pre-softmax)."""
        if logits.ndim != 2 or logits.shape[1] != N_IMAGENET:
            raise ValueError(f"expected [N, {N_IMAGENET}] logits, got {tuple(logits.shape)}")
        if self.is_full:
            return logits
        columns = torch.tensor([i for group in self.groups for i in group], device=logits.device)
        owner = torch.tensor([k for k, group in enumerate(self.groups) for _ in group], device=logits.device)
        picked = logits.index_select(1, columns)
        if all(len(group) == 1 for group in self.groups):
            return picked  # groups are sorted by ImageNet index for subsets: a plain column selection
        if self.pooling == "max":
            out = torch.full((len(logits), self.num_classes), -math.inf, dtype=logits.dtype, device=logits.device)
            return out.scatter_reduce(1, owner.expand(len(logits), -1), picked, reduce="amax")
        return torch.stack([logits[:, list(group)].logsumexp(dim=1) for group in self.groups], dim=1)


def project_logits(logits: torch.Tensor, dataset_or_space) -> torch.Tensor:
    """Logits over a set's own classes from 1000-way ImageNet logits (identity for full-space sets)."""
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


# --------------------------------------------------------------------------- datasets


def _require_dir(path: Path, what: str) -> Path:
    if not path.is_dir():
        raise ConfigError(f"{what}: directory not found: {path}")
    return path


def _class_dirs(root: Path) -> list[Path]:
    return sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))


def _images_in(folder: Path) -> list[str]:
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
    """Images in class folders: ``(transform(image), label)`` with ``label`` in the set's own space.

    ``labels`` (a tensor, as ``ImageSet``), ``label_space``, ``class_subset`` and ``classnames``
    describe the classes; ``batches`` serves ``(images, labels, indices)`` through a DataLoader so
    ``harness.trial.evaluate.predict_logits`` runs on it unchanged.
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
    def imagenet_labels(self) -> torch.Tensor:
        """Each sample's ImageNet index (the first of its class's group)."""
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


def _wnid_samples(root: Path, what: str) -> dict[int, list[Path]]:
    lookup = wnid_to_index()
    by_class: dict[int, list[Path]] = {}
    for folder in _class_dirs(_require_dir(root, what)):
        if folder.name not in lookup:
            raise ConfigError(f"{what}: folder {folder.name!r} in {root} is not an ImageNet-1k WordNet id")
        by_class[lookup[folder.name]] = _images_in(folder)
    if not by_class:
        raise ConfigError(f"{what}: no class folders in {root}")
    return by_class


def imagenet_folder(root: str | os.PathLike, transform: Callable | None = None, name: str = "imagenet", **kw) -> FolderImageSet:
    """ImageNet train or val (or Sketch): WordNet-id folders; labels are ImageNet indices (K = 1000)."""
    by_class = _wnid_samples(Path(root), name)
    samples = [(path, index) for index in sorted(by_class) for path in by_class[index]]
    return FolderImageSet(samples, LabelSpace.full(), transform, name=name, **kw)


def imagenet_sketch(root: str | os.PathLike, transform: Callable | None = None, **kw) -> FolderImageSet:
    """ImageNet-Sketch: 1000 WordNet-id folders, the full ImageNet label space."""
    return imagenet_folder(root, transform, name="sketch", **kw)


def imagenet_v2(root: str | os.PathLike, transform: Callable | None = None, **kw) -> FolderImageSet:
    """ImageNet-V2 (matched-frequency): folders ``0``..``999`` are ImageNet indices already."""
    root = _require_dir(Path(root), "imagenet-v2")
    samples = []
    for folder in _class_dirs(root):
        if not folder.name.isdigit() or not 0 <= int(folder.name) < N_IMAGENET:
            raise ConfigError(f"imagenet-v2: folder {folder.name!r} in {root} is not a class index 0..999")
        samples.extend((path, int(folder.name)) for path in _images_in(folder))
    if not samples:
        raise ConfigError(f"imagenet-v2: no images in {root}")
    samples.sort(key=lambda s: (s[1], str(s[0])))
    return FolderImageSet(samples, LabelSpace.full(), transform, name="imagenet-v2", **kw)


def imagenet_subset(root: str | os.PathLike, transform: Callable | None = None, name: str = "imagenet-r", **kw) -> FolderImageSet:
    """ImageNet-R / -A: WordNet-id folders of a class subset, derived from the folders present.

    Labels are positions in ``class_subset`` (sorted ImageNet indices), 0..K-1.
    """
    by_class = _wnid_samples(Path(root), name)
    subset = sorted(by_class)
    samples = [(path, k) for k, index in enumerate(subset) for path in by_class[index]]
    return FolderImageSet(samples, LabelSpace.subset(subset), transform, name=name, **kw)


def imagenet_r(root, transform=None, **kw) -> FolderImageSet:
    return imagenet_subset(root, transform, name="imagenet-r", **kw)


def imagenet_a(root, transform=None, **kw) -> FolderImageSet:
    return imagenet_subset(root, transform, name="imagenet-a", **kw)


# --------------------------------------------------------------------------- ObjectNet


def _load_json(path: Path) -> dict:
    if not path.is_file():
        raise ConfigError(f"objectnet: mapping file not found: {path}")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise ConfigError(f"{path}:{error.lineno}: invalid JSON ({error.msg})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}:1: expected a JSON object")
    return data


def objectnet_mapping(mappings: str | os.PathLike) -> dict[str, tuple[int, ...]]:
    """{ObjectNet folder: ImageNet indices} for the ObjectNet classes that overlap ImageNet-1k.

    Reads the release's ``folder_to_objectnet_label.json``, ``objectnet_to_imagenet_1k.json``,
    ``pytorch_to_imagenet_2012_id.json`` and ``imagenet_to_label_2012_v2`` (see the module notes).
    """
    mappings = Path(mappings)
    folder_to_label = _load_json(mappings / "folder_to_objectnet_label.json")
    objectnet_to_imagenet = _load_json(mappings / "objectnet_to_imagenet_1k.json")
    index_to_line = _load_json(mappings / "pytorch_to_imagenet_2012_id.json")
    labels_file = mappings / "imagenet_to_label_2012_v2"
    if not labels_file.is_file():
        raise ConfigError(f"objectnet: mapping file not found: {labels_file}")
    lines = [line.strip() for line in labels_file.read_text().splitlines()]
    line_to_index = {int(line): int(index) for index, line in index_to_line.items()}
    label_to_index = {}
    for line, label in enumerate(lines):
        if label and line in line_to_index:
            label_to_index[label] = line_to_index[line]
    label_to_folder = {label: folder for folder, label in folder_to_label.items()}
    mapping = {}
    for objectnet_label, imagenet_labels in objectnet_to_imagenet.items():
        if objectnet_label not in label_to_folder:
            raise ConfigError(f"{mappings / 'objectnet_to_imagenet_1k.json'}: {objectnet_label!r} has no folder "
                              "in folder_to_objectnet_label.json")
        ids = []
        for imagenet_label in imagenet_labels.split("; "):
            if imagenet_label.strip() not in label_to_index:
                raise ConfigError(f"{mappings / 'objectnet_to_imagenet_1k.json'}: ImageNet label {imagenet_label!r} "
                                  "is not a line of imagenet_to_label_2012_v2")
            ids.append(label_to_index[imagenet_label.strip()])
        mapping[label_to_folder[objectnet_label]] = tuple(ids)
    return mapping


def objectnet(
    root: str | os.PathLike,
    transform: Callable | None = None,
    border: int = OBJECTNET_BORDER,
    pooling: str = "max",
    **kw,
) -> FolderImageSet:
    """ObjectNet 1.0 (``root`` holds ``images/`` and ``mappings/``): the classes that map to ImageNet.

    Classes are the mapped folders present under ``images/``, sorted by folder name (113 in the
    release); images of the other folders are skipped. Labels are positions among them.
    """
    root = _require_dir(Path(root), "objectnet")
    images = _require_dir(root / "images", "objectnet")
    mapping = objectnet_mapping(root / "mappings")
    folders = [name for name in sorted(mapping) if (images / name).is_dir()]
    if not folders:
        raise ConfigError(f"objectnet: none of the mapped class folders is under {images}")
    names = imagenet_classnames()
    space = LabelSpace(
        tuple(mapping[f] for f in folders),
        tuple(" / ".join(names[i] for i in mapping[f]) for f in folders),
        pooling=pooling,
    )
    samples = [(path, k) for k, folder in enumerate(folders) for path in _images_in(images / folder)]
    return FolderImageSet(samples, space, transform, border=border, name="objectnet", **kw)


# --------------------------------------------------------------------------- the family under one root

_LOADERS: dict[str, Callable[..., FolderImageSet]] = {
    "imagenet": lambda root, t, **kw: imagenet_folder(root, t, name="imagenet", **kw),
    "imagenet-train": lambda root, t, **kw: imagenet_folder(root, t, name="imagenet-train", **kw),
    "imagenet-v2": imagenet_v2,
    "imagenet-r": imagenet_r,
    "imagenet-a": imagenet_a,
    "sketch": imagenet_sketch,
    "objectnet": objectnet,
}


def imagenet_sets(
    data_root: str | os.PathLike,
    transform: Callable | None = None,
    names: Sequence[str] = ("imagenet", *OOD_SETS),
    dirs: dict[str, str] | None = None,
    skip_missing: bool = False,
    **kw,
) -> dict[str, FolderImageSet]:
    """The named sets under ``data_root`` (directories from ``DEFAULT_DIRS``, overridable by ``dirs``)."""
    if data_root is None:
        raise ConfigError("data.root: the ImageNet benchmarks need a data root")
    data_root = Path(data_root)
    dirs = {**DEFAULT_DIRS, **(dirs or {})}
    sets = {}
    for name in names:
        if name not in _LOADERS:
            raise ConfigError(f"unknown ImageNet set {name!r}; available: {', '.join(_LOADERS)}")
        path = data_root / dirs[name]
        if skip_missing and not path.is_dir():
            continue
        sets[name] = _LOADERS[name](path, transform, **kw)
    return sets
