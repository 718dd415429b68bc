import subprocess
import sys

import pytest

from harness.core.config import ConfigError, RunConfig, apply_overrides, load_run_config


def test_defaults_are_valid():
    config = RunConfig()
    assert config.method == "zeroshot"
    assert config.eval.n_bins == 15


def test_yaml_and_typed_overrides(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("method: carot\noptim:\n  epochs: 3\nloss:\n  sd_weight: 0.5\n")
    config = load_run_config(path, ["optim.lr=3e-5", "loss.label_smoothing=0.1", "model.pretrained=null"])
    assert config.method == "carot"
    assert config.optim.epochs == 3
    assert config.optim.lr == pytest.approx(3e-5)
    assert config.loss.sd_weight == 0.5 and config.loss.label_smoothing == 0.1
    assert config.model.pretrained is None


def test_overrides_do_not_touch_the_input():
    data = {"optim": {"lr": 1.0}}
    assert apply_overrides(data, ["optim.lr=2"]) == {"optim": {"lr": 2}}
    assert data == {"optim": {"lr": 1.0}}


@pytest.mark.parametrize(
    "yaml_text, overrides, key, words",
    [
        ("optim:\n  lrr: 0.1\n", [], "optim.lrr", "unknown key"),
        ("", ["loss.temperature=2"], "loss.temperature", "unknown key"),
        ("", ["colour=red"], "colour", "unknown key"),
        ("", ["optim.epochs=many"], "optim.epochs", "integer"),
        ("", ["tracking.mode=loud"], "tracking.mode", "'offline'"),
        ("", ["loss.label_smoothing=1.5"], "loss.label_smoothing", "less than 1"),
        ("", ["optim.lr=-1"], "optim.lr", "greater than 0"),
        ("", ["ema.period=0"], "ema.period", "greater than or equal to 1"),
        ("", ["method=sgd"], "method", "available: zeroshot, lp, ft, lpft, flyp, carot"),
        ("", ["ema.m_src=0.95"], "ema.m_src", "must not exceed"),
    ],
)
def test_bad_input_names_the_key(tmp_path, yaml_text, overrides, key, words):
    path = tmp_path / "bad.yaml"
    path.write_text(yaml_text)
    with pytest.raises(ConfigError) as info:
        load_run_config(path, overrides)
    message = str(info.value)
    assert key in message and words in message


@pytest.mark.parametrize("override", ["optim.lr", "=3", "optim..lr=1"])
def test_malformed_overrides(override):
    with pytest.raises(ConfigError, match="expected key.path=value"):
        load_run_config(None, [override])


def test_override_below_a_value_is_refused():
    with pytest.raises(ConfigError, match="seed: is a value, not a section"):
        apply_overrides({"seed": 1}, ["seed.value=2"])


def test_missing_and_non_mapping_files(tmp_path):
    with pytest.raises(ConfigError, match="no such file"):
        load_run_config(tmp_path / "absent.yaml")
    listing = tmp_path / "list.yaml"
    listing.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="expected a mapping"):
        load_run_config(listing)


BAD_INPUT = [
    (["optim.lr=-1"], "optim.lr"),
    (["model.pretrained=null", "data.benchmark=imagenet-x"], "unknown benchmark 'imagenet-x'"),
    (["model.name=ViT-Q-99", "model.pretrained=null"], "unknown model 'ViT-Q-99'"),
    (["no-such-file.yaml"], "no such file"),
]


def test_cli_bad_input_exits_2_with_one_line():
    """As a user runs it, once (a process start costs seconds); the other cases through the same run_cli below."""
    args, words = BAD_INPUT[0]
    result = subprocess.run([sys.executable, "-m", "harness.evaluate", *args], capture_output=True, text=True, timeout=120)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and words in lines[0], result.stderr


@pytest.mark.parametrize("args, words", BAD_INPUT)
def test_bad_input_is_one_line_and_exit_2_before_any_work(args, words, capsys):
    from harness.commands.evaluate import main
    from harness.core.cli import run_cli

    with pytest.raises(SystemExit) as exited:
        run_cli(main, args)
    lines = capsys.readouterr().err.strip().splitlines()
    assert exited.value.code == 2 and len(lines) == 1 and lines[0].startswith("error:") and words in lines[0], lines


def test_flatten_gives_the_dotted_override_keys():
    from harness.core.config import flatten

    assert flatten({"optim": {"lr": 0.1, "epochs": 2}, "seed": 0, "eval": {"wise_alphas": [0.5]}}) == {
        "optim.lr": 0.1, "optim.epochs": 2, "seed": 0, "eval.wise_alphas": [0.5]}
