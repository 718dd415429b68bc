import json
import subprocess
import sys
from pathlib import Path

import pytest

from harness.core.config import load_run_config
from harness.sweep.context import TrialContext
from harness.sweep.tracking import tracker_for
from harness.trial.runner import run

FAST = ["model.name=digit-vit-t", "model.pretrained=null", "data.benchmark=digitshift-small", "method=flyp",
        "optim.epochs=2", "optim.batch_size=200",
        "eval.every_epoch=true", "eval.batch_size=500", "tracking.mode=offline"]


def _leet(path: Path, *flags: str) -> str:
    wandb = Path(sys.executable).with_name("wandb")
    return subprocess.run([str(wandb), "leet", "inspect", "--json", *flags, str(path)], capture_output=True, text=True,
                          timeout=120, check=True).stdout


@pytest.mark.slow
def test_offline_wandb_run_holds_the_logged_metrics(digitshift, tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_SILENT", "true")
    config = load_run_config(None, [*FAST, f"run_dir={tmp_path / 'run'}"])
    callbacks = tracker_for(config, TrialContext(sweep="unit", wandb_dir=str(tmp_path), variant="flyp+LS"))
    record = run(config, callbacks=callbacks, progress=False)
    callbacks.finish(record)
    files = list((tmp_path / "wandb").glob("offline-run-*/run-*.wandb"))
    assert len(files) == 1
    run_id = (tmp_path / "run" / "wandb_id.txt").read_text()
    assert files[0].name == f"run-{run_id}.wandb"
    records = [json.loads(line) for line in _leet(files[0]).splitlines() if line.startswith("{")]
    logged = json.dumps([r for r in records if r.get("type") == "history"])
    assert "train/contrastive" in logged and "epoch/val_acc" in logged and "reliability/mnist" in logged
    state = json.loads(_leet(files[0], "--summary"))
    assert state["state"] == "finished" and state["run_id"] == run_id
    assert state["summary"]["val_acc"] == pytest.approx(record.summary["val_acc"])
    # the best validation value summarises the epoch series (W&B's default would be the last)
    assert state["summary"]["epoch/val_acc"] == {"max": pytest.approx(max(h.val_acc for h in record.history))}
    assert state["summary"]["epoch/val_nll"] == {"min": pytest.approx(min(h.val_nll for h in record.history))}
    # every chart's x-axis is the optimizer step; the tests are logged at the last one
    metrics = [r["metric"] for r in records if r.get("type") == "metric"]
    assert {"name": "optimizer_step", "options": {"defined": True}} in metrics
    assert {m.get("glob_name"): m.get("step_metric") for m in metrics if "glob_name" in m} == {
        "train/*": "optimizer_step", "epoch/*": "optimizer_step", "test/*": "optimizer_step", "reliability*": "optimizer_step"}
    last = [r["history"]["item"] for r in records if r.get("type") == "history"][-1]
    assert last["optimizer_step"] == record.timings.steps == 20 and last["test/mnist/ece"] == pytest.approx(record.tests["mnist"].ece)
    run_info = next(r["run"] for r in records if r.get("type") == "run")
    assert run_info["tags"] == ["flyp", "flyp+LS"] and run_info["run_group"] == "unit"
    # reliability diagrams of validation, ID and every OOD set, and the spectrum, as images
    media = files[0].parent / "files" / "media" / "images"
    diagrams = {path.name.split("_")[0] for path in (media / "reliability_diagram").glob("*.png")}
    assert diagrams == set(record.tests) and len(list(media.glob("spectrum_*.png"))) == 1
    assert state["summary"]["spectrum"]["width"] > 0
    assert state["config"]["method"] == "flyp" and state["config"]["loss.label_smoothing"] == 0
    assert "api_key" not in files[0].read_bytes().decode("latin-1").lower()


class _FakeRun:
    """What TrialCallbacks needs of a W&B run, recording what it is given."""

    def __init__(self):
        self.logged, self.summary, self.finished = [], {}, False

    def log(self, values):
        self.logged.append(values)

    def finish(self):
        self.finished = True


def test_the_final_step_logs_every_sets_metrics_and_diagrams_and_the_spectrum():
    import wandb
    from test_record import _record

    from harness.core.record import RunRecord
    from harness.sweep.tracking import STEP, TrialCallbacks

    record = RunRecord.model_validate(_record(timings={"train_s": 1.0, "eval_s": 1.0, "steps": 40, "step_s_median": 0.1}))
    run = _FakeRun()
    callbacks = TrialCallbacks(run)
    for step in range(12):
        callbacks.on_step(step, {"loss": 1.0 / (step + 1)}, 1e-3)
    assert [values[STEP] for values in run.logged] == [0, 5, 10]  # every fifth optimizer step
    assert run.logged[1]["train/loss"] == pytest.approx(1 / 6)
    callbacks.finish(record)
    final = run.logged[-1]
    assert final[STEP] == 40  # the tests sit at the last optimizer step, not one step per set
    for name, report in record.tests.items():
        assert isinstance(final[f"reliability_diagram/{name}"], wandb.Image)
        assert isinstance(final[f"reliability/{name}"], wandb.Table)
        assert final[f"test/{name}/ece"] == report.ece and final[f"test/{name}/brier"] == report.brier
    assert isinstance(final["spectrum"], wandb.Image)
    assert run.summary == {"status": "ok", **record.summary} and run.finished
