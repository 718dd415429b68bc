import pytest
import torch
from torchmetrics.classification import MulticlassCalibrationError

from harness import metrics


def _random_predictions(n=2000, classes=10, seed=0):
    generator = torch.Generator().manual_seed(seed)
    logits = torch.randn(n, classes, generator=generator) * 3
    labels = torch.randint(0, classes, (n,), generator=generator)
    return logits.softmax(dim=1), labels


@pytest.mark.parametrize("n_bins", [1, 10, 15])
@pytest.mark.parametrize("seed", [0, 1])
def test_ece_equals_torchmetrics(n_bins, seed):
    probs, labels = _random_predictions(seed=seed)
    reference = MulticlassCalibrationError(num_classes=10, n_bins=n_bins, norm="l1")(probs, labels).item()
    assert metrics.expected_calibration_error(probs, labels, n_bins) == pytest.approx(reference, abs=1e-6)


def test_ece_by_hand():
    # top-label confidences: 0.9 (right), 0.9 (wrong), 0.6 (right), 0.8 (wrong)
    probs = torch.tensor([[0.9, 0.1], [0.9, 0.1], [0.4, 0.6], [0.2, 0.8]], dtype=torch.float64)
    labels = torch.tensor([0, 1, 1, 0])
    # all confidences fall in [0.5, 1): conf mean (0.9+0.9+0.6+0.8)/4 = 0.8, accuracy 2/4
    assert metrics.expected_calibration_error(probs, labels, n_bins=2) == pytest.approx(0.3)
    # 10 bins: bin 9 {0.9 right, 0.9 wrong} gap |0.5-0.9|*2/4, bin 6 {0.6 right} |1-0.6|/4, bin 8 {0.8 wrong} 0.8/4
    assert metrics.expected_calibration_error(probs, labels, n_bins=10) == pytest.approx((0.8 + 0.4 + 0.8) / 4)


def test_confidence_one_lands_in_the_last_bin():
    probs = torch.tensor([[1.0, 0.0], [1.0, 0.0]])
    assert metrics.expected_calibration_error(probs, torch.tensor([0, 1]), n_bins=15) == pytest.approx(0.5)


def test_accuracy_and_confidence():
    probs = torch.tensor([[0.7, 0.3], [0.2, 0.8], [0.6, 0.4]])
    labels = torch.tensor([0, 0, 0])
    assert metrics.accuracy(probs, labels) == pytest.approx(2 / 3)
    assert metrics.mean_confidence(probs) == pytest.approx((0.7 + 0.8 + 0.6) / 3)
