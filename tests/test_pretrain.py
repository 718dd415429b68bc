import json
import math

import numpy as np
import pytest
import torch

from harness.losses import contrastive_loss
from harness.models import create_model
from harness.pretrain import main as pretrain_main
from harness.schedule import cosine_with_warmup


def _log_softmax(x):
    x = x - x.max(axis=1, keepdims=True)
    return x - np.log(np.exp(x).sum(axis=1, keepdims=True))


@pytest.mark.parametrize("smoothing", [0.0, 0.1])
def test_contrastive_loss_against_numpy(smoothing):
    generator = torch.Generator().manual_seed(0)
    image = torch.nn.functional.normalize(torch.randn(6, 4, generator=generator), dim=1)
    text = torch.nn.functional.normalize(torch.randn(6, 4, generator=generator), dim=1)
    logits = 7.0 * image.double().numpy() @ text.double().numpy().T
    total = 0.0
    for matrix in (logits, logits.T):
        log_p = _log_softmax(matrix)
        per_row = (1 - smoothing) * -np.diag(log_p) + smoothing * -log_p.mean(axis=1)
        total += per_row.mean() / 2
    assert contrastive_loss(image, text, 7.0, smoothing).item() == pytest.approx(total, rel=1e-5)


def test_cosine_schedule_values():
    assert cosine_with_warmup(0, 100, 10) == pytest.approx(0.1)
    assert cosine_with_warmup(9, 100, 10) == pytest.approx(1.0)
    assert cosine_with_warmup(10, 100, 10) == pytest.approx(1.0)
    assert cosine_with_warmup(55, 100, 10) == pytest.approx(0.5)
    assert cosine_with_warmup(100, 100, 10) == pytest.approx(0.0, abs=1e-12)


def test_tiny_pretraining_writes_a_loadable_state_dict(digitshift, tmp_path, capsys):
    out = tmp_path / "tiny.pt"
    code = pretrain_main(["model=digit-vit-t", "epochs=1", "max_images=256", "batch_size=64",
                          "init_logit_scale=30", "--out", str(out)])
    assert code == 0
    state = torch.load(out, weights_only=True)
    model, _ = create_model("digit-vit-t", pretrained=str(out))
    assert set(state) == set(model.state_dict())
    summary = json.loads(out.with_suffix(".json").read_text())
    assert summary["steps"] == 4  # 256 images // 64 per batch, one epoch
    assert list(summary["zeroshot"]) == list(digitshift.tests)
    assert math.isclose(summary["logit_scale"], state["logit_scale"].exp().item(), rel_tol=1e-6)
    assert 0 <= summary["zeroshot"]["mnist"]["acc"] <= 1
    assert "logit scale" in capsys.readouterr().out
