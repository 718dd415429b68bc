"""iconshift: sizes, disjointness by drawing, which glyphs each class holds, determinism and its cache."""

from __future__ import annotations

import hashlib
import re
from collections import Counter
from pathlib import Path

import yaml

from harness.data import icons, iconshift

SPLIT_FOLDERS = ("train", "val", "iconshift", "fontawesome", "phosphor", "remix")


def _images(root: Path, folder: str) -> list[Path]:
    return sorted((root / folder).rglob("*.png"))


def test_sizes_and_class_balance_are_those_of_the_docstring(iconshift_file):
    root = iconshift_file.parent
    expected = {"train": 200, "val": 50, "iconshift": 250, "fontawesome": 420, "phosphor": 420, "remix": 420}
    for folder, per_class in expected.items():
        counts = Counter(path.parent.name for path in _images(root, folder))
        assert counts == {name: per_class for name in icons.CLASSNAMES}, folder
    assert len(_images(root, "pretrain")) == iconshift.total_images() - 12 * (200 + 50 + 250 + 3 * 420)


def test_no_drawing_is_in_two_splits(iconshift_file):
    root = iconshift_file.parent
    drawings = {folder: {iconshift.glyph_source(p) for p in _images(root, folder)}
                for folder in ("pretrain", *SPLIT_FOLDERS)}
    names = list(drawings)
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            assert not drawings[a] & drawings[b], (a, b)
    for family in ("fontawesome", "phosphor", "remix"):  # an OOD set holds its own family's drawings only
        assert {d.split("_")[0] for d in drawings[family]} == {family}
    assert {d.split("_")[0] for d in drawings["iconshift"] | drawings["train"] | drawings["val"]} == {"material"}


def test_each_class_holds_the_glyphs_its_families_name_for_it(iconshift_file):
    """Spot checks against the fonts' own names: each family's word for the class, variants included, and the
    look-alikes that draw something else left out."""
    root = iconshift_file.parent

    def names(folder: str, classname: str) -> set[str]:
        return {iconshift.glyph_source(p).split("_", 2)[2] for p in _images(root, f"{folder}/{classname}")}

    assert {"house", "house-chimney"} <= names("fontawesome", "house")
    assert names("remix", "bell") <= {f"notification{n}-{s}" for n in ("", "-2", "-3", "-4") for s in ("line", "fill")}
    assert not any(name.startswith("key-return") for name in names("phosphor", "key"))
    assert all(name.startswith("account") for name in names("iconshift", "person"))
    assert not any("-off" in name or "slash" in name for c in icons.CLASSNAMES for name in names("phosphor", c))


def test_the_pretraining_pool_holds_no_class_glyph_of_a_test_family(iconshift_file):
    rows = (iconshift_file.parent / "pretrain.csv").read_text().splitlines()[1:]
    for row in rows:
        path, caption = row.split(",", 1)
        family, _, name = iconshift.glyph_source(path).split("_", 2)
        if family in ("fontawesome", "phosphor", "remix"):
            assert not any(glyph.name == name for c in icons.CLASSNAMES for glyph in icons.class_glyphs(family, c))
            assert not any(re.search(rf"\b{c}\b", caption) for c in icons.CLASSNAMES), row


def test_the_build_is_deterministic(iconshift_file, tmp_path):
    again = iconshift.build_iconshift(tmp_path / "again", progress=False)

    def digest(root: Path) -> dict[str, str]:
        return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(root.rglob("*"))
                if p.is_file()}

    assert digest(again.parent) == digest(iconshift_file.parent)


def test_it_is_read_through_its_benchmark_file(iconshift_file):
    from harness.data import load_benchmark

    benchmark = load_benchmark("iconshift", progress=False)
    assert benchmark.file == str(iconshift_file) and benchmark.digest is not None
    assert list(benchmark.tests) == ["iconshift", "fontawesome", "phosphor", "remix"]
    assert benchmark.classnames == list(icons.CLASSNAMES)
    assert yaml.safe_load(iconshift_file.read_text())["splits"]["pretrain"] == {"csv": "pretrain.csv"}
    assert "qtawesome" in iconshift_file.parent.name  # a new qtawesome (other fonts) builds anew
    assert iconshift.built_file(progress=False) == iconshift_file  # built once
