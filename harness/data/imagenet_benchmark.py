"""The ``imagenet`` benchmark: fine-tune on ImageNet-1K, test on its validation set and its shifts.

Everything is read from ``data.root`` (layouts: ``harness.data.imagenet`` and docs/imagenet.md):

- train: ``imagenet/train`` minus ``data.val_per_class`` images per class, which form ``val``,
  the ID validation split for model selection and temperature scaling (the same images for every
  trial: chosen by a fixed seed, not the trial's);
- tests: ``imagenet`` (the official validation set, the ID test) and each OOD set found among
  ImageNet-V2, -R, -A, Sketch and ObjectNet (at least one; the record lists those used).

Captions are open_clip's templates filled with its ImageNet class names, or a user's caption table
(``data.captions``; its rows that show a validation image are dropped, so model selection stays
honest). The sets carry no transform until the trainer gives them the model's own preprocessing
(``Benchmark.set_transforms``).
"""

from __future__ import annotations

import logging
import os
from array import array
from pathlib import Path

import numpy as np

from harness.core.config import DataConfig
from harness.core.errors import ConfigError
from harness.data.finetune_captions import (
    CaptionFileDataset,
    CaptionTable,
    imagenet_templates,
    read_caption_table,
)
from harness.data.imagenet import (
    DEFAULT_DIRS,
    OOD_SETS,
    FolderImageSet,
    imagenet_classnames,
    imagenet_sets,
    imagenet_space,
)
from harness.data.image_files import held_out_per_class
from harness.data.pipeline import default_num_workers
from harness.data.registry import Benchmark, register_benchmark

log = logging.getLogger(__name__)

VAL_SPLIT_SEED = 0


def split_train_val(train: FolderImageSet, per_class: int, num_workers: int) -> tuple[FolderImageSet, FolderImageSet]:
    """Hold ``per_class`` images of each class out of ``train``: the same ones whatever the trial's seed."""
    labels = train.labels.numpy()
    classes, counts = np.unique(labels, return_counts=True)
    for label, size in zip(classes.tolist(), counts.tolist()):
        if size <= per_class:
            raise ConfigError(f"data.val_per_class={per_class}: class {label} has only {size} training images")
    held = held_out_per_class(labels, lambda _: per_class, VAL_SPLIT_SEED)

    def part(mask: np.ndarray, name: str) -> FolderImageSet:
        samples = [(train.path(i), int(labels[i])) for i in np.flatnonzero(mask)]
        return FolderImageSet(samples, imagenet_space(), name=name, num_workers=num_workers)

    return part(~held, "imagenet-train"), part(held, "imagenet-val")


def _without(table: CaptionTable, excluded: set[str]) -> CaptionTable:
    """The table minus the rows whose image is in ``excluded`` (absolute, normalised paths)."""
    keep = [i for i, path in enumerate(table.paths) if os.path.normpath(os.path.abspath(path)) not in excluded]
    if not keep:
        raise ConfigError(f"data.captions: every row of {table.source} shows a validation image")
    return CaptionTable(table.source, [table.paths[i] for i in keep], [table.captions[i] for i in keep],
                        array("L", (table.lines[i] for i in keep)))


def check_imagenet_root(data: DataConfig) -> list[str]:
    """The layout under ``data.root``, checked without listing any image: ImageNet's train and val folders, at least
    one shift, and the caption table when one is named. Returns the shifts found."""
    if data.root is None:
        raise ConfigError("data.root: the imagenet benchmark reads its images from a data root (see docs/imagenet.md)")
    root = Path(data.root)
    if not root.is_dir():
        raise ConfigError(f"data.root: directory not found: {root}")
    for name in ("imagenet-train", "imagenet"):
        if not (root / DEFAULT_DIRS[name]).is_dir():
            raise ConfigError(f"data.root: {root / DEFAULT_DIRS[name]} not found (ImageNet's "
                              f"{'training' if name == 'imagenet-train' else 'validation'} images; see docs/imagenet.md)")
    found = [name for name in OOD_SETS if (root / DEFAULT_DIRS[name]).is_dir()]
    if not found:
        expected = ", ".join(str(root / DEFAULT_DIRS[name]) for name in OOD_SETS)
        raise ConfigError(f"data.root: no distribution-shift set found (expected one of {expected})")
    if data.captions is not None and not Path(data.captions).is_file():
        raise ConfigError(f"data.captions: caption file not found: {data.captions}")
    return found


@register_benchmark("imagenet", check=check_imagenet_root)
def load_imagenet(data: DataConfig | None = None, progress: bool = True) -> Benchmark:
    """ImageNet and the shifts present under ``data.root``; missing required parts raise ``ConfigError``."""
    data = data or DataConfig(benchmark="imagenet")
    found = check_imagenet_root(data)  # first: listing ImageNet's training images takes a while
    root = Path(data.root)
    workers = default_num_workers() if data.num_workers is None else data.num_workers
    train, val = split_train_val(imagenet_sets(root, names=["imagenet-train"], num_workers=workers)["imagenet-train"],
                                 data.val_per_class, workers)
    tests = imagenet_sets(root, names=["imagenet"], num_workers=workers)
    if data.captions is not None:
        held_out = {os.path.normpath(os.path.abspath(val.path(i))) for i in range(len(val))}
        train = CaptionFileDataset(_without(read_caption_table(data.captions), held_out))
    for name in found:
        options = {"border": data.objectnet_border, "pooling": data.objectnet_pooling} if name == "objectnet" else {}
        tests |= imagenet_sets(root, names=[name], num_workers=workers, **options)
    missing = [name for name in OOD_SETS if name not in found]
    if missing and progress:
        log.warning("imagenet: not found under %s, not evaluated: %s", root, ", ".join(missing))
    templates = list(imagenet_templates(data.templates))
    return Benchmark(
        name="imagenet", classnames=list(imagenet_classnames()), templates=templates, zeroshot_templates=templates,
        pretrain=None, train=train, val=val, tests=tests, id_test="imagenet",
        info={"root": os.fspath(root), "missing": missing, "sizes": {n: len(s) for n, s in tests.items()},
              "caption_table": data.captions},
    )
