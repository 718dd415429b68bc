"""Plugins: a module outside the package registers a benchmark, a model config and a method; configs and specs
name it (as a module or a .py file) or an installed entry point brings it; trial jobs see it on every launcher."""

from __future__ import annotations

import json
import shutil
import textwrap
from importlib import resources
from pathlib import Path

import open_clip
import pytest
import yaml
from benchmark_files import write_benchmark

from harness.commands.sweep import main as sweep_main
from harness.commands.train import main as train_main
from harness.core import plugins
from harness.core.cli import run_cli
from harness.core.config import RunConfig, load_run_config
from harness.core.errors import ConfigError
from harness.data import available_benchmarks, load_benchmark

PLUGIN = '''
"""A user's plugin: a benchmark, a model and a method, registered without editing carot-harness."""
from pathlib import Path

from harness.core.methods import Method, Stage, register_method
from harness.data import register_benchmark
from harness.data.benchmark_file import load_benchmark_file
from harness.models.clip import register_model_configs

HERE = Path(__file__).parent


@register_benchmark("{benchmark}")
def load_toy(data=None, progress=True):
    return load_benchmark_file(HERE / "data" / "bench.yaml", data, progress)


register_model_configs(HERE / "{model}.json")
register_method(Method("flyp-ls", (Stage("all", "contrastive"),), "zeroshot", loss_defaults={{"label_smoothing": 0.1}}))
'''


def write_plugin(folder: Path, module: str = "toy_plugin", benchmark: str = "toy-plugin", model: str = "toy-vit") -> Path:
    """A plugin module in ``folder`` (not in the package), with the data and model config it registers."""
    folder.mkdir(parents=True, exist_ok=True)
    write_benchmark(folder / "data", per_class=4)
    with resources.as_file(resources.files("harness.models") / "configs" / "digit-vit-t.json") as config:
        shutil.copy(config, folder / f"{model}.json")
    path = folder / f"{module}.py"
    path.write_text(PLUGIN.format(benchmark=benchmark, model=model))
    return path


def test_a_plugin_file_registers_a_benchmark_a_model_and_a_method(tmp_path):
    path = write_plugin(tmp_path / "mine")
    config = RunConfig.model_validate({"plugins": [str(path)], "method": "flyp-ls", "model": {"name": "toy-vit"},
                                       "data": {"benchmark": "toy-plugin", "num_workers": 0}})
    assert config.loss.label_smoothing == 0.1  # the plugin method's loss default
    assert "toy-vit" in open_clip.list_models() and "toy-plugin" in available_benchmarks()
    benchmark = load_benchmark("toy-plugin", data=config.data, progress=False)
    assert benchmark.name == "toy" and len(benchmark.tests) == 3


def test_a_plugin_module_on_the_python_path(tmp_path, monkeypatch):
    write_plugin(tmp_path, module="path_plugin", benchmark="toy-path", model="toy-vit-path")
    monkeypatch.syspath_prepend(str(tmp_path))
    config = load_run_config(None, ["plugins=[path_plugin]", "data.benchmark=toy-path", "model.name=toy-vit-path"])
    assert config.plugins == ["path_plugin"] and "toy-path" in available_benchmarks()


def test_relative_plugin_files_are_made_absolute(tmp_path, monkeypatch):
    write_plugin(tmp_path)
    monkeypatch.chdir(tmp_path)
    config = load_run_config(None, ["plugins=[toy_plugin.py]"])
    assert config.plugins == [str(tmp_path / "toy_plugin.py")]  # a job elsewhere finds it


@pytest.mark.parametrize("name, words", [
    ("no_such_plugin_module", "plugins: cannot import 'no_such_plugin_module'"),
    ("/nowhere/plugin.py", "plugins: /nowhere/plugin.py: no such file"),
])
def test_a_missing_plugin_exits_2_with_one_line(name, words, capsys):
    with pytest.raises(SystemExit) as info:
        run_cli(train_main, [f"plugins=[{name}]"])
    err = capsys.readouterr().err.strip().splitlines()
    assert info.value.code == 2 and len(err) == 1 and words in err[0], err


def test_a_plugin_that_raises_is_named(tmp_path):
    broken = tmp_path / "broken.py"
    broken.write_text("raise RuntimeError('no GPU in this plugin')\n")
    with pytest.raises(ConfigError, match="importing .*broken.py' failed: RuntimeError: no GPU in this plugin"):
        plugins.import_plugin(str(broken))


def test_installed_entry_points_are_loaded_once(tmp_path, monkeypatch):
    write_plugin(tmp_path, module="entry_plugin", benchmark="toy-entry", model="toy-vit-entry")
    info = tmp_path / "entry_plugin-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: entry-plugin\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text(f"[{plugins.ENTRY_POINT_GROUP}]\ntoy = entry_plugin\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(plugins, "_installed_loaded", False)  # as in a fresh process
    assert "toy-entry" not in available_benchmarks()
    config = RunConfig.model_validate({"data": {"benchmark": "toy-entry"}, "model": {"name": "toy-vit-entry"}})
    assert config.data.benchmark == "toy-entry" and "toy-entry" in available_benchmarks()


def _plugin_sweep(tmp_path: Path) -> Path:
    """A spec in a folder of its own naming its plugin by a path relative to that folder."""
    write_plugin(tmp_path / "study")
    spec = {"name": "plugged", "plugins": ["toy_plugin.py"],
            "base": {"model": {"name": "toy-vit", "pretrained": None},
                     "data": {"benchmark": "toy-plugin", "num_workers": 0},
                     "optim": {"epochs": 1, "batch_size": 4, "warmup_steps": 1},
                     "eval": {"batch_size": 16, "bootstrap": 20, "floor_draws": 20}},
            "search": {"method": {"grid": ["flyp-ls", "carot"]}}, "launcher": {"kind": "local", "parallelism": 2},
            "tracking": {"mode": "disabled"}, "out": str(tmp_path / "out")}
    path = tmp_path / "study" / "spec.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def _check_plugged(out: Path, plugin: Path) -> None:
    lines = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert sorted(line["params"]["method"] for line in lines) == ["carot", "flyp-ls"]
    for line in lines:
        assert line["state"] == "COMPLETE", line["error"]
        record = json.loads((out / line["record"]).read_text())
        assert record["config"]["plugins"] == [str(plugin)] and record["config"]["model"]["name"] == "toy-vit"
        assert record["benchmark"] == "toy" and set(record["tests"]) == {"val", "toy", "sketch", "photos"}
        if record["method"] == "flyp-ls":
            assert record["config"]["loss"]["label_smoothing"] == 0.1


@pytest.mark.slow
def test_a_sweep_on_the_local_launcher_uses_a_plugin(tmp_path, private_cache):
    path = _plugin_sweep(tmp_path)
    assert sweep_main([str(path)]) == 0
    _check_plugged(tmp_path / "out", path.parent / "toy_plugin.py")


@pytest.mark.slow
def test_a_sweep_on_slurm_uses_a_plugin(slurm_cluster, tmp_path, private_cache):
    path = _plugin_sweep(tmp_path)
    assert sweep_main([str(path), "--launcher", "slurm", "--profile", str(slurm_cluster)]) == 0
    _check_plugged(tmp_path / "out", path.parent / "toy_plugin.py")


def test_the_plugin_example_of_the_docs_is_this_one():
    """docs/plugins.md shows the plugin these tests run, so its worked example is known to work."""
    docs = (Path(__file__).resolve().parent.parent / "docs" / "plugins.md").read_text()
    body = textwrap.dedent(PLUGIN.format(benchmark="toy-plugin", model="toy-vit")).strip()
    assert body in docs

