import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from harness.core.errors import PretrainedWeightsError, UnknownNameError
from harness.models.clip import create_model, zeroshot_head


def test_zeroshot_head_matches_per_prompt_computation(tiny_model):
    model, tokenizer = tiny_model
    classnames, templates = ["zero", "one", "two"], ["a photo of the number {}.", "the digit {}."]
    with torch.no_grad():
        head = zeroshot_head(model, tokenizer, classnames, templates)
        expected = []
        for name in classnames:
            rows = [model.encode_text(tokenizer([t.format(name)]))[0].numpy().astype(np.float64) for t in templates]
            rows = [r / np.linalg.norm(r) for r in rows]
            mean = np.mean(rows, axis=0)
            expected.append(mean / np.linalg.norm(mean))
    assert head.shape == (3, model.text_projection.shape[1])
    assert torch.allclose(head.norm(dim=1), torch.ones(3), atol=1e-6)
    assert np.allclose(head.numpy(), np.stack(expected), atol=1e-5)


def test_weights_round_trip_through_a_state_dict_file(tiny_model, tmp_path):
    model, _ = tiny_model
    path = tmp_path / "weights.pt"
    torch.save(model.state_dict(), path)
    loaded, _ = create_model("digit-vit-t", pretrained=str(path))
    for (name, a), b in zip(model.state_dict().items(), loaded.state_dict().values()):
        assert torch.equal(a, b), name


def test_bad_names_and_weights_are_usage_errors(tmp_path):
    with pytest.raises(UnknownNameError, match="ViT-Q-99"):
        create_model("ViT-Q-99")
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(PretrainedWeightsError, match="junk.pt"):
        create_model("digit-vit-t", pretrained=str(junk))


def test_uncached_pretrained_tag_fails_clearly_offline(tmp_path):
    # a subprocess, because huggingface_hub reads HF_HUB_OFFLINE when it is first imported
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path)}
    result = subprocess.run([sys.executable, "-m", "harness.evaluate", "model.name=RN50-quickgelu", "model.pretrained=openai"],
                            capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: model.pretrained: the weights of RN50-quickgelu 'openai' are not in the local "
                               "Hugging Face cache ($HF_HOME), and there is no network"), result.stderr


def test_missing_weights_file_is_named(tmp_path):
    with pytest.raises(PretrainedWeightsError, match="absent.pt: no such weights file"):
        create_model("digit-vit-t", pretrained=str(tmp_path / "absent.pt"))


def test_zero_shot_head_encodes_prompts_in_chunks_to_the_same_embeddings(tiny_model, monkeypatch):
    import torch.nn.functional as F

    import harness.models.clip

    model, tokenizer = tiny_model
    classnames, templates = ["zero", "one", "two"], ["a {}", "the digit {}"]
    with torch.no_grad():
        every = F.normalize(model.encode_text(tokenizer([t.format(c) for c in classnames for t in templates])), dim=-1)
        expected = F.normalize(every.view(3, 2, -1).mean(dim=1), dim=-1)
        monkeypatch.setattr(harness.models.clip, "PROMPT_BATCH", 4)  # 6 prompts: chunks of 4 and 2
        assert torch.allclose(zeroshot_head(model, tokenizer, classnames, templates), expected, atol=1e-6)
