"""Weights: open_clip tags vs QuickGELU, offline caches, local checkpoint files. Offline, no downloads."""

import huggingface_hub
import open_clip
import pytest
import torch
from huggingface_hub.errors import OfflineModeIsEnabled
from open_clip.transformer import QuickGELU

from harness.core.errors import PretrainedWeightsError
from harness.models.clip import create_model, require_known_model


@pytest.fixture
def no_download(monkeypatch):
    """open_clip's download (as factory.py calls it) fails the test: refusals must come before it."""
    def download(cfg, **kwargs):
        raise AssertionError(f"a download was attempted: {cfg}")
    monkeypatch.setattr(open_clip.factory, "download_pretrained", download)


@pytest.mark.parametrize("name, tag, fix", [
    ("ViT-B-16", "openai", "use model 'ViT-B-16-quickgelu'"),  # the paper's weights, QuickGELU-trained
    ("RN50", "openai", "use model 'RN50-quickgelu'"),
    ("ViT-B-16-quickgelu", "laion2b_s34b_b88k", "use model 'ViT-B-16'"),  # GELU-trained
])
def test_a_tag_trained_with_another_activation_is_refused_with_the_fix(name, tag, fix, no_download):
    for call in (lambda: require_known_model(name, tag), lambda: create_model(name, tag)):
        with pytest.raises(PretrainedWeightsError, match=fix) as error:
            call()
        assert "\n" not in str(error.value)


def test_unknown_tag_is_named(no_download):
    with pytest.raises(PretrainedWeightsError, match="unknown pretrained tag 'openai' for digit-vit-t"):
        create_model("digit-vit-t", "openai")


def test_quickgelu_model_loads_the_openai_tag_with_quickgelu(tmp_path, monkeypatch):
    # Stand-in weights of the right shapes: each tensor one value broadcast to its shape, so the file is tiny.
    with torch.device("meta"):
        shapes = open_clip.create_model("ViT-B-16-quickgelu", device="meta").state_dict()
    state = {key: torch.full((), i % 100 / 100, dtype=t.dtype).expand(t.shape) for i, (key, t) in enumerate(shapes.items())}
    path = tmp_path / "open_clip_pytorch_model.bin"
    torch.save(state, path)
    asked = []
    monkeypatch.setattr(open_clip.factory, "download_pretrained", lambda cfg, **kwargs: asked.append(cfg) or str(path))

    model, _ = create_model("ViT-B-16-quickgelu", "openai")

    assert "openai" in asked[0]["hf_hub"]
    blocks = [*model.visual.transformer.resblocks, *model.transformer.resblocks]
    assert blocks and all(isinstance(block.mlp.gelu, QuickGELU) for block in blocks)
    for key, value in model.state_dict().items():
        assert torch.equal(value, state[key]), key


def _causes(error: BaseException) -> list[BaseException]:
    chain = []
    while error is not None:
        chain.append(error)
        error = error.__cause__ or error.__context__
    return chain


def test_offline_and_uncached_tag_fails_at_once_in_one_line(tmp_path, monkeypatch):
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)  # what HF_HUB_OFFLINE=1 sets at import
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))  # an empty cache
    with pytest.raises(PretrainedWeightsError) as error:
        create_model("RN50-quickgelu", "openai")
    # the hub refused to go online (no network retries: without HF_HUB_OFFLINE those take about 45 s)
    assert any(isinstance(cause, OfflineModeIsEnabled) for cause in _causes(error.value))
    message = str(error.value)
    assert message.startswith("could not load pretrained weights 'openai' for RN50-quickgelu: ")
    assert "\n" not in message and "login node" in message and "local weights file" in message


def test_an_open_clip_training_checkpoint_loads(tiny_model, tmp_path):
    model, _ = tiny_model
    path = tmp_path / "epoch_3.pt"
    torch.save({"epoch": 3, "name": "digit-vit-t",
                "state_dict": {f"module.{key}": value for key, value in model.state_dict().items()}}, path)
    loaded, _ = create_model("digit-vit-t", str(path))
    for key, value in model.state_dict().items():
        assert torch.equal(value, loaded.state_dict()[key]), key


def test_a_safetensors_file_loads(tiny_model, tmp_path):
    from safetensors.torch import save_file

    model, _ = tiny_model
    path = tmp_path / "open_clip_model.safetensors"
    save_file({key: value.contiguous() for key, value in model.state_dict().items()}, str(path))
    loaded, _ = create_model("digit-vit-t", str(path))
    for key, value in model.state_dict().items():
        assert torch.equal(value, loaded.state_dict()[key]), key


@pytest.mark.filterwarnings("ignore:.*torch.jit.script.*:FutureWarning")
def test_a_torchscript_archive_is_refused_with_the_fix(tmp_path):
    path = tmp_path / "ViT-B-16.pt"  # how OpenAI released CLIP
    torch.jit.script(torch.nn.Linear(2, 2)).save(str(path))
    with pytest.raises(PretrainedWeightsError, match="TorchScript archive .* -quickgelu"):
        create_model("digit-vit-t", str(path))


def test_weights_that_do_not_fit_are_a_one_line_error(tmp_path):
    path = tmp_path / "other.pt"
    torch.save({"visual.proj": torch.zeros(3, 3)}, path)
    with pytest.raises(PretrainedWeightsError, match="other.pt: does not fit this model") as error:
        create_model("digit-vit-t", str(path))
    assert "\n" not in str(error.value)
    torch.save(torch.zeros(3), path)
    with pytest.raises(PretrainedWeightsError, match="other.pt: holds a Tensor, not a state_dict"):
        create_model("digit-vit-t", str(path))
