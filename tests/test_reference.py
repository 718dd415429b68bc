"""docs/config.md is the configuration reference generated from the config models: equal to what they give now,
with every key that a default config holds and a meaning for each; a sweep's --set takes run-config keys."""

from __future__ import annotations

from pathlib import Path

import pytest

from harness.commands.reference import render
from harness.core.config import RunConfig, flatten
from harness.core.errors import ConfigError
from harness.core.reference import reference
from harness.sweep.jobs import SlurmProfile
from harness.sweep.spec import SweepSpec, load_spec

ROOT = Path(__file__).resolve().parent.parent


def test_the_page_is_what_the_models_give():
    assert (ROOT / "docs" / "config.md").read_text() == render(), \
        "docs/config.md is stale: python -m harness.commands.reference > docs/config.md"


@pytest.mark.parametrize("model", [RunConfig, SweepSpec, SlurmProfile])
def test_every_key_is_listed_with_a_meaning(model):
    rows = {row.key: row for row in reference(model)}
    defaults = model() if model is not SweepSpec else model(name="x")
    leaves = set(flatten(defaults.model_dump(mode="json")))
    assert {key for key in leaves if not key.startswith(("objectives",))} <= set(rows)  # a list's items: objectives[]
    assert all(row.description.strip() for row in rows.values()), [k for k, r in rows.items() if not r.description]


def test_the_reference_gives_types_and_defaults():
    rows = {row.key: row for row in reference(RunConfig)}
    assert (rows["optim.lr"].type, rows["optim.lr"].default) == ("float", "0.0001")
    assert (rows["compute.precision"].type, rows["compute.precision"].default) == ("fp32 | bf16 | fp16", '"fp32"')
    assert (rows["run_dir"].type, rows["run_dir"].default) == ("str or null", "null")
    assert rows["optim"].type == "section"
    spec_rows = {row.key: row for row in reference(SweepSpec)}
    assert spec_rows["name"].default == "required" and "search.NAME.grid" in spec_rows
    assert "objectives[].key" in spec_rows


def test_a_run_config_key_given_to_a_sweep_means_the_bases(tmp_path):
    spec = tmp_path / "s.yaml"
    spec.write_text("name: s\nbase: {method: flyp}\n")
    loaded = load_spec(spec, ["optim.lr=0.001", "tracking.mode=disabled", "base.optim.epochs=3"])
    assert loaded.base["optim"] == {"lr": 0.001, "epochs": 3} and loaded.tracking.mode == "disabled"
    with pytest.raises(ConfigError, match="take their seed from seeds"):
        load_spec(spec, ["seed=3"])
