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
