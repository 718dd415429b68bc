import numpy as np
import pytest
import torch

from harness.trial.posthoc import fit_temperature, interpolate_weights


def test_temperature_matches_a_brute_force_search():
    generator = torch.Generator().manual_seed(0)
    base = torch.randn(4000, 10, generator=generator) * 2
    labels = torch.multinomial(base.softmax(dim=1), 1, generator=generator).squeeze(1)
    logits = base * 2.5  # overconfident by a factor 2.5: the best temperature is near 2.5
    z, y = logits.double().numpy(), labels.numpy()

    def nll(t):
        s = z / t
        s = s - s.max(1, keepdims=True)
        return -(s[np.arange(len(y)), y] - np.log(np.exp(s).sum(1))).mean()

    grid = np.exp(np.linspace(np.log(1.0), np.log(6.0), 4001))  # steps of 0.045%
    best = grid[np.argmin([nll(t) for t in grid])]
    fitted = fit_temperature(logits, labels)
    assert fitted == pytest.approx(best, rel=1e-3)
    assert fitted == pytest.approx(2.5, rel=0.1)


def test_interpolate_weights_by_hand():
    pre = {"w": torch.tensor([0.0, 2.0]), "steps": torch.tensor(3)}
    ft = {"w": torch.tensor([4.0, 6.0]), "steps": torch.tensor(7)}
    mixed = interpolate_weights(pre, ft, 0.25)
    assert torch.allclose(mixed["w"], torch.tensor([1.0, 3.0]))
    assert mixed["steps"] == 7
    with pytest.raises(ValueError):
        interpolate_weights(pre, {"w": ft["w"]}, 0.5)
