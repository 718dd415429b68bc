"""open_clip models: the small registered configs, weight loading, encoders and the zero-shot head."""

from __future__ import annotations

import logging
from contextlib import contextmanager
from importlib import resources
from pathlib import Path
from typing import Callable, Iterator, Sequence

import open_clip
import torch
import torch.nn.functional as F

from harness.errors import PretrainedWeightsError, UnknownNameError

Tokenizer = Callable[[Sequence[str]], torch.Tensor]

with resources.as_file(resources.files("harness") / "model_configs") as _folder:
    open_clip.add_model_config(_folder)  # registers digit-vit-* under their file stems

# Which embedded pretrained weights a config name refers to.
EMBEDDED_PRETRAINED = "digitshift"
MAX_LOGIT_SCALE = 100.0  # open_clip clamps the learned scale at ln(100)


@contextmanager
def _quiet_open_clip() -> Iterator[None]:
    """Silence open_clip's root-logger messages for the duration of one call."""
    logging.disable(logging.CRITICAL)
    try:
        yield
    finally:
        logging.disable(logging.NOTSET)


def require_known_model(name: str) -> None:
    """Fail fast, before any data is built, on a model name open_clip does not know."""
    if name not in open_clip.list_models():
        raise UnknownNameError(f"unknown model {name!r}; see open_clip.list_models() (small ones: digit-vit-*)")


def create_model(name: str, pretrained: str | None = None, device: str | torch.device = "cpu") -> tuple[torch.nn.Module, Tokenizer]:
    """Build an open_clip model and its tokenizer.

    ``pretrained``: None (random init); ``"digitshift"`` (the embedded small CLIP for this
    architecture, built and cached on first use); a path to a ``state_dict`` file; or an
    open_clip pretrained tag (uses the user's cache; offline and uncached is an error).
    """
    require_known_model(name)
    weights = pretrained
    if pretrained == EMBEDDED_PRETRAINED:
        from harness.pretrain import ensure_pretrained

        weights = str(ensure_pretrained(name))
    if weights is not None and not Path(weights).is_file():
        if weights.endswith((".pt", ".pth", ".bin", ".safetensors")) or "/" in weights:
            raise PretrainedWeightsError(f"{weights}: no such weights file")
        try:
            with _quiet_open_clip():  # its log lines would repeat the error we raise
                model = open_clip.create_model(name, pretrained=weights, device=device, require_pretrained=True)
        except Exception as exc:  # open_clip raises a variety of hub / file errors
            raise PretrainedWeightsError(
                f"could not load pretrained weights {weights!r} for {name}: {exc.__class__.__name__}: {exc}"
                " (offline: only cached tags or local files work; HF_HUB_OFFLINE=1 makes this fail fast)"
            ) from exc
        return model, open_clip.get_tokenizer(name)
    with _quiet_open_clip():  # it warns that no weights were loaded: we load our own
        model = open_clip.create_model(name, pretrained=None, device=device)
    if weights is not None:
        load_weights(model, Path(weights))
    return model, open_clip.get_tokenizer(name)


def load_weights(model: torch.nn.Module, path: Path) -> None:
    """Load a plain ``state_dict`` saved by this harness (``weights_only``: no pickled code)."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise PretrainedWeightsError(f"{path}: not a loadable state_dict ({exc.__class__.__name__}: {exc})") from exc
    model.load_state_dict(state)


def encode_images(model: torch.nn.Module, images: torch.Tensor) -> torch.Tensor:
    return F.normalize(model.encode_image(images), dim=-1)


def encode_texts(model: torch.nn.Module, tokens: torch.Tensor) -> torch.Tensor:
    return F.normalize(model.encode_text(tokens), dim=-1)


def zeroshot_head(
    model: torch.nn.Module, tokenizer: Tokenizer, classnames: Sequence[str], templates: Sequence[str]
) -> torch.Tensor:
    """Class embeddings ``[C, D]``: encode every template per class, L2-normalise, average, L2-normalise again."""
    prompts = [template.format(name) for name in classnames for template in templates]
    device = next(model.parameters()).device
    features = encode_texts(model, tokenizer(prompts).to(device))
    per_class = features.view(len(classnames), len(templates), -1).mean(dim=1)
    return F.normalize(per_class, dim=-1)


def logit_scale(model: torch.nn.Module) -> torch.Tensor:
    """The multiplier applied to cosine similarities (open_clip stores its log)."""
    return model.logit_scale.exp()


def classifier_head(
    model: torch.nn.Module, tokenizer: Tokenizer, classnames: Sequence[str], templates: Sequence[str]
) -> torch.nn.Linear:
    """A linear layer on normalised image features whose logits are the zero-shot logits.

    weight = logit scale x class embeddings, bias 0. Zero-shot evaluation uses it as is; the
    contrastive methods rebuild it from their fine-tuned text encoder; ft/lp/lpft train it.
    """
    with torch.no_grad():
        embeddings = zeroshot_head(model, tokenizer, classnames, templates)
        head = torch.nn.Linear(embeddings.shape[1], embeddings.shape[0], device=embeddings.device)
        head.weight.copy_(logit_scale(model) * embeddings)
        head.bias.zero_()
    return head


def visual_projection(model: torch.nn.Module) -> torch.Tensor:
    """The image tower's final projection W as [d_in, d_embed], for the orthogonality constraint.

    ViT towers: ``visual.proj``; ModifiedResNet: ``visual.attnpool.c_proj`` (as the released code);
    timm towers: ``visual.head.proj``. Linear weights are [out, in], hence the transpose.
    """
    visual = model.visual
    if getattr(visual, "proj", None) is not None:
        return visual.proj
    for path in ("attnpool.c_proj", "head.proj"):
        layer = visual
        for part in path.split("."):
            layer = getattr(layer, part, None)
        if isinstance(layer, torch.nn.Linear):
            return layer.weight.T
    raise UnknownNameError(f"no final visual projection found in {type(visual).__name__} for the orthogonality term")


def text_projection(model: torch.nn.Module) -> torch.Tensor:
    """The text tower's projection W_t as [d_text, d_embed]."""
    projection = model.text_projection
    return projection.weight.T if isinstance(projection, torch.nn.Linear) else projection
