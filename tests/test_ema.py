import pytest
import torch

from harness.trial.ema import EMATeacher, momentum_at


def test_momentum_schedule():
    # 100 steps, warm-up over the first 20: 0.05 at the start, linear, 0.9 from step 20 on
    assert momentum_at(0, 100, 0.05, 0.9, 0.2) == pytest.approx(0.05)
    assert momentum_at(10, 100, 0.05, 0.9, 0.2) == pytest.approx(0.05 + 0.85 * 10 / 20)
    assert momentum_at(20, 100, 0.05, 0.9, 0.2) == pytest.approx(0.9)
    assert momentum_at(99, 100, 0.05, 0.9, 0.2) == pytest.approx(0.9)
    assert momentum_at(0, 100, 0.05, 0.9, 0.0) == pytest.approx(0.9)


def test_ema_update_by_hand():
    torch.manual_seed(0)
    student = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.BatchNorm1d(2))
    teacher = EMATeacher(student)
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    with torch.no_grad():
        for param in student.parameters():
            param.add_(1.0)
    student.train()(torch.randn(8, 3))  # moves the BatchNorm running statistics and counter
    teacher.update(student, 0.75)
    after, now = teacher.state_dict(), student.state_dict()
    for name in ("0.weight", "0.bias", "1.weight", "1.running_mean", "1.running_var"):
        assert torch.allclose(after[name], 0.75 * before[name] + 0.25 * now[name]), name
    assert after["1.num_batches_tracked"] == before["1.num_batches_tracked"]  # integers are not averaged
    assert all(not p.requires_grad for p in teacher.model.parameters())


def test_ema_period_as_a_share_of_all_steps():
    from harness.core.config import EMAConfig, build
    from harness.core.errors import ConfigError

    assert EMAConfig(period="2%").period_steps(25_000) == 500  # the released 500 of ~25k ImageNet steps
    assert EMAConfig(period="10%").period_steps(155) == 16
    assert EMAConfig(period="2%").period_steps(20) == 1  # at least one step
    assert EMAConfig(period=7).period_steps(1000) == 7
    for bad in ("two%", 0, "-1%", 2.5, "2 %"):
        with pytest.raises(ConfigError, match=r"^config: period(\.[a-z\[\]-]+)?: "):  # names the key
            build(EMAConfig, {"period": bad})
