import numpy as np
import pytest
import torch
import torch.nn.functional as F

from harness.trial.losses import (
    contrastive_loss,
    cross_norm_penalty,
    distillation_loss,
    orthogonality_penalty,
)


def _log_softmax(x):
    x = x - x.max(axis=1, keepdims=True)
    return x - np.log(np.exp(x).sum(axis=1, keepdims=True))


def _features(seed=0, n=6, d=4):
    generator = torch.Generator().manual_seed(seed)
    image = F.normalize(torch.randn(n, d, generator=generator, dtype=torch.float64), dim=1)
    text = F.normalize(torch.randn(n, d, generator=generator, dtype=torch.float64), dim=1)
    return image, text


@pytest.mark.parametrize("smoothing", [0.0, 0.1, 0.3])
def test_contrastive_loss_against_numpy(smoothing):
    image, text = _features()
    logits = 7.0 * image.numpy() @ text.numpy().T
    total = 0.0
    for matrix in (logits, logits.T):
        log_p = _log_softmax(matrix)
        per_row = (1 - smoothing) * -np.diag(log_p) + smoothing * -log_p.mean(axis=1)
        total += per_row.mean() / 2
    assert contrastive_loss(image, text, 7.0, smoothing).item() == pytest.approx(total, rel=1e-10)


def test_no_smoothing_is_plain_cross_entropy_both_ways():
    image, text = _features(1)
    logits = 3.0 * image.numpy() @ text.numpy().T
    plain = (-np.diag(_log_softmax(logits)).mean() - np.diag(_log_softmax(logits.T)).mean()) / 2
    assert contrastive_loss(image, text, torch.tensor(3.0, dtype=torch.float64)).item() == pytest.approx(plain, rel=1e-10)


def test_same_class_targets_spread_the_positive_mass():
    image, text = _features(2, n=4)
    labels = np.array([0, 1, 0, 1])
    same = (labels[:, None] == labels[None, :]).astype(float)
    targets = same / same.sum(axis=1, keepdims=True)
    logits = 5.0 * image.numpy() @ text.numpy().T
    expected = (-(targets * _log_softmax(logits)).sum(1).mean() - (targets.T / targets.T.sum(1, keepdims=True)
                * _log_softmax(logits.T)).sum(1).mean()) / 2
    got = contrastive_loss(image, text, 5.0, targets=torch.from_numpy(targets))
    assert got.item() == pytest.approx(expected, rel=1e-10)


def test_orthogonality_penalty_against_numpy_and_zero_for_orthonormal_columns():
    w = np.random.default_rng(0).normal(size=(8, 3))
    expected = np.sqrt(((w.T @ w - np.eye(3)) ** 2).sum())
    assert orthogonality_penalty(torch.from_numpy(w)).item() == pytest.approx(expected, rel=1e-10)
    q, _ = np.linalg.qr(w)
    assert orthogonality_penalty(torch.from_numpy(q)).item() == pytest.approx(0.0, abs=1e-10)


def test_cross_norm_penalty_against_numpy():
    rng = np.random.default_rng(1)
    wv, wt = rng.normal(size=(8, 3)), rng.normal(size=(5, 3))
    expected = np.sqrt(((wv @ wt.T) ** 2).sum())
    assert cross_norm_penalty(torch.from_numpy(wv), torch.from_numpy(wt)).item() == pytest.approx(expected, rel=1e-10)


def test_distillation_loss_against_numpy():
    rng = np.random.default_rng(2)
    s, t = rng.normal(size=(5, 5)) * 3, rng.normal(size=(5, 5)) * 3
    soft = lambda x: np.exp(_log_softmax(x))  # noqa: E731
    expected = (-(soft(t) * _log_softmax(s)).sum(1) - (soft(t.T) * _log_softmax(s.T)).sum(1)).mean()
    got = distillation_loss(*(torch.from_numpy(x) for x in (s, s.T, t, t.T)))
    assert got.item() == pytest.approx(expected, rel=1e-10)


def test_distillation_at_equal_logits_is_teacher_entropy_with_zero_gradient():
    rng = np.random.default_rng(3)
    t = rng.normal(size=(6, 6)) * 2
    p_image, p_text = np.exp(_log_softmax(t)), np.exp(_log_softmax(t.T))
    entropy = (-(p_image * np.log(p_image)).sum(1) - (p_text * np.log(p_text)).sum(1)).mean()
    student = torch.tensor(t, requires_grad=True)
    loss = distillation_loss(student, student.T, torch.from_numpy(t), torch.from_numpy(t.T))
    assert loss.item() == pytest.approx(entropy, rel=1e-10)
    loss.backward()
    assert student.grad.abs().max().item() < 1e-12
