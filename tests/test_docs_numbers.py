"""Numbers the docs state that the code can compute: the record's schema version, digitshift's test-set sizes,
the budget sweep's grid. Each is computed here and looked for in the text that states it."""

from __future__ import annotations

from pathlib import Path

from harness.core.record import SCHEMA
from harness.sweep.spec import grid_points, load_spec

ROOT = Path(__file__).resolve().parent.parent


def _text(relative: str) -> str:
    return (ROOT / relative).read_text()


def test_the_schema_version_the_docs_name_is_the_records():
    assert f"`RUN_DIR/record.json` (schema {SCHEMA}," in _text("README.md")
    assert _text("docs/record.md").splitlines()[0] == f"# The trial record (`record.json`, schema {SCHEMA})"


def test_digitshifts_test_images_as_the_docs_count_them(digitshift, digitshift_small):
    total = sum(len(images) for images in digitshift.tests.values())
    small = sum(len(images) for images in digitshift_small.tests.values())
    phrase = f"{small:,} in all instead of {total:,}"
    assert phrase in _text("README.md") and phrase in _text("harness/data/digitshift.py")


def test_the_budget_grid_the_ablation_names_is_the_budget_sweeps():
    cells = len(grid_points(load_spec(ROOT / "sweeps" / "budget.yaml")))
    assert f"sweeps/budget.yaml now runs all {cells}" in _text("sweeps/ablation.yaml")
