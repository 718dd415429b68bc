"""Every folder imports only from the folders below it: no cycles, and arrows that point one way."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
# Each layer with the packages it may import (besides itself and third-party libraries).
ALLOWED = {
    "harness.core": set(),
    "harness.data": {"harness.core"},
    "harness.models": {"harness.core"},
    "harness.trial": {"harness.core", "harness.data", "harness.models"},
    "harness.sweep": {"harness.core", "harness.data", "harness.models", "harness.trial"},
    "analysis": {"harness.core", "harness.data", "harness.models", "harness.trial", "harness.sweep"},
    "harness.commands": {"harness.core", "harness.data", "harness.models", "harness.trial", "harness.sweep", "analysis"},
}
LAUNCHERS = ("harness/train.py", "harness/evaluate.py", "harness/pretrain.py", "harness/sweep/__main__.py")


def _module(path: Path) -> str:
    return ".".join(path.relative_to(ROOT).with_suffix("").parts)


def _layer(module: str) -> str | None:
    return next((layer for layer in sorted(ALLOWED, key=len, reverse=True) if module == layer or module.startswith(layer + ".")), None)


def _imports(path: Path) -> set[str]:
    """Every project module ``path`` imports, at the top or inside functions."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
        elif isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
    # the package itself holds nothing but its version: anyone may read it
    return {name for name in names if name.split(".")[0] in ("harness", "analysis") and name != "harness"}


SOURCES = sorted(p for folder in ("harness", "analysis") for p in (ROOT / folder).rglob("*.py")
                 if str(p.relative_to(ROOT)) not in LAUNCHERS)


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(ROOT)))
def test_a_module_imports_only_from_the_layers_below_it(path):
    module = _module(path)
    layer = _layer(module)
    if layer is None:  # harness/__init__.py
        assert not _imports(path)
        return
    upward = [name for name in _imports(path) if _layer(name) not in {layer, *ALLOWED[layer]}]
    assert not upward, f"{module} ({layer}) imports {upward}; it may import {sorted(ALLOWED[layer]) or 'nothing of ours'}"


def test_the_layer_table_covers_every_module():
    assert all(_layer(_module(path)) or path.name == "__init__.py" for path in SOURCES)
