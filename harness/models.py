"""open_clip models: the small registered configs, weight loading, encoders and the zero-shot head."""

from __future__ import annotations

import logging
from importlib import resources
from pathlib import Path
from typing import Callable, Sequence

import open_clip
import torch
import torch.nn.functional as F

from harness.errors import PretrainedWeightsError, UnknownNameError

Tokenizer = Callable[[Sequence[str]], torch.Tensor]

with resources.as_file(resources.files("harness") / "model_configs") as _folder:
    open_clip.add_model_config(_folder)  # registers digit-vit-* under their file stems

# Which embedded pretrained weights a config name refers to.
EMBEDDED_PRETRAINED = "digitshift"


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
    if weights is not None and Path(weights).is_file():
        model = open_clip.create_model(name, pretrained=None, device=device)
        load_weights(model, Path(weights))
    elif weights is not None:
        try:
            model = open_clip.create_model(name, pretrained=weights, device=device, require_pretrained=True)
        except Exception as exc:  # open_clip raises a variety of hub / file errors
            raise PretrainedWeightsError(
                f"could not load pretrained weights {weights!r} for {name}: {exc.__class__.__name__}: {exc}"
                " (no network here: only cached tags or local files work)"
            ) from exc
    else:
        logging.getLogger("root").disabled = True  # open_clip warns loudly about random init
        try:
            model = open_clip.create_model(name, pretrained=None, device=device)
        finally:
            logging.getLogger("root").disabled = False
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
