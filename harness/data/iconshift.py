"""iconshift: the second embedded benchmark, a benchmark file of rendered icons (``harness.data.icons``).

The ID task is naming an icon from Material Design Icons (12 classes: house, heart, star, bell, camera,
padlock, envelope, cloud, folder, key, airplane, person); its shifts are the same classes as three
other designers draw them: Font Awesome, Phosphor and Remix Icon. The images are rendered (a glyph
at a random size, rotation and offset, white on black, 32x32), but the shift between families is
real: other designers' drawings, not a corruption of the ID images.

Built on first use into the cache as image folders, a caption table and ``iconshift.yaml``, and
read back through the benchmark-file path (``harness.data.benchmark_file``) like any user's file.

Splits (disjoint by glyph: no drawing is in two splits; renders per class x 12 classes):

=========== ================================================================== =======
set         contents                                                           size
=========== ================================================================== =======
pretrain    40% of each class's Material glyphs (150 renders a class); the      4,848
            Codicons and Elusive glyphs of the classes (10 renders each); 450
            glyphs of other concepts from each of the six families (Elusive:
            its 278), captioned by their names (``path,caption`` rows)
train       half of the other Material glyphs (200 renders a class)             2,400
val         10% of each class's Material glyphs, at least one (50 a class)        600
iconshift   the other Material glyphs (ID test, 250 renders a class)            3,000
fontawesome every Font Awesome glyph of the classes (420 renders a class)       5,040
phosphor    every Phosphor glyph of the classes                                 5,040
remix       every Remix Icon glyph of the classes                               5,040
=========== ================================================================== =======

Some classes have one to five glyphs in a family (Font Awesome draws one key), so a set's renders
of a class repeat a few drawings at other sizes and angles: its images are not independent, and its
ECE noise floor (computed as if they were) is a lower bound.
"""

from __future__ import annotations

import csv
import importlib.metadata
import logging
import os
import shutil
import time
from pathlib import Path

import numpy as np
import yaml
from PIL import Image
from tqdm.auto import tqdm

from harness.core.config import DataConfig
from harness.core.errors import ConfigError
from harness.core.storage import cache_dir, file_lock
from harness.data import icons
from harness.data.registry import Benchmark, register_benchmark

log = logging.getLogger(__name__)

NAME = "iconshift"
VERSION = 1  # bump whenever the rendered images change
ID_FAMILY = "material"
OOD_FAMILIES = ("fontawesome", "phosphor", "remix")
PRETRAIN_ONLY_FAMILIES = ("codicons", "elusive")
RENDERS_PER_CLASS = {"pretrain": 150, "train": 200, "val": 50, NAME: 250, "ood": 420}
PRETRAIN_RENDERS_PER_GLYPH = 10  # Codicons and Elusive glyphs of the classes
OTHER_GLYPHS_PER_FAMILY = 450
SHARES = {"pretrain": 0.4, "val": 0.1}  # of each class's Material glyphs; the rest: half train, half ID test
TEMPLATES = ("an icon of the {}.", "a pictogram of the {}.", "the {} icon.")
ZEROSHOT_TEMPLATES = (*TEMPLATES, "a drawing of the {}.", "a symbol of the {}.")
SEED = 0

# Independent random streams, so that changing one part leaves the others as they were.
_STREAMS = {"material-split": 0, "pretrain": 1, "train": 2, "val": 3, NAME: 4, "other": 5,
            **{family: 10 + i for i, family in enumerate(OOD_FAMILIES)}}


def _rng(stream: str) -> np.random.Generator:
    return np.random.default_rng([SEED, _STREAMS[stream]])


def split_material(classname: str) -> dict[str, tuple[icons.Glyph, ...]]:
    """A class's Material glyphs in four disjoint groups: pretrain, val, train and the ID test."""
    glyphs = icons.class_glyphs(ID_FAMILY, classname)
    rng = np.random.default_rng([SEED, _STREAMS["material-split"], icons.CLASSNAMES.index(classname)])
    shuffled = [glyphs[i] for i in rng.permutation(len(glyphs))]
    n_pretrain = max(1, round(SHARES["pretrain"] * len(shuffled)))
    n_val = max(1, round(SHARES["val"] * len(shuffled)))
    rest = shuffled[n_pretrain + n_val:]
    n_train = max(1, len(rest) // 2)
    return {"pretrain": tuple(shuffled[:n_pretrain]), "val": tuple(shuffled[n_pretrain:n_pretrain + n_val]),
            "train": tuple(rest[:n_train]), NAME: tuple(rest[n_train:])}


def file_name(index: int, glyph: icons.Glyph) -> str:
    """``NNNNN_family_font_name.png``: the glyph it shows is read back from the name (``glyph_source``)."""
    font = [file for file, _ in icons.FAMILIES[glyph.family].fonts].index(glyph.font)
    return f"{index:05d}_{glyph.family}_{font}_{glyph.name}.png"


def glyph_source(path: str | os.PathLike) -> str:
    """The drawing an image of this benchmark shows (``family_font_name``), from its file name."""
    return Path(path).stem.split("_", 1)[1]


class _Writer:
    """Renders glyphs into one split's folder, cycling through each class's glyphs so that all are used evenly."""

    def __init__(self, root: Path, renderer: icons.GlyphRenderer, bar: tqdm):
        self.root, self.renderer, self.bar = root, renderer, bar
        self.count = 0

    def write(self, folder: str, glyph: icons.Glyph, rng: np.random.Generator) -> str:
        relative = f"{folder}/{file_name(self.count, glyph)}"
        self.count += 1
        path = self.root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(self.renderer.render(glyph, rng)).save(path)
        self.bar.update()
        return relative

    def class_split(self, split: str, glyphs_by_class: dict[str, tuple[icons.Glyph, ...]], per_class: int,
                    rng: np.random.Generator) -> None:
        for classname, glyphs in glyphs_by_class.items():
            order = rng.permutation(len(glyphs))
            for k in range(per_class):
                self.write(f"{split}/{classname}", glyphs[order[k % len(glyphs)]], rng)


def _pretrain_rows(writer: _Writer, material: dict[str, dict[str, tuple]]) -> list[tuple[str, str]]:
    """The pre-training pool's (path, caption) rows: class glyphs captioned by class, other glyphs by their names."""
    rng = _rng("pretrain")
    rows = []

    def caption(subject: str) -> str:
        return TEMPLATES[int(rng.integers(len(TEMPLATES)))].format(subject)

    for classname in icons.CLASSNAMES:
        glyphs = material[classname]["pretrain"]
        for k in range(RENDERS_PER_CLASS["pretrain"]):
            rows.append((writer.write("pretrain", glyphs[k % len(glyphs)], rng), caption(classname)))
        for family in PRETRAIN_ONLY_FAMILIES:
            for glyph in icons.class_glyphs(family, classname):
                rows += [(writer.write("pretrain", glyph, rng), caption(classname))
                         for _ in range(PRETRAIN_RENDERS_PER_GLYPH)]
    other = _rng("other")
    for family in icons.FAMILIES:
        candidates = icons.other_glyphs(family)
        for index in sorted(other.choice(len(candidates), _others(family), replace=False)):
            glyph = candidates[int(index)]
            rows.append((writer.write("pretrain", glyph, rng), caption(glyph.words)))
    return rows


def _others(family: str) -> int:
    """How many glyphs of other concepts ``family`` gives the pre-training pool (Elusive has fewer than the rest)."""
    return min(OTHER_GLYPHS_PER_FAMILY, len(icons.other_glyphs(family)))


def _spec(rows_file: str) -> dict:
    return {
        "name": NAME,
        "classnames": list(icons.CLASSNAMES),
        "templates": list(TEMPLATES),
        "zeroshot_templates": list(ZEROSHOT_TEMPLATES),
        "splits": {
            "pretrain": {"csv": rows_file},
            "train": {"folder": "train"},
            "val": {"folder": "val"},
            "test": {"folder": NAME},
            "ood": {family: {"folder": family} for family in OOD_FAMILIES},
        },
    }


def total_images() -> int:
    classes = len(icons.CLASSNAMES)
    pretrain_only = sum(len(icons.class_glyphs(f, c)) for f in PRETRAIN_ONLY_FAMILIES for c in icons.CLASSNAMES)
    return (classes * (RENDERS_PER_CLASS["pretrain"] + RENDERS_PER_CLASS["train"] + RENDERS_PER_CLASS["val"]
                       + RENDERS_PER_CLASS[NAME] + RENDERS_PER_CLASS["ood"] * len(OOD_FAMILIES))
            + pretrain_only * PRETRAIN_RENDERS_PER_GLYPH + sum(_others(f) for f in icons.FAMILIES))


def build_iconshift(root: Path, progress: bool = True) -> Path:
    """Render every split into ``root`` (which must not exist) and write its benchmark file; returns the file."""
    material = {c: split_material(c) for c in icons.CLASSNAMES}
    with tqdm(total=total_images(), desc="building iconshift", unit="image", disable=not progress) as bar:
        writer = _Writer(root, icons.GlyphRenderer(), bar)
        rows = _pretrain_rows(writer, material)
        for split in ("train", "val", NAME):
            writer.class_split(split, {c: material[c][split] for c in icons.CLASSNAMES}, RENDERS_PER_CLASS[split],
                               _rng(split))
        for family in OOD_FAMILIES:
            writer.class_split(family, {c: icons.class_glyphs(family, c) for c in icons.CLASSNAMES},
                               RENDERS_PER_CLASS["ood"], _rng(family))
    with open(root / "pretrain.csv", "w", newline="", encoding="utf-8") as handle:
        table = csv.writer(handle)
        table.writerow(["path", "caption"])
        table.writerows(rows)
    file = root / f"{NAME}.yaml"
    file.write_text(yaml.safe_dump(_spec("pretrain.csv"), sort_keys=False))
    return file


def built_file(progress: bool = True) -> Path:
    """The benchmark file, built on first use (one process at a time; a finished build appears whole), in a folder
    named by the version of qtawesome whose fonts it renders."""
    root = cache_dir() / "benchmarks" / f"{NAME}-v{VERSION}-qtawesome{importlib.metadata.version(icons.PACKAGE)}"
    file = root / f"{NAME}.yaml"
    with file_lock(root.with_name(root.name + ".lock")):
        if not file.exists():
            started = time.perf_counter()
            partial = root.with_name(f".{root.name}.partial")
            shutil.rmtree(partial, ignore_errors=True)
            build_iconshift(partial, progress)
            shutil.rmtree(root, ignore_errors=True)
            os.rename(partial, root)
            log.info("built %s in %.1f s -> %s", NAME, time.perf_counter() - started, file)
    return file


def _check(data: DataConfig) -> None:
    if data.root is not None:
        raise ConfigError(f"data.root: {NAME} is embedded and has no data root (got {data.root!r}); set it to null")
    icons.fonts_folder()


@register_benchmark(NAME, version=VERSION, train_size=RENDERS_PER_CLASS["train"] * len(icons.CLASSNAMES),
                    check=_check, pretrains=True, file=built_file)
def load_iconshift(progress: bool = True, data: DataConfig | None = None) -> Benchmark:
    """The iconshift benchmark: its files built on first use, then read as the benchmark file they are."""
    from harness.data.benchmark_file import load_benchmark_file

    return load_benchmark_file(built_file(progress), data=data, progress=progress)
