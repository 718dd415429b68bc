"""Plugins: a user's own modules that register benchmarks, models and methods without editing the package.

A plugin is imported for its side effects (its calls to ``harness.data.register_benchmark``,
``harness.models.clip.register_model_configs`` and ``harness.core.methods.register_method``). It is
found in one of two ways (docs/plugins.md has a worked example):

- named in a run config or sweep spec (``plugins: [mypkg.bench]`` or ``plugins: [/path/to/bench.py]``):
  every trial job imports it before its config is validated, on every launcher;
- installed with an entry point in the group ``carot_harness.plugins`` (``mypkg.bench`` or
  ``mypkg.bench:register``, a function called with no arguments): loaded once per process before the
  first config is validated or the first benchmark looked up.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.metadata
import importlib.util
import logging
import sys
from pathlib import Path
from types import ModuleType
from typing import Iterable

from harness.core.errors import ConfigError

log = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "carot_harness.plugins"

_installed_loaded = False
_by_path: dict[str, ModuleType] = {}


def _from_file(path: Path) -> ModuleType:
    """Import a ``.py`` file once per process, under a module name derived from its absolute path."""
    key = str(path.resolve())
    if key in _by_path:
        return _by_path[key]
    if not path.is_file():
        raise ConfigError(f"plugins: {path}: no such file")
    name = f"carot_plugin_{path.stem}_{hashlib.sha256(key.encode()).hexdigest()[:8]}"
    spec = importlib.util.spec_from_file_location(name, key)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # before running it: dataclasses and pickling look modules up by name
    try:
        spec.loader.exec_module(module)
    except Exception:
        del sys.modules[name]
        raise
    _by_path[key] = module
    return module


def import_plugin(name: str) -> ModuleType:
    """Import one plugin: a module name, or the path of a ``.py`` file."""
    try:
        if name.endswith(".py"):
            return _from_file(Path(name))
        return importlib.import_module(name)
    except ConfigError:
        raise
    except ModuleNotFoundError as exc:
        raise ConfigError(f"plugins: cannot import {name!r} ({exc}); is it installed or on PYTHONPATH?") from exc
    except Exception as exc:
        raise ConfigError(f"plugins: importing {name!r} failed: {type(exc).__name__}: {exc}") from exc


def load_installed_plugins() -> None:
    """Load every ``carot_harness.plugins`` entry point, once per process."""
    global _installed_loaded
    if _installed_loaded:
        return
    _installed_loaded = True
    for entry in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        try:
            loaded = entry.load()
            if callable(loaded) and not isinstance(loaded, ModuleType):
                loaded()
        except Exception as exc:
            raise ConfigError(f"plugin entry point {entry.name!r} ({entry.value}) of group {ENTRY_POINT_GROUP} "
                              f"failed: {type(exc).__name__}: {exc}") from exc
        log.debug("loaded plugin %s (%s)", entry.name, entry.value)


def load_plugins(names: Iterable[str]) -> None:
    """The installed plugins, then each named one (importing a module twice runs it once)."""
    load_installed_plugins()
    for name in names:
        if not isinstance(name, str):
            raise ConfigError(f"plugins: expected module names or .py paths, got {name!r}")
        import_plugin(name)
