"""Numbers the docs state that the code can compute: the record's schema version, the embedded benchmarks' test-set
sizes, the budget sweep's grid. Each is computed here and looked for in the text that states it."""

from __future__ import annotations

from pathlib import Path

import yaml

from harness.core.record import SCHEMA
from harness.sweep.spec import grid_points, load_spec

ROOT = Path(__file__).resolve().parent.parent


def _text(relative: str) -> str:
    return (ROOT / relative).read_text()


def test_the_schema_version_the_docs_name_is_the_records():
    assert f"`RUN_DIR/record.json` (schema {SCHEMA}," in _text("docs/trial.md")
    assert _text("docs/record.md").splitlines()[0] == f"# The trial record (`record.json`, schema {SCHEMA})"


def test_digitshifts_test_images_as_the_docs_count_them(digitshift, digitshift_small):
    total = sum(len(images) for images in digitshift.tests.values())
    small = sum(len(images) for images in digitshift_small.tests.values())
    phrase = f"{small:,} in all instead of {total:,}"
    assert phrase in _text("docs/embedded.md") and phrase in _text("harness/data/digitshift.py")


def test_the_readmes_benchmark_table_counts_the_test_images(digitshift, iconshift_file):
    """README: each benchmark's ID test images and its OOD sets' number and images."""
    readme = _text("README.md")
    id_name = next(iter(digitshift.tests))
    ood = [len(images) for name, images in digitshift.tests.items() if name != id_name]
    assert f"| digitshift | MNIST digits ({len(digitshift.tests[id_name]):,} test images) |" in readme
    assert f"({len(ood)} sets, {sum(ood):,} images) |" in readme

    described = yaml.safe_load(iconshift_file.read_text())

    def count(split: dict) -> int:  # the images on disk, not the benchmark's own count
        return sum(1 for _ in (iconshift_file.parent / split["folder"]).rglob("*.png"))

    splits = described["splits"]
    icon_ood = [count(split) for split in splits["ood"].values()]
    assert f"{len(described['classnames'])} classes ({count(splits['test']):,} test images) |" in readme
    assert f"Remix Icon ({len(icon_ood)} sets, {sum(icon_ood):,} images) |" in readme


def test_the_budget_grid_the_ablation_names_is_the_budget_sweeps():
    cells = len(grid_points(load_spec(ROOT / "sweeps" / "budget.yaml")))
    assert f"sweeps/budget.yaml now runs all {cells}" in _text("sweeps/ablation.yaml")
