import json
import math

import pytest
import torch

from harness.commands.train import main
from harness.core.config import load_run_config
from harness.core.errors import UsageError
from harness.core.record import SCHEMA
from harness.core.summary_keys import summary_keys
from harness.models.clip import classifier_head, create_model, encode_images
from harness.trial.callbacks import TrainCallbacks
from harness.trial.set_reports import evaluate_zeroshot
from harness.trial.runner import run

FAST = ["model.name=digit-vit-t", "data.benchmark=digitshift-small", "optim.epochs=1", "optim.batch_size=100",
        "optim.warmup_steps=2", "eval.batch_size=500",
        "eval.bootstrap=200", "eval.floor_draws=50"]
CAROT = ["method=carot", "loss.sd_weight=1.0", "loss.oc_weight=0.2", "loss.cross_weight=0.05", "ema.period=3"]


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    """Random 'pre-trained' weights of the tiny model: no pretraining needed to test the trainer."""
    torch.manual_seed(0)
    model, _ = create_model("digit-vit-t", None)
    path = tmp_path_factory.mktemp("weights") / "tiny.pt"
    torch.save(model.state_dict(), path)
    return path


def _config(weights, run_dir, *overrides):
    return load_run_config(None, [*FAST, f"model.pretrained={weights}", f"run_dir={run_dir}", *overrides])


@pytest.fixture(scope="module")
def carot_record(digitshift_small, weights, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("carot")
    return run(_config(weights, run_dir, *CAROT, "eval.wise_alphas=[0.0,0.5,1.0]"), progress=False)


@pytest.mark.slow
def test_carot_record_is_complete(carot_record, digitshift_small):
    record = carot_record
    assert record.status == "ok" and record.schema_version == SCHEMA
    assert list(record.tests) == ["val", *digitshift_small.tests]
    for report in record.tests.values():
        assert sum(report.reliability.count) == report.n  # every image in one bin
    for key in ("val_acc", "val_ece", "val_nll", "id_acc", "id_ece", "ood_acc", "ood_ece", "sigma_min",
                "ts_temperature", "teacher_id_acc"):
        assert math.isfinite(record.summary[key]), key
    ood = [record.tests[name].acc for name in digitshift_small.ood_tests]
    assert record.summary["ood_acc"] == pytest.approx(sum(ood) / len(ood))
    assert record.summary["id_acc"] == record.tests["mnist"].acc
    assert record.config["loss"]["cross_weight"] == 0.05
    assert record.timings.steps == 20 and record.timings.ema_period_steps == 3
    for name in digitshift_small.tests:  # every test set's ECE with its interval and noise floor
        report = record.tests[name]
        low, high = report.ece_ci
        assert low <= report.ece <= high and 0 < report.ece_floor < 1 and report.ece_floor_sd > 0
    summary = record.summary
    assert summary["id_ece_floor"] == record.tests["mnist"].ece_floor
    floors = [record.tests[name].ece_floor for name in digitshift_small.ood_tests]
    assert summary["ood_ece_floor"] == pytest.approx(sum(floors) / len(floors))
    assert summary["ood_ece_ci_low"] <= summary["ood_ece"] <= summary["ood_ece_ci_high"]
    briers = [record.tests[name].brier for name in digitshift_small.ood_tests]
    assert summary["ood_brier"] == pytest.approx(sum(briers) / len(briers))
    assert summary["id_nll"] == record.tests["mnist"].nll
    assert 0 < summary["sigma_min_rel"] < 1 and "ts_ood_ece_floor" in summary and "teacher_id_ece_ci_low" in summary
    assert list(summary) == summary_keys(load_run_config(None, ["method=carot", "loss.sd_weight=1"]))  # what specs check
    for key in ("model", "teacher"):
        state = torch.load(getattr(record.paths, key), weights_only=True)
        assert "visual.proj" in state
    saved = json.loads(open(record.paths.record).read())
    assert saved["summary"] == record.summary


@pytest.mark.slow
def test_temperature_scaling_keeps_accuracy(carot_record):
    scaled = carot_record.temperature_scaled
    for name, report in carot_record.tests.items():
        assert scaled.tests[name].acc == report.acc
    assert scaled.tests["val"].nll <= carot_record.tests["val"].nll + 1e-9


@pytest.mark.slow
def test_wise_ft_endpoints(carot_record, digitshift_small, weights):
    start, _, end = carot_record.wise_ft
    assert end.alpha == 1.0
    for name, report in carot_record.tests.items():
        assert end.tests[name].acc == pytest.approx(report.acc)
    model, tokenizer = create_model("digit-vit-t", str(weights))
    zeroshot = evaluate_zeroshot(model, tokenizer, digitshift_small)
    for name, report in zeroshot.items():
        assert start.tests[name].acc == pytest.approx(report["acc"])


def _accuracy(model, head, dataset):
    with torch.no_grad():
        logits = torch.cat([head(encode_images(model, images)) for images, _, _ in dataset.batches(500)])
    return (logits.argmax(dim=1) == dataset.labels).double().mean().item()


@pytest.mark.slow
def test_wise_ft_as_released_blends_the_image_tower_and_the_two_heads(carot_record, digitshift_small, weights):
    # by hand: image tower halfway between pre-trained and fine-tuned, text tower pre-trained; the head halfway
    # between the zero-shot head (pre-trained text tower) and the head of the fine-tuned text tower
    pretrained, finetuned = _state(weights), _state(carot_record.paths.model)
    model, tokenizer = create_model("digit-vit-t", None)
    model.load_state_dict(finetuned)
    finetuned_head = classifier_head(model, tokenizer, digitshift_small.classnames, digitshift_small.zeroshot_templates)
    model.load_state_dict(pretrained)
    zeroshot_head = classifier_head(model, tokenizer, digitshift_small.classnames, digitshift_small.zeroshot_templates)
    model.load_state_dict({k: (pretrained[k] + finetuned[k]) / 2 if k.startswith("visual.") else pretrained[k]
                           for k in pretrained})
    head = torch.nn.Linear(zeroshot_head.in_features, zeroshot_head.out_features)
    head.weight.data = (zeroshot_head.weight + finetuned_head.weight) / 2
    head.bias.data.zero_()
    middle = carot_record.wise_ft[1]
    assert middle.alpha == 0.5
    for name in ("mnist", "rendered"):
        assert middle.tests[name].acc == pytest.approx(_accuracy(model.eval(), head, digitshift_small.tests[name]), abs=1e-9)


@pytest.mark.slow
def test_wise_ft_all_weights_rebuilds_the_head_from_the_blended_text_tower(carot_record, digitshift_small, weights, tmp_path):
    record = run(_config(weights, tmp_path / "all", *CAROT, "eval.wise_alphas=[0.5]", "eval.wise_ft=all_weights",
                         "eval.temperature_scaling=false"), progress=False)
    pretrained, finetuned = _state(weights), _state(record.paths.model)
    model, tokenizer = create_model("digit-vit-t", None)
    model.load_state_dict({k: torch.lerp(pretrained[k], finetuned[k], 0.5) for k in pretrained})
    head = classifier_head(model, tokenizer, digitshift_small.classnames, digitshift_small.zeroshot_templates)
    assert record.wise_ft[0].tests["uci"].acc == pytest.approx(_accuracy(model.eval(), head, digitshift_small.tests["uci"]))


@pytest.mark.slow
@pytest.mark.parametrize("limit", [None, 100.0])
def test_logit_scale_moves_past_ln_100_only_without_the_clamp(weights, tmp_path, limit):
    state = _state(weights)
    state["logit_scale"] = torch.tensor(math.log(150.0))  # above open_clip's clamp
    start = tmp_path / "hot.pt"
    torch.save(state, start)
    overrides = [*FAST, f"model.pretrained={start}", f"run_dir={tmp_path / 'run'}", "method=flyp",
                 "eval.temperature_scaling=false", f"optim.logit_scale_max={'null' if limit is None else limit}"]
    record = run(load_run_config(None, overrides), progress=False)
    scale = _state(record.paths.model)["logit_scale"].exp().item()
    if limit is None:
        assert scale > 140  # released behaviour: free to stay above 100
    else:
        assert 90 < scale <= 100.0 * (1 + 1e-6)  # clamped at 100 after the first step, free below it


@pytest.mark.slow
def test_same_config_same_metrics(carot_record, weights, tmp_path):
    again = run(_config(weights, tmp_path / "again", *CAROT, "eval.wise_alphas=[0.0,0.5,1.0]"), progress=False)
    assert again.summary == carot_record.summary


class _KillAt(TrainCallbacks):
    def __init__(self, step):
        self.kill_step = step

    def on_step(self, step, losses, lr):
        if step == self.kill_step:
            raise KeyboardInterrupt


@pytest.mark.slow
def test_killed_run_resumes_to_the_same_result(carot_record, weights, tmp_path):
    config = _config(weights, tmp_path / "resumed", *CAROT, "eval.wise_alphas=[0.0,0.5,1.0]", "optim.checkpoint_every=7")
    with pytest.raises(KeyboardInterrupt):
        run(config, callbacks=_KillAt(12), progress=False)
    assert torch.load(tmp_path / "resumed" / "checkpoint.pt", weights_only=True)["step"] == 7
    record = run(config, progress=False)
    assert record.resumed_from_step == 7
    assert record.summary == carot_record.summary
    assert not (tmp_path / "resumed" / "checkpoint.pt").exists()


@pytest.mark.slow
def test_lpft_resumes_across_its_stage_boundary(weights, tmp_path):
    overrides = ["method=lpft", "optim.lp_epochs=1", "optim.checkpoint_every=20", "eval.temperature_scaling=false"]
    reference = run(_config(weights, tmp_path / "whole", *overrides), progress=False)
    config = _config(weights, tmp_path / "cut", *overrides)
    with pytest.raises(KeyboardInterrupt):
        run(config, callbacks=_KillAt(25), progress=False)  # checkpoint at step 20 = end of the LP stage
    record = run(config, progress=False)
    assert record.resumed_from_step == 20 and record.timings.steps == 40
    assert record.summary == reference.summary


class _Counter(TrainCallbacks):
    steps = 0

    def on_step(self, step, losses, lr):
        self.steps += 1


@pytest.mark.slow
def test_finished_run_is_not_repeated_and_run_dirs_are_not_shared(carot_record, weights):
    run_dir = carot_record.paths.run_dir
    counter = _Counter()
    again = run(_config(weights, run_dir, *CAROT, "eval.wise_alphas=[0.0,0.5,1.0]"), callbacks=counter, progress=False)
    assert counter.steps == 0 and again.summary == carot_record.summary
    with pytest.raises(UsageError, match="another trial"):
        run(_config(weights, run_dir, "method=flyp"), progress=False)


def _state(path):
    return torch.load(path, weights_only=True)


@pytest.mark.slow
@pytest.mark.parametrize("method, visual_moves, text_moves", [("lp", False, False), ("ft", True, False), ("flyp", True, True)])
def test_each_method_trains_what_it_should(weights, tmp_path, method, visual_moves, text_moves):
    record = run(_config(weights, tmp_path / method, f"method={method}", "eval.temperature_scaling=false"), progress=False)
    assert record.status == "ok"
    before, after = _state(weights), _state(record.paths.model)
    assert (not torch.equal(before["visual.proj"], after["visual.proj"])) == visual_moves
    assert (not torch.equal(before["text_projection"], after["text_projection"])) == text_moves
    if method == "lp":
        head = _state(record.paths.head)
        assert head["weight"].shape == (10, before["visual.proj"].shape[1])


def test_zeroshot_method_equals_zeroshot_evaluation(digitshift_small, weights, tmp_path):
    record = run(_config(weights, tmp_path / "zs", "method=zeroshot"), progress=False)
    model, tokenizer = create_model("digit-vit-t", str(weights))
    for name, report in evaluate_zeroshot(model, tokenizer, digitshift_small).items():
        assert record.tests[name].acc == report["acc"]
        assert record.tests[name].ece == pytest.approx(report["ece"])
    assert record.summary["sigma_min"] == record.summary["sigma_min_pretrained"]
    assert record.wise_ft == [] and record.timings.steps == 0


class _EpochLog(TrainCallbacks):
    def __init__(self):
        self.epochs = []

    def on_epoch(self, epoch, metrics):
        self.epochs.append((epoch, metrics["val_acc"]))


@pytest.mark.slow
def test_per_epoch_validation_reaches_history_and_callbacks(weights, tmp_path):
    log = _EpochLog()
    config = _config(weights, tmp_path / "epochs", "method=ft", "optim.epochs=2", "eval.every_epoch=true")
    record = run(config, callbacks=log, progress=False)
    assert [h.epoch for h in record.history] == [1, 2] == [e for e, _ in log.epochs]
    assert [h.step for h in record.history] == [20, 40]
    assert record.history[-1].val_acc == record.summary["val_acc"]  # last epoch = final model


def test_non_finite_loss_fails_the_trial_with_a_record(weights, tmp_path, capsys):
    state = _state(weights)
    state["logit_scale"] = torch.tensor(float("nan"))
    broken = tmp_path / "broken.pt"
    torch.save(state, broken)
    code = main([*FAST, f"model.pretrained={broken}", "method=flyp", f"run_dir={tmp_path / 'nan'}"])
    assert code == 1
    record = json.loads((tmp_path / "nan" / "record.json").read_text())
    assert record["status"] == "failed" and "non-finite loss at step 0" in record["error"]
    assert "trial failed" in capsys.readouterr().out


def _raise(*args, **kwargs):
    raise OSError("injected failure")


# Every step between the checks of the input and the training loop, as harness.trial.runner calls it.
FAILURE_POINTS = {"loading the benchmark": "LoadedBenchmarks.load", "resolving the device": "resolve_device",
                  "joining the process group": "init_process_group", "building the trainer": "Trainer",
                  "setting the transforms": "clip_preprocess"}


@pytest.mark.parametrize("point", list(FAILURE_POINTS))
def test_a_failure_before_training_leaves_a_failed_record(digitshift_small, weights, tmp_path, monkeypatch, point):
    import harness.trial.runner as train

    owner, _, name = FAILURE_POINTS[point].rpartition(".")
    monkeypatch.setattr(getattr(train, owner) if owner else train, name, _raise)
    record = run(_config(weights, tmp_path / "run", "method=flyp"), progress=False)
    assert record.status == "failed" and record.error == "OSError: injected failure"
    written = json.loads((tmp_path / "run" / "record.json").read_text())
    assert written["status"] == "failed" and written["failed_at_step"] in (None, 0)  # before any step
    assert "injected failure" in (tmp_path / "run" / "error.txt").read_text()


class _FailAt(TrainCallbacks):
    def __init__(self, step):
        self.fail_step = step

    def on_step(self, step, losses, lr):
        if step == self.fail_step:
            raise RuntimeError("the node went away")


@pytest.mark.slow
def test_a_failed_trial_resumes_whatever_watches_it(carot_record, weights, tmp_path):
    """A sweep may switch tracking or add a pruner (per-epoch validation) between two runs: the trial is the same."""
    overrides = [*CAROT, "eval.wise_alphas=[0.0,0.5,1.0]", "optim.checkpoint_every=7"]
    failed = run(_config(weights, tmp_path / "r", *overrides), callbacks=_FailAt(12), progress=False)
    assert failed.status == "failed" and failed.failed_at_step == 13  # on_step(12) comes after the 13th step
    watched = _config(weights, tmp_path / "r", *overrides, "tracking.mode=offline", "tracking.project=elsewhere",
                      "eval.every_epoch=true")
    record = run(watched, progress=False)
    assert record.resumed_from_step == 7 and record.summary == carot_record.summary
    with pytest.raises(UsageError, match="another trial"):  # what it computes still decides
        run(_config(weights, tmp_path / "r", *overrides, "loss.sd_weight=2.0"), progress=False)


@pytest.mark.slow
def test_cli_prints_the_result_table(weights, tmp_path, capsys):
    assert main([*FAST, f"model.pretrained={weights}", "method=ft", f"run_dir={tmp_path / 'cli'}"]) == 0
    out = capsys.readouterr().out
    assert "mnist (ID)" in out and "summary:" in out and "record:" in out
