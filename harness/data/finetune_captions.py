"""Fine-tuning captions for file-backed datasets, as FLYP and CaRot make them, and user caption tables.

Template captions: each image gets ``template.format(classname)`` with the template picked per
image per epoch by a hash of ``(seed, epoch, index)``: reproducible, different across epochs, and
nothing is materialised (1.28M ImageNet images x 80 templates would be a 100M-row CSV). Class
names and the 80 templates are open_clip's (``open_clip.zero_shot_metadata``).

Caption tables: a CSV (``,``) or TSV (``.tsv``/``.tab``: tab) file with a header naming a file-path
column and a caption column (``filepath`` and ``caption`` by default, as open_clip's ``--csv-img-key``
/ ``--csv-caption-key``); relative paths are resolved against ``root`` or the table's directory.
Malformed tables raise ``ConfigError`` with one line naming the file and line.
"""

from __future__ import annotations

import csv
import os
from array import array
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

from torch.utils.data import Dataset

from harness.core.errors import ConfigError
from harness.data.image_files import load_rgb
from harness.data.pipeline import mix64


def format_strings(templates: Sequence) -> tuple[str, ...]:
    """Templates as ``"{}"`` format strings (open_clip stores its own as callables)."""
    return tuple(t("{}") if callable(t) else t for t in templates)


def imagenet_templates(which: str = "openai") -> tuple[str, ...]:
    """open_clip's ImageNet templates as format strings: the 80 OpenAI ones, or its 7 ``"simple"`` ones."""
    from open_clip.zero_shot_metadata import (
        OPENAI_IMAGENET_TEMPLATES,
        SIMPLE_IMAGENET_TEMPLATES,
    )

    return format_strings(SIMPLE_IMAGENET_TEMPLATES if which == "simple" else OPENAI_IMAGENET_TEMPLATES)


class TemplateCaptions:
    """``caption(epoch, index, label)``: a template chosen by ``(seed, epoch, index)``, filled with the class name."""

    def __init__(self, classnames: Sequence[str] | None = None, templates: Sequence[str] | None = None, seed: int = 0):
        if classnames is None:
            from open_clip.zero_shot_metadata import IMAGENET_CLASSNAMES as classnames
        self.classnames = tuple(classnames)
        self.templates = format_strings(templates) if templates else imagenet_templates()
        self.seed = seed

    def template_index(self, epoch: int, index: int) -> int:
        return mix64(self.seed, epoch, index) % len(self.templates)

    def caption(self, epoch: int, index: int, label: int) -> str:
        return self.templates[self.template_index(epoch, index)].format(self.classnames[label])

    __call__ = caption


class CaptionedImages(Dataset):
    """``(image, caption, label)`` from a labelled dataset and a ``TemplateCaptions``.

    Keys are ``(epoch, index)`` (use ``harness.data.pipeline.EpochSampler``) or a plain index (epoch 0).
    """

    def __init__(self, base: Dataset, captions: TemplateCaptions):
        self.base, self.captions = base, captions

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, key):
        epoch, index = key if isinstance(key, tuple) else (0, key)
        image, label = self.base[index]
        return image, self.captions(epoch, index, label), label


@dataclass
class CaptionTable:
    """Rows of a caption file: image paths (resolved), captions, and each row's line in the file."""

    source: Path
    paths: list[str]
    captions: list[str]
    lines: array

    def __len__(self) -> int:
        return len(self.paths)


def read_caption_table(
    path: str | os.PathLike,
    filepath_key: str = "filepath",
    caption_key: str = "caption",
    root: str | os.PathLike | None = None,
    delimiter: str | None = None,
    check_files: bool = False,
) -> CaptionTable:
    """Read a CSV/TSV of (file path, caption); ``ConfigError("FILE:LINE: ...")`` on any malformed row."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: caption file not found")
    if delimiter is None:
        delimiter = "\t" if path.suffix.lower() in (".tsv", ".tab") else ","
    base = Path(root) if root is not None else path.parent
    paths, captions, lines = [], [], array("L")
    with open(path, newline="", encoding="utf-8") as handle:
        reader = csv.reader(handle, delimiter=delimiter)
        try:
            header = next(reader, None)
            if header is None:
                raise ConfigError(f"{path}:1: empty file; expected a header with {filepath_key!r} and {caption_key!r}")
            header = [name.strip() for name in header]
            for key in (filepath_key, caption_key):
                if key not in header:
                    hint = "; is it tab-separated? name it .tsv" if delimiter == "," and len(header) == 1 else ""
                    raise ConfigError(f"{path}:1: header has no column {key!r} (columns: {', '.join(header)}){hint}")
            file_column, caption_column = header.index(filepath_key), header.index(caption_key)
            for row in reader:
                line = reader.line_num
                if not row or all(not cell.strip() for cell in row):
                    continue
                if len(row) != len(header):
                    raise ConfigError(f"{path}:{line}: expected {len(header)} fields, got {len(row)}")
                file, caption = row[file_column].strip(), row[caption_column].strip()
                if not file:
                    raise ConfigError(f"{path}:{line}: empty {filepath_key!r}")
                if not caption:
                    raise ConfigError(f"{path}:{line}: empty {caption_key!r}")
                resolved = Path(file) if os.path.isabs(file) else base / file
                if check_files and not resolved.is_file():
                    raise ConfigError(f"{path}:{line}: image file not found: {resolved}")
                paths.append(str(resolved))
                captions.append(caption)
                lines.append(line)
        except csv.Error as error:
            raise ConfigError(f"{path}:{reader.line_num}: {error}") from None
        except UnicodeDecodeError as error:
            raise ConfigError(f"{path}: not UTF-8 text ({error.reason} at byte {error.start})") from None
    if not paths:
        raise ConfigError(f"{path}:2: no rows after the header")
    return CaptionTable(path, paths, captions, lines)


class CaptionFileDataset(Dataset):
    """``(transform(image), caption)`` per row of a ``CaptionTable``; an unreadable image names its table line."""

    def __init__(self, table: CaptionTable, transform: Callable | None = None):
        self.table, self.transform = table, transform

    def __len__(self) -> int:
        return len(self.table)

    def __getitem__(self, index: int):
        try:
            image = load_rgb(self.table.paths[index])
        except (OSError, ValueError) as error:
            raise ConfigError(f"{self.table.source}:{self.table.lines[index]}: cannot read image "
                              f"{self.table.paths[index]} ({error.__class__.__name__})") from None
        return (self.transform(image) if self.transform else image), self.table.captions[index]
