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
Each set carries a ``LabelSpace`` (``harness.data.image_files``): class ``k`` of the set is a group of ImageNet
indices, and a set's labels are indices into its *own* classes. ``LabelSpace.project`` maps ``[N, 1000]`` logits to
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
import os
from functools import lru_cache
from pathlib import Path
from typing import Callable, Sequence

from harness.core.errors import ConfigError
from harness.data.image_files import (
    FolderImageSet,
    LabelSpace,
    class_dirs,
    images_in,
    require_dir,
)

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


def imagenet_space() -> LabelSpace:
    """All 1000 ImageNet classes in the standard order."""
    return LabelSpace.full(imagenet_classnames())


# --------------------------------------------------------------------------- ImageNet folders


def _wnid_samples(root: Path, what: str) -> dict[int, list[Path]]:
    lookup = wnid_to_index()
    by_class: dict[int, list[Path]] = {}
    for folder in class_dirs(require_dir(root, what)):
        if folder.name not in lookup:
            raise ConfigError(f"{what}: folder {folder.name!r} in {root} is not an ImageNet-1k WordNet id")
        by_class[lookup[folder.name]] = images_in(folder)
    if not by_class:
        raise ConfigError(f"{what}: no class folders in {root}")
    return by_class


def imagenet_folder(root: str | os.PathLike, transform: Callable | None = None, name: str = "imagenet", **kw) -> FolderImageSet:
    """ImageNet train or val (or Sketch): WordNet-id folders; labels are ImageNet indices (K = 1000)."""
    by_class = _wnid_samples(Path(root), name)
    samples = [(path, index) for index in sorted(by_class) for path in by_class[index]]
    return FolderImageSet(samples, imagenet_space(), transform, name=name, **kw)


def imagenet_sketch(root: str | os.PathLike, transform: Callable | None = None, **kw) -> FolderImageSet:
    """ImageNet-Sketch: 1000 WordNet-id folders, the full ImageNet label space."""
    return imagenet_folder(root, transform, name="sketch", **kw)


def imagenet_v2(root: str | os.PathLike, transform: Callable | None = None, **kw) -> FolderImageSet:
    """ImageNet-V2 (matched-frequency): folders ``0``..``999`` are ImageNet indices already."""
    root = require_dir(Path(root), "imagenet-v2")
    samples = []
    for folder in class_dirs(root):
        if not folder.name.isdigit() or not 0 <= int(folder.name) < N_IMAGENET:
            raise ConfigError(f"imagenet-v2: folder {folder.name!r} in {root} is not a class index 0..999")
        samples.extend((path, int(folder.name)) for path in images_in(folder))
    if not samples:
        raise ConfigError(f"imagenet-v2: no images in {root}")
    samples.sort(key=lambda s: (s[1], str(s[0])))
    return FolderImageSet(samples, imagenet_space(), transform, name="imagenet-v2", **kw)


def imagenet_subset(root: str | os.PathLike, transform: Callable | None = None, name: str = "imagenet-r", **kw) -> FolderImageSet:
    """ImageNet-R / -A: WordNet-id folders of a class subset, derived from the folders present.

    Labels are positions in ``class_subset`` (sorted ImageNet indices), 0..K-1.
    """
    by_class = _wnid_samples(Path(root), name)
    subset = sorted(by_class)
    samples = [(path, k) for k, index in enumerate(subset) for path in by_class[index]]
    return FolderImageSet(samples, LabelSpace.subset(subset, imagenet_classnames()), transform, name=name, **kw)


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
    root = require_dir(Path(root), "objectnet")
    images = require_dir(root / "images", "objectnet")
    mapping = objectnet_mapping(root / "mappings")
    folders = [name for name in sorted(mapping) if (images / name).is_dir()]
    if not folders:
        raise ConfigError(f"objectnet: none of the mapped class folders is under {images}")
    names = imagenet_classnames()
    space = LabelSpace(
        tuple(mapping[f] for f in folders),
        tuple(" / ".join(names[i] for i in mapping[f]) for f in folders),
        N_IMAGENET,
        pooling=pooling,
    )
    samples = [(path, k) for k, folder in enumerate(folders) for path in images_in(images / folder)]
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
