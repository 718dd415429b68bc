"""A sweep's ``settings``: named override sets crossed with its variants (a study across benchmarks and models)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
from pydantic import ValidationError

from harness.sweep.spec import SweepSpec, grid_points, load_spec, trial_config
from harness.sweep.study import spec_digest

SPEC = {
    "name": "across",
    "variants": {"flyp": ["method=flyp"], "ls": ["method=flyp", "loss.label_smoothing=0.1", "optim.lr=5e-4"]},
    "settings": {"digits": ["data.benchmark=digitshift-small", "optim.lr=3e-3"],
                 "icons": ["data.benchmark=iconshift", "model.pretrained=iconshift", "optim.lr=1e-3"]},
    "search": {"setting": {"grid": ["digits", "icons"]}, "variant": {"grid": ["flyp", "ls"]}},
    "seeds": [0, 1],
}


def test_each_setting_crosses_every_variant_and_a_variants_own_keys_win(tmp_path):
    spec = SweepSpec.model_validate(SPEC)
    points = grid_points(spec)
    assert len(points) == 2 * 2 * 2
    configs = {(p["setting"], p["variant"]): trial_config(spec, p, seed, tmp_path / "r", tmp_path)
               for p, seed in points if seed == 0}
    assert configs["icons", "flyp"].data.benchmark == "iconshift" and configs["icons", "flyp"].model.pretrained == "iconshift"
    assert configs["digits", "flyp"].data.benchmark == "digitshift-small"
    assert configs["digits", "flyp"].optim.lr == 3e-3 and configs["icons", "flyp"].optim.lr == 1e-3  # the setting's
    assert configs["icons", "ls"].optim.lr == 5e-4 and configs["icons", "ls"].loss.label_smoothing == 0.1  # the variant's


@pytest.mark.parametrize("change, message", [
    ({"settings": {}}, "search.setting needs a settings: mapping"),
    ({"search": {"setting": {"grid": ["digits", "letters"]}}}, "search.setting names ['letters'] missing from settings"),
])
def test_a_setting_the_spec_does_not_define_is_refused(change, message):
    with pytest.raises(ValidationError, match=message.replace("[", r"\[").replace("]", r"\]")):
        SweepSpec.model_validate(SPEC | change)


def test_a_spec_without_settings_keeps_the_digest_of_its_existing_studies():
    """The digest was sha256 over these keys before settings existed; old studies must still open."""
    spec = load_spec(Path(__file__).resolve().parents[1] / "sweeps" / "ablation.yaml")
    dump = spec.model_dump(mode="json")
    old_keys = ("base", "overrides", "variants", "search", "seeds", "sampler", "objectives")
    expected = hashlib.sha256(json.dumps({k: dump[k] for k in old_keys}, sort_keys=True).encode()).hexdigest()[:16]
    assert spec_digest(spec) == expected
    with_settings = SweepSpec.model_validate(SPEC)
    without = SweepSpec.model_validate(SPEC | {"settings": {**SPEC["settings"], "digits": ["optim.lr=1e-2"]}})
    assert spec_digest(with_settings) != spec_digest(without)  # what a setting changes defines the study
