import pytest
import torch

from harness.trial.optim import decay_groups


def _named():
    model = torch.nn.Module()
    model.proj = torch.nn.Parameter(torch.ones(4, 3))
    model.bias = torch.nn.Parameter(torch.ones(3))
    model.token_embedding = torch.nn.Parameter(torch.ones(5, 3))
    model.logit_scale = torch.nn.Parameter(torch.tensor(1.0))
    frozen = torch.nn.Parameter(torch.ones(2, 2), requires_grad=False)
    model.frozen = frozen
    return list(model.named_parameters())


def _decayed(groups):
    return {id(p) for g in groups if g["weight_decay"] > 0 for p in g["params"]}


def test_released_rule_decays_every_trainable_parameter():
    named = _named()
    groups = decay_groups(named, 0.1, "all")
    assert _decayed(groups) == {id(p) for n, p in named if n != "frozen"}
    assert sum(len(g["params"]) for g in groups) == 4


def test_open_clip_rule_decays_matrices_only():
    named = dict(_named())
    assert _decayed(decay_groups(named.items(), 0.1, "matrices")) == {id(named["proj"])}


def _gradient_norm_at_the_optimizer_step(digitshift, tmp_path, *overrides) -> float:
    """The global gradient norm the optimizer steps with, in one FT step."""
    import torch

    from harness.core.config import load_run_config
    from harness.trial.callbacks import TrainCallbacks
    from harness.trial.trainer import Trainer

    config = load_run_config(None, ["method=ft", "model.name=digit-vit-t", "model.pretrained=null", "optim.batch_size=32",
                                    "optim.epochs=1", f"run_dir={tmp_path}", *overrides])
    torch.manual_seed(0)
    trainer = Trainer(config, digitshift, tmp_path, TrainCallbacks())
    stage = trainer.method.stages[0]
    optimizer = trainer.make_optimizer(stage)
    params = [p for group in optimizer.param_groups for p in group["params"]]
    seen = []
    step = optimizer.step

    def recording_step(*args, **kwargs):
        seen.append(torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(p.grad) for p in params if p.grad is not None])).item())
        return step(*args, **kwargs)

    optimizer.step = recording_step
    trainer.model.train()
    trainer.train_step(stage, optimizer, 0, trainer.total_steps)
    return seen[0]


def test_grad_clip_caps_the_global_gradient_norm_the_optimizer_sees(digitshift, tmp_path):
    free = _gradient_norm_at_the_optimizer_step(digitshift, tmp_path / "free")
    assert free > 0.05  # the step's raw gradient is larger than the cap below
    clipped = _gradient_norm_at_the_optimizer_step(digitshift, tmp_path / "clipped", "optim.grad_clip=0.05")
    assert clipped == pytest.approx(0.05, rel=1e-4)  # torch's clip_grad_norm_ scales to max_norm / (norm + 1e-6)
    loose = _gradient_norm_at_the_optimizer_step(digitshift, tmp_path / "loose", f"optim.grad_clip={free * 2}")
    assert loose == pytest.approx(free, rel=1e-6)  # a cap above the norm changes nothing
