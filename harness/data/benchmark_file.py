"""A benchmark described by a YAML file: class names, caption templates and splits in folders or CSV files.

``data.benchmark=path/to/bench.yaml`` loads one (docs/benchmark-files.md documents every key). Images
are RGB files of any size; the model's own preprocessing is applied once it is built
(``Benchmark.set_transforms``). An OOD set with ``classes:`` covers those classes only and is scored on
their logits (``LabelSpace.subset``). Everything a trial reads is checked here before any work (a
missing folder or column, an unknown class, an empty split, an unreadable image among a sample of
each split), each as a ``ConfigError`` of one line naming the key or file and what would be valid.

``digest`` covers what the benchmark serves (class names, templates, and every split's file list
with sizes and labels), so a record says which data it came from and a study refuses to mix data.
"""

from __future__ import annotations

import csv
import hashlib
import json
import logging
import os
from array import array
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
from PIL import Image, UnidentifiedImageError
from pydantic import Field, field_validator, model_validator

from harness.core.config import DataConfig, StrictModel, build, read_yaml
from harness.core.errors import ConfigError
from harness.data.finetune_captions import CaptionFileDataset, CaptionTable
from harness.data.image_files import (
    FolderImageSet,
    LabelSpace,
    class_dirs,
    held_out_per_class,
    images_in,
)
from harness.data.pipeline import default_num_workers
from harness.data.registry import Benchmark

log = logging.getLogger(__name__)

VAL_SPLIT_SEED = 0
IMAGES_CHECKED = 32  # images decoded per split before any work (first, last and evenly between)
RESERVED_SET_NAMES = ("val",)  # the record's name of the ID validation split


class SetSource(StrictModel):
    """Where one split's images are: class folders, or a CSV of image paths and labels (or captions)."""

    folder: str | None = Field(None, description="a folder with one subfolder per class, named as the class")
    csv: str | None = Field(None, description="a CSV file with a path column and a label (or caption) column")
    classes: list[str] | None = Field(
        None, min_length=1, description="OOD sets: the classes this set covers; it is scored on their logits only")
    path_column: str = "path"
    label_column: str = "label"
    caption_column: str = Field("caption", description="pretrain CSVs: a caption column instead of labels")

    @model_validator(mode="after")
    def _one_source(self) -> "SetSource":
        if (self.folder is None) == (self.csv is None):
            raise ValueError("give exactly one of folder or csv")
        return self


class Splits(StrictModel):
    pretrain: SetSource | None = Field(None, description="a pool to pre-train an embedded CLIP on")
    train: SetSource
    val: SetSource | None = Field(None, description="null: a fixed, seeded val_share of each training class")
    test: SetSource = Field(description="the ID test set (named after the benchmark in records)")
    ood: dict[str, SetSource] = Field(min_length=1, description="the OOD test sets by name")

    @field_validator("ood")
    @classmethod
    def _set_names(cls, ood: dict[str, SetSource]) -> dict[str, SetSource]:
        for name in ood:
            if name in RESERVED_SET_NAMES or not name or name.strip() != name:
                raise ValueError(f"OOD set name {name!r} is reserved or blank")
        return ood


class BenchmarkFile(StrictModel):
    """The keys of a benchmark file (docs/benchmark-files.md)."""

    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$")
    classnames: list[str] | None = Field(None, min_length=2)
    classnames_file: str | None = Field(None, description="a text file, one class name per line")
    templates: list[str] = Field(min_length=1, description="fine-tuning caption templates, '{}' = the class name")
    zeroshot_templates: list[str] | None = Field(None, min_length=1, description="null: the templates")
    root: str | None = Field(None, description="relative paths resolve against it; null: the file's folder")
    val_share: float = Field(0.1, gt=0.0, lt=1.0, description="share of each training class held out when no val")
    splits: Splits

    @field_validator("templates", "zeroshot_templates")
    @classmethod
    def _fillable(cls, templates: list[str] | None) -> list[str] | None:
        for template in templates or []:
            if template.count("{}") != 1:
                raise ValueError(f"template {template!r} must hold '{{}}' exactly once (where the class name goes)")
        return templates

    @model_validator(mode="after")
    def _one_class_list(self) -> "BenchmarkFile":
        if (self.classnames is None) == (self.classnames_file is None):
            raise ValueError("give exactly one of classnames or classnames_file")
        if self.name in self.splits.ood:
            raise ValueError(f"OOD set {self.name!r} has the benchmark's name, which the ID test set takes")
        return self


@dataclass(frozen=True)
class Sample:
    path: str  # absolute
    label: int  # in the set's own classes
    caption: str | None = None  # caption-table pools only


@dataclass(frozen=True)
class ListedSet:
    """One split as read from its folder or CSV, before any image is opened."""

    key: str  # "splits.ood.sketch": what error messages name
    samples: list[Sample]
    space: LabelSpace


class _Reader:
    """Lists the splits of one benchmark file against its classes and root, naming the failing key in errors."""

    def __init__(self, file: Path, classnames: list[str], root: Path):
        self.file, self.classnames, self.root = file, classnames, root
        self.index = {name: i for i, name in enumerate(classnames)}

    def where(self, key: str) -> str:
        return f"{self.file}: {key}"

    def resolve(self, path: str) -> Path:
        return Path(path) if os.path.isabs(path) else self.root / path

    def space(self, key: str, source: SetSource) -> LabelSpace:
        if source.classes is None:
            return LabelSpace.full(self.classnames)
        unknown = [c for c in source.classes if c not in self.index]
        if unknown:
            raise ConfigError(f"{self.where(key + '.classes')}: unknown class {unknown[0]!r} "
                              f"(classes: {', '.join(self.classnames)})")
        return LabelSpace.subset([self.index[c] for c in dict.fromkeys(source.classes)], self.classnames)

    def read(self, key: str, source: SetSource, captions: bool = False) -> ListedSet:
        space = self.space(key, source)
        own = {name: k for k, name in enumerate(space.names)}
        samples = self._folder(key, source, own) if source.folder is not None else self._csv(key, source, own, captions)
        if not samples:
            raise ConfigError(f"{self.where(key)}: empty split, no images in "
                              f"{self.resolve(source.folder or source.csv)}")
        return ListedSet(key, samples, space)

    def _folder(self, key: str, source: SetSource, own: dict[str, int]) -> list[Sample]:
        folder = self.resolve(source.folder)
        if not folder.is_dir():
            raise ConfigError(f"{self.where(key + '.folder')}: directory not found: {folder}")
        samples = []
        for sub in class_dirs(folder):
            if sub.name not in own:
                raise ConfigError(f"{self.where(key + '.folder')}: folder {sub.name!r} in {folder} is not a class "
                                  f"of this set (classes: {', '.join(own)})")
            samples += [Sample(path, own[sub.name]) for path in images_in(sub)]
        return samples

    def _csv(self, key: str, source: SetSource, own: dict[str, int], captions: bool) -> list[Sample]:
        path = self.resolve(source.csv)
        if not path.is_file():
            raise ConfigError(f"{self.where(key + '.csv')}: file not found: {path}")
        with open(path, newline="", encoding="utf-8") as handle:
            reader = csv.DictReader(handle)
            columns = [c.strip() for c in reader.fieldnames or []]
            reader.fieldnames = columns
            wanted = self._label_column(path, source, columns, captions)
            samples = []
            for row in reader:
                line = reader.line_num
                image = (row.get(source.path_column) or "").strip()
                value = (row.get(wanted) or "").strip()
                if not image or not value:
                    raise ConfigError(f"{path}:{line}: empty {source.path_column if not image else wanted!r}")
                file = str(self.resolve(image))
                if wanted == source.caption_column:
                    samples.append(Sample(file, -1, value))
                else:
                    samples.append(Sample(file, self._label(path, line, value, own)))
        return samples

    @staticmethod
    def _label_column(path: Path, source: SetSource, columns: list[str], captions: bool) -> str:
        wanted = [source.path_column, source.label_column]
        if captions and source.caption_column in columns:
            wanted[1] = source.caption_column
        for column in wanted:
            if column not in columns:
                also = f" or {source.caption_column!r}" if captions and column == source.label_column else ""
                raise ConfigError(f"{path}:1: no column {column!r}{also} (columns: {', '.join(columns) or 'none'})")
        return wanted[1]

    def _label(self, path: Path, line: int, value: str, own: dict[str, int]) -> int:
        """A label cell: a class name, or an index into the benchmark's classes."""
        name = value
        if value not in own and value.isdigit() and int(value) < len(self.classnames):
            name = self.classnames[int(value)]
        if name not in own:
            names = list(own)
            raise ConfigError(f"{path}:{line}: unknown class {value!r} (classes: {', '.join(names)}, or an index "
                              f"0..{len(self.classnames) - 1})")
        return own[name]


def _classnames(file: Path, spec: BenchmarkFile) -> list[str]:
    if spec.classnames is not None:
        names = spec.classnames
    else:
        path = Path(spec.classnames_file)
        path = path if path.is_absolute() else file.parent / path
        if not path.is_file():
            raise ConfigError(f"{file}: classnames_file: file not found: {path}")
        names = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated or len(names) < 2:
        raise ConfigError(f"{file}: classnames: " + (f"{repeated[0]!r} repeats" if repeated else "needs two classes"))
    return names


def _root(file: Path, spec: BenchmarkFile, data: DataConfig | None) -> Path:
    """``data.root`` (the run config's, to move data between machines), else the file's ``root``, else its folder."""
    key, root = ("data.root", Path(data.root)) if data is not None and data.root else ("root", Path(spec.root or "."))
    root = root if root.is_absolute() else file.parent / root
    if not root.is_dir():
        raise ConfigError(f"{file}: {key}: directory not found: {root}")
    return root


def read_spec(path: str | os.PathLike) -> BenchmarkFile:
    """The validated keys of a benchmark file."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"data.benchmark: benchmark file not found: {path}")
    return build(BenchmarkFile, read_yaml(path), source=str(path))


def _sampled(samples: list[Sample]) -> Iterator[Sample]:
    """Up to ``IMAGES_CHECKED`` samples: the first, the last and evenly spaced between."""
    picks = np.unique(np.linspace(0, len(samples) - 1, min(IMAGES_CHECKED, len(samples))).round().astype(int))
    return (samples[i] for i in picks)


def check_images(file: Path, listed: ListedSet) -> None:
    """Open a sample of the split's images: a missing or unreadable file fails here, not hours into a trial."""
    for sample in _sampled(listed.samples):
        try:
            with Image.open(sample.path) as image:
                image.convert("RGB")
        except (OSError, UnidentifiedImageError, ValueError) as error:
            raise ConfigError(f"{file}: {listed.key}: cannot read image {sample.path} ({error.__class__.__name__})"
                              ) from None


def _digest(file: Path, spec: BenchmarkFile, classnames: list[str], root: Path, listed: dict[str, ListedSet]) -> str:
    """sha256 of what the benchmark serves: class names, templates, and each split's (file, size, label)."""
    hasher = hashlib.sha256()
    header = {"classnames": classnames, "templates": spec.templates, "zeroshot_templates": spec.zeroshot_templates}
    hasher.update(json.dumps(header, sort_keys=True).encode())
    for key, split in sorted(listed.items()):
        hasher.update(f"\n[{key}]".encode())
        for sample in split.samples:
            try:
                size = os.stat(sample.path).st_size
            except OSError:
                raise ConfigError(f"{file}: {split.key}: image file not found: {sample.path}") from None
            name = os.path.relpath(sample.path, root)
            label = sample.caption if sample.caption is not None else split.space.names[sample.label]
            hasher.update(f"\n{name}\t{size}\t{label}".encode())
    return hasher.hexdigest()[:16]


@dataclass(frozen=True)
class ReadBenchmark:
    """A benchmark file read and checked: what ``load_benchmark_file`` turns into datasets."""

    file: Path
    spec: BenchmarkFile
    classnames: list[str]
    root: Path
    sets: dict[str, ListedSet]  # "pretrain", "train", "val" (when given), "test", "ood.NAME"
    digest: str


def read_benchmark_file(path: str | os.PathLike, data: DataConfig | None = None, check: bool = True) -> ReadBenchmark:
    """Read, list and check a benchmark file (``check``: open a sample of each split's images)."""
    file = Path(path).resolve()
    spec = read_spec(file)
    classnames = _classnames(file, spec)
    root = _root(file, spec, data)
    reader = _Reader(file, classnames, root)
    sources = {"train": spec.splits.train, "test": spec.splits.test}
    if spec.splits.pretrain is not None:
        sources["pretrain"] = spec.splits.pretrain
    if spec.splits.val is not None:
        sources["val"] = spec.splits.val
    sources |= {f"ood.{name}": source for name, source in spec.splits.ood.items()}
    for key in ("train", "val", "test", "pretrain"):
        if key in sources and sources[key].classes is not None:
            raise ConfigError(f"{file}: splits.{key}.classes: only OOD sets may cover some classes")
    sets = {key: reader.read(f"splits.{key}", source, captions=key == "pretrain") for key, source in sources.items()}
    digest = _digest(file, spec, classnames, root, sets)  # stats every file: a missing one is named here
    if check:
        for listed in sets.values():
            check_images(file, listed)
    return ReadBenchmark(file, spec, classnames, root, sets, digest)


def benchmark_digest(path: str | os.PathLike, data: DataConfig | None = None) -> str:
    """The content digest alone (lists and stats the files; opens none)."""
    return read_benchmark_file(path, data, check=False).digest


def _image_set(listed: ListedSet, name: str, workers: int) -> FolderImageSet:
    return FolderImageSet([(s.path, s.label) for s in listed.samples], listed.space, name=name, num_workers=workers)


def _held_out(read: ReadBenchmark) -> np.ndarray | None:
    """Which training samples form the validation split when the file names none (None when it does)."""
    if "val" in read.sets:
        return None
    labels = np.array([s.label for s in read.sets["train"].samples])
    classes, counts = np.unique(labels, return_counts=True)
    for label, size in zip(classes.tolist(), counts.tolist()):
        if size < 2:
            raise ConfigError(f"{read.file}: splits.val: none given, and class {read.classnames[label]!r} has "
                              f"{size} training image (holding out val_share of each class needs 2)")
    share = read.spec.val_share
    return held_out_per_class(labels, lambda n: min(n - 1, max(1, round(share * n))), VAL_SPLIT_SEED)


def training_size(read: ReadBenchmark) -> int:
    """The number of images trials train on: the training split, less what is held out for validation."""
    held = _held_out(read)
    return len(read.sets["train"].samples) - (0 if held is None else int(held.sum()))


def _train_and_val(read: ReadBenchmark, workers: int) -> tuple[FolderImageSet, FolderImageSet]:
    train, held = read.sets["train"], _held_out(read)
    if held is None:
        return _image_set(train, "train", workers), _image_set(read.sets["val"], "val", workers)
    part = [ListedSet(train.key, [s for s, h in zip(train.samples, held) if h == keep], train.space)
            for keep in (False, True)]
    return _image_set(part[0], "train", workers), _image_set(part[1], "val", workers)


def _pretrain(listed: ListedSet, read: ReadBenchmark, workers: int) -> FolderImageSet | CaptionFileDataset:
    if listed.samples[0].caption is None:
        return _image_set(listed, "pretrain", workers)
    table = CaptionTable(read.file, [s.path for s in listed.samples], [s.caption for s in listed.samples],
                         array("L", range(2, len(listed.samples) + 2)))
    return CaptionFileDataset(table)


def load_benchmark_file(path: str | os.PathLike, data: DataConfig | None = None, progress: bool = True) -> Benchmark:
    """The ``Benchmark`` a file describes; its sets get the model's preprocessing later (``set_transforms``)."""
    read = read_benchmark_file(path, data)
    workers = default_num_workers() if data is None or data.num_workers is None else data.num_workers
    train, val = _train_and_val(read, workers)
    spec = read.spec
    tests = {spec.name: _image_set(read.sets["test"], spec.name, workers)}
    tests |= {name: _image_set(read.sets[f"ood.{name}"], name, workers) for name in spec.splits.ood}
    pretrain = _pretrain(read.sets["pretrain"], read, workers) if "pretrain" in read.sets else None
    if progress:
        sizes = ", ".join(f"{name} {len(dataset):,}" for name, dataset in {"train": train, "val": val, **tests}.items())
        log.info("benchmark %s (%s, digest %s): %s", spec.name, read.file, read.digest, sizes)
    return Benchmark(
        name=spec.name, classnames=read.classnames, templates=list(spec.templates),
        zeroshot_templates=list(spec.zeroshot_templates or spec.templates), pretrain=pretrain, train=train, val=val,
        tests=tests, id_test=spec.name, file=str(read.file), digest=read.digest,
        info={"root": str(read.root), "sizes": {name: len(dataset) for name, dataset in tests.items()}},
    )
