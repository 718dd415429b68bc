"""Any open_clip model: an hf-hub: model read from the local Hugging Face cache without a request to the hub, a
local-dir: folder, their preprocessing from their own config, and a zero-shot trial on one."""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path

import huggingface_hub.constants
import open_clip.factory
import pytest
import torch
from benchmark_files import write_benchmark
from PIL import Image

from harness.core.config import RunConfig
from harness.core.errors import PretrainedWeightsError
from harness.data.pipeline import clip_preprocess
from harness.models.clip import check_orthogonality, create_model, ensure_tag_weights, require_known_model
from harness.trial.runner import run

MEAN, STD = [0.25, 0.5, 0.75], [0.5, 0.25, 0.125]  # not CLIP's, so that the model's own are seen to apply
REVISION = "0123456789abcdef0123456789abcdef01234567"


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """A random digit-vit-t saved as an open_clip model folder (config with its preprocessing, and weights)."""
    folder = tmp_path_factory.mktemp("model")
    with resources.as_file(resources.files("harness.models") / "configs" / "digit-vit-t.json") as path:
        model_cfg = json.loads(path.read_text())
    (folder / "open_clip_config.json").write_text(json.dumps({"model_cfg": model_cfg,
                                                              "preprocess_cfg": {"mean": MEAN, "std": STD}}))
    torch.manual_seed(7)
    model, _ = create_model("digit-vit-t", None)
    torch.save(model.state_dict(), folder / "open_clip_pytorch_model.bin")
    return folder, model.state_dict()


@pytest.fixture
def hub_cache(saved, tmp_path, monkeypatch):
    """The model as the Hugging Face cache holds a downloaded repo (refs/main -> a snapshot of its files)."""
    folder, _ = saved
    repo = tmp_path / "hub" / "models--someone--tiny-clip"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(REVISION)
    snapshot = repo / "snapshots" / REVISION
    snapshot.mkdir(parents=True)
    for name in ("open_clip_config.json", "open_clip_pytorch_model.bin"):
        (snapshot / name).write_bytes((folder / name).read_bytes())
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    return "hf-hub:someone/tiny-clip"


def _same_weights(model: torch.nn.Module, state: dict) -> bool:
    return all(torch.equal(value, state[key]) for key, value in model.state_dict().items())


def test_a_local_dir_model_loads_its_weights_and_preprocessing(saved):
    folder, state = saved
    model, tokenizer = create_model(f"local-dir:{folder}", None)
    assert _same_weights(model, state) and tokenizer(["a cat"]).shape == (1, 20)
    grey = Image.new("RGB", (50, 40), (128, 128, 128))
    pixels = clip_preprocess(model)(grey)
    expected = (128 / 255 - torch.tensor(MEAN)) / torch.tensor(STD)  # the folder's mean and std, not CLIP's
    assert pixels.shape == (3, 32, 32)
    torch.testing.assert_close(pixels.mean(dim=(1, 2)), expected.float(), atol=1e-5, rtol=0)


def test_a_cached_hf_hub_model_loads_without_asking_the_hub(hub_cache, saved, monkeypatch):
    def no_hub(*args, **kwargs):  # every download open_clip does goes through here (its retries take over 20 s offline)
        raise AssertionError(f"asked the hub: {args}")

    monkeypatch.setattr(open_clip.factory, "download_pretrained_from_hf", no_hub)
    model, _ = create_model(hub_cache, None)
    assert _same_weights(model, saved[1])
    check_orthogonality(hub_cache)  # a ViT tower: its projection is found


def test_hf_hub_models_bring_their_own_weights(hub_cache):
    with pytest.raises(PretrainedWeightsError, match="brings its own weights; set model.pretrained=null"):
        require_known_model(hub_cache, "openai")


def test_a_missing_local_dir_is_named(tmp_path):
    with pytest.raises(PretrainedWeightsError, match="open_clip_config.json not found"):
        require_known_model(f"local-dir:{tmp_path}", None)


def test_a_zero_shot_trial_on_a_cached_hub_model(hub_cache, saved, tmp_path):
    written = write_benchmark(tmp_path / "data")
    config = RunConfig.model_validate({"model": {"name": hub_cache, "pretrained": None},
                                       "data": {"benchmark": str(written.file), "num_workers": 0},
                                       "eval": {"bootstrap": 0}, "tracking": {"mode": "disabled"},
                                       "run_dir": str(tmp_path / "run")})
    record = run(config, progress=False)
    assert record.status == "ok", record.error
    assert record.config["model"]["name"] == hub_cache and set(record.tests) == {"val", "toy", "sketch", "photos"}


def test_a_tags_cached_weights_are_found_and_missing_ones_named(tmp_path, monkeypatch):
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)  # as without network, without the retries
    with pytest.raises(PretrainedWeightsError, match="weights of ViT-B-32-quickgelu 'openai' are not in the local"):
        ensure_tag_weights("ViT-B-32-quickgelu", "openai")
    repo = tmp_path / "hub" / "models--timm--vit_base_patch32_clip_224.openai"  # where open_clip's tag points
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(REVISION)
    (repo / "snapshots" / REVISION).mkdir(parents=True)
    (repo / "snapshots" / REVISION / "open_clip_model.safetensors").write_bytes(b"weights")
    ensure_tag_weights("ViT-B-32-quickgelu", "openai")  # found: nothing is downloaded
