"""Comparing gradients computed two ways that differ only in float32 summation order."""

from __future__ import annotations

import torch


def assert_gradients_match(actual: dict[str, torch.Tensor], expected: dict[str, torch.Tensor], rtol: float,
                           atol: float) -> None:
    """Same parameters, and each tensor's largest |difference| within ``rtol`` of its largest entry (+ ``atol``).

    Relative to the tensor's largest entry, not to each entry: a gradient sums many rows' contributions, so an
    entry near zero carries the rounding error of the large terms it summed (a token embedding's rows, 1e-5 with
    entries up to 20; a positional embedding's, 2.1e-6 with entries up to 2.7)."""
    assert set(actual) == set(expected)
    for name, grad in expected.items():
        difference, scale = (actual[name] - grad).abs().max().item(), grad.abs().max().item()
        assert difference <= rtol * scale + atol, f"{name}: max |diff| {difference:.3g} (largest entry {scale:.3g})"
