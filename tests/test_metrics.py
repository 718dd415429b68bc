import numpy as np
import pytest
import torch
from torchmetrics.classification import MulticlassCalibrationError

from harness.core import metrics


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


@pytest.mark.parametrize("n_bins", [5, 15])
def test_mce_equals_torchmetrics(n_bins):
    probs, labels = _random_predictions(seed=3)
    reference = MulticlassCalibrationError(num_classes=10, n_bins=n_bins, norm="max")(probs, labels).item()
    assert metrics.maximum_calibration_error(probs, labels, n_bins) == pytest.approx(reference, abs=1e-6)


def test_adaptive_ece_by_hand():
    # 6 samples, 2 equal-mass bins: the 3 least confident and the 3 most confident
    probs = torch.tensor([[0.55, 0.45], [0.6, 0.4], [0.65, 0.35], [0.8, 0.2], [0.9, 0.1], [0.95, 0.05]], dtype=torch.float64)
    labels = torch.tensor([1, 0, 0, 0, 0, 1])
    low = abs(2 / 3 - (0.55 + 0.6 + 0.65) / 3)
    high = abs(2 / 3 - (0.8 + 0.9 + 0.95) / 3)
    assert metrics.adaptive_calibration_error(probs, labels, n_bins=2) == pytest.approx((low + high) / 2)


def test_classwise_ece_against_numpy():
    probs, labels = _random_predictions(n=500, classes=4, seed=5)
    p, y = probs.double().numpy(), labels.numpy()
    total = 0.0
    for k in range(4):
        bins = np.minimum((p[:, k] * 10).astype(int), 9)
        for b in range(10):
            members = bins == b
            if members.any():
                total += abs((y[members] == k).mean() - p[members, k].mean()) * members.mean()
    assert metrics.classwise_calibration_error(probs, labels, n_bins=10) == pytest.approx(total / 4)


def test_nll_and_brier_against_numpy():
    probs, labels = _random_predictions(n=300, classes=5, seed=6)
    p, y = probs.double().numpy(), labels.numpy()
    assert metrics.negative_log_likelihood(probs, labels) == pytest.approx(-np.log(p[np.arange(300), y]).mean())
    one_hot = np.eye(5)[y]
    assert metrics.brier_score(probs, labels) == pytest.approx(((p - one_hot) ** 2).sum(1).mean())


def test_reliability_bins_by_hand():
    probs = torch.tensor([[0.9, 0.1], [0.8, 0.2], [0.3, 0.7]], dtype=torch.float64)
    bins = metrics.reliability_bins(probs, torch.tensor([0, 1, 1]), n_bins=2)
    assert bins["count"] == [0, 3]
    assert bins["confidence"][0] is None and bins["confidence"][1] == pytest.approx(0.8)
    assert bins["accuracy"][1] == pytest.approx(2 / 3)
    assert bins["lower"] == [0.0, 0.5] and bins["upper"] == [0.5, 1.0]


def test_report_nll_equals_cross_entropy_of_logits():
    logits = torch.randn(50, 3, generator=torch.Generator().manual_seed(0))
    labels = torch.arange(50) % 3
    report = metrics.classification_report(logits, labels)
    assert report["nll"] == pytest.approx(torch.nn.functional.cross_entropy(logits.double(), labels).item(), rel=1e-9)
    assert report["n"] == 50 and sum(report["reliability"]["count"]) == 50


def test_spectrum_against_numpy():
    features = torch.randn(200, 6, generator=torch.Generator().manual_seed(0)) * torch.tensor([3, 2, 1, 1, 0.5, 0.1])
    x = features.double().numpy()
    singular = np.linalg.svd(np.cov(x, rowvar=False), compute_uv=False)
    spectrum = metrics.embedding_spectrum(features)
    assert spectrum["sigma_min"] == pytest.approx(singular[-1], rel=1e-9)
    assert spectrum["sigma_max"] == pytest.approx(singular[0], rel=1e-9)
    assert spectrum["condition_number"] == pytest.approx(singular[0] / singular[-1], rel=1e-9)
    p = singular / singular.sum()
    assert spectrum["effective_rank"] == pytest.approx(np.exp(-(p * np.log(p)).sum()), rel=1e-9)


def test_noise_floor_of_one_confidence_equals_the_binomial_expectation():
    # every prediction has confidence c, so all fall in one bin and ECE = |k/n - c| with k ~ Binomial(n, c):
    # its expectation is a finite sum over the binomial distribution (scipy), independent of the code under test
    from scipy import stats

    n, c = 200, 0.7
    probs = torch.tensor([[c, 1 - c]] * n, dtype=torch.float64)
    k = np.arange(n + 1)
    expected = float((stats.binom.pmf(k, n, c) * np.abs(k / n - c)).sum())
    floor, spread = metrics.calibration_noise_floor(probs, n_bins=15, draws=4000, seed=1)
    assert floor == pytest.approx(expected, rel=0.03)
    assert spread > 0


def test_noise_floor_equals_a_simulation_with_labels_drawn_from_the_probabilities():
    # independent simulation: whole labels drawn from each row's distribution, ECE by torchmetrics
    probs, _ = _random_predictions(n=1000, seed=3)
    generator = torch.Generator().manual_seed(7)
    ece = MulticlassCalibrationError(num_classes=10, n_bins=15, norm="l1")
    simulated = [ece(probs, torch.multinomial(probs, 1, generator=generator).squeeze(1)).item() for _ in range(300)]
    floor, spread = metrics.calibration_noise_floor(probs, n_bins=15, draws=300, seed=0)
    assert floor == pytest.approx(np.mean(simulated), abs=3 * np.std(simulated) / np.sqrt(300) + 1e-3)
    assert spread == pytest.approx(np.std(simulated), rel=0.25)


def test_ece_bootstrap_interval_covers_the_population_ece_about_95_percent_of_the_time():
    # synthetic model, miscalibrated by a known amount: accuracy = confidence - 0.1 at every confidence, so the
    # population ECE (any binning) is exactly 0.1; the interval should contain it in ~95% of repeated datasets
    rng = np.random.default_rng(0)
    covered, datasets = 0, 120
    for index in range(datasets):
        confidence = rng.uniform(0.55, 1.0, 2000)  # the top label is class 0
        correct = rng.random(2000) < confidence - 0.1
        labels = torch.from_numpy(np.where(correct, 0, 1))
        probs = torch.from_numpy(np.stack([confidence, 1 - confidence], axis=1))
        (low, high), distribution = metrics.ece_bootstrap(probs, labels, n_bins=10, resamples=400, seed=index)
        assert len(distribution) == 400 and low <= metrics.expected_calibration_error(probs, labels, 10) <= high
        covered += low <= 0.1 <= high
    assert 0.88 <= covered / datasets <= 0.995


def test_sigma_min_rel_is_scale_free_and_equals_numpy():
    generator = torch.Generator().manual_seed(0)
    features = torch.randn(500, 8, generator=generator) * torch.linspace(0.1, 2.0, 8)
    spectrum = metrics.embedding_spectrum(features)
    eigenvalues = np.linalg.eigvalsh(np.cov(features.numpy().astype(np.float64), rowvar=False))
    assert spectrum["sigma_min_rel"] == pytest.approx(8 * eigenvalues.min() / eigenvalues.sum(), rel=1e-6)
    assert metrics.embedding_spectrum(features * 7)["sigma_min_rel"] == pytest.approx(spectrum["sigma_min_rel"], rel=1e-6)
    assert metrics.embedding_spectrum(features * 7)["sigma_min"] == pytest.approx(49 * spectrum["sigma_min"], rel=1e-6)
