"""open_clip models: the small registered configs, weight loading, encoders and the zero-shot head."""

from __future__ import annotations

import functools
import logging
import os
import zipfile
from contextlib import contextmanager
from importlib import resources
from pathlib import Path
from typing import Callable, Iterator, Sequence, TypeGuard

import open_clip
import torch
import torch.nn.functional as F

from harness.core.errors import PretrainedWeightsError, UnknownNameError

log = logging.getLogger(__name__)

Tokenizer = Callable[[Sequence[str]], torch.Tensor]

# Which embedded pretrained weights a config name refers to.
MAX_LOGIT_SCALE = 100.0  # open_clip clamps the learned scale at ln(100)
WEIGHT_SUFFIXES = (".pt", ".pth", ".bin", ".safetensors")
SCHEMA_PREFIXES = ("hf-hub:", "local-dir:")  # open_clip names whose config and weights come from a hub repo or folder
PROMPT_BATCH = 1000


class _FromPackages(logging.Filter):
    """Log records emitted from inside ``packages`` (by file path), optionally only those starting with ``prefix``."""

    def __init__(self, packages: tuple[str, ...], prefix: str = ""):
        super().__init__()
        self.folders = tuple(f"{os.sep}{package}{os.sep}" for package in packages)
        self.prefix = prefix

    def filter(self, record: logging.LogRecord) -> bool:
        return not (any(folder in record.pathname for folder in self.folders) and record.getMessage().startswith(self.prefix))


@contextmanager
def _muted(packages: tuple[str, ...], prefix: str = "") -> Iterator[None]:
    """Drop those records for the duration of one call: on the root logger (open_clip logs there) and on its
    handlers (other libraries' named loggers propagate to them), then restore both."""
    muted = _FromPackages(packages, prefix)
    root = logging.getLogger()
    targets = [root, *root.handlers]
    for target in targets:
        target.addFilter(muted)
    try:
        yield
    finally:
        for target in targets:
            target.removeFilter(muted)


@functools.cache
def with_embedded_configs() -> None:
    """Register the embedded architectures (digit-vit-*, under their file stems) with open_clip, once, where a model
    name is first looked up rather than at import: importing this module changes no registry."""
    with resources.as_file(resources.files("harness.models") / "configs") as folder:
        open_clip.add_model_config(folder)


def register_model_configs(path: str | os.PathLike) -> None:
    """Register open_clip model configs (a JSON file, or a folder of them) under their file stems, as open_clip's
    own ``add_model_config``: a plugin's way to add architectures (``model.name=STEM``)."""
    path = Path(path)
    if not path.exists():
        raise UnknownNameError(f"model configs: {path}: no such file or folder")
    open_clip.add_model_config(path)


def _schema(name: str) -> str | None:
    """``hf-hub`` or ``local-dir`` for the model names that bring their config and weights with them, else None."""
    return next((prefix[:-1] for prefix in SCHEMA_PREFIXES if name.startswith(prefix)), None)


def _local_folder(name: str) -> Path:
    """The folder an ``hf-hub:`` or ``local-dir:`` model is read from: the hub repo's snapshot in the local Hugging
    Face cache (read as a local folder: no request to the hub, whose retries would take half a minute offline)."""
    schema, identifier = name.split(":", 1)
    if schema == "local-dir":
        folder = Path(identifier)
        if not (folder / "open_clip_config.json").is_file():
            raise PretrainedWeightsError(f"model.name: {folder}/open_clip_config.json not found (a local-dir: model "
                                         "is a folder with open_clip_config.json and its weights)")
        return folder
    from huggingface_hub import try_to_load_from_cache

    config = try_to_load_from_cache(identifier, "open_clip_config.json")
    if not isinstance(config, str):
        raise PretrainedWeightsError(
            f"model.name: {identifier} is not in the local Hugging Face cache ($HF_HOME), and without network it cannot"
            " be downloaded: load it once where there is network (e.g. a login node), or use local-dir:FOLDER")
    return Path(config).parent


def _check_schema_model(name: str, pretrained: str | None) -> None:
    """An ``hf-hub:`` model must be in the local Hugging Face cache; a ``local-dir:`` one must hold its config."""
    if pretrained is not None:
        raise PretrainedWeightsError(f"model.pretrained: {name} brings its own weights; set model.pretrained=null "
                                     f"(got {pretrained!r})")
    _local_folder(name)


def require_known_model(name: str, pretrained: str | None = None) -> None:
    """Fail fast, before any data is built, on an unknown model name, a pretrained tag that does not fit it, a
    missing weights file, or an ``hf-hub:`` model that is not cached."""
    if _schema(name):
        _check_schema_model(name, pretrained)
        return
    with_embedded_configs()
    if name not in open_clip.list_models():
        raise UnknownNameError(f"model.name: unknown model {name!r}; see open_clip.list_models() (small ones: "
                               f"{', '.join(m for m in open_clip.list_models() if m.startswith('digit-'))}), or "
                               "hf-hub:ORG/REPO, local-dir:FOLDER")
    if _is_tag(pretrained):
        check_pretrained_tag(name, pretrained)
    elif pretrained is not None and not Path(pretrained).is_file():
        raise PretrainedWeightsError(f"model.pretrained: {pretrained}: no such weights file")


def _tag_cached(cfg: dict) -> bool:
    """Whether a tag's weights are in the local Hugging Face cache (the files open_clip looks for there)."""
    from huggingface_hub import try_to_load_from_cache

    repo, filename = os.path.split(cfg.get("hf_hub", ""))
    if not repo:
        return False
    names = [filename] if filename else ["open_clip_model.safetensors", "open_clip_pytorch_model.bin"]
    return any(isinstance(try_to_load_from_cache(repo, name), str) for name in names)


def ensure_tag_weights(name: str, pretrained: str | None) -> None:
    """Make sure a pretrained tag's weights are on this machine before any job needs them: found in the local
    cache, or downloaded once, here, where there is network; otherwise one line that says what to do.

    The sweep driver runs it once, so that jobs do not each try (and fail) on their own."""
    if not _is_tag(pretrained) or _schema(name):
        return
    cfg = open_clip.get_pretrained_cfg(name, pretrained)
    if _tag_cached(cfg):
        return
    missing = (f"model.pretrained: the weights of {name} {pretrained!r} are not in the local Hugging Face cache "
               "($HF_HOME)")
    advice = "run it once where there is network (e.g. a login node), or pass a local weights file"
    host = _hub_host()
    if host is None:  # the hub's client would retry for half a minute before saying so
        raise PretrainedWeightsError(f"{missing}, and there is no network to download them: {advice}")
    log.info("downloading the weights of %s %r from %s (once; cached under $HF_HOME)", name, pretrained, host)
    try:
        with _muted(("open_clip", "huggingface_hub")):
            open_clip.download_pretrained(cfg)
    except Exception as exc:  # a hub error, a refused connection, a full disk
        reason = str(exc).splitlines()[0] if str(exc) else ""
        raise PretrainedWeightsError(f"{missing} and the download failed ({exc.__class__.__name__}: "
                                     f"{reason[:160]}): {advice}") from exc


def _hub_host() -> str | None:
    """The Hugging Face endpoint's host when its name resolves (a DNS lookup, no request); None when offline."""
    import socket
    from urllib.parse import urlparse

    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        return None
    host = urlparse(constants.ENDPOINT).hostname or "huggingface.co"
    try:
        socket.getaddrinfo(host, 443)
    except OSError:
        return None
    return host


def model_skeleton(name: str) -> torch.nn.Module:
    """The architecture of ``name`` on the meta device: no memory, no weights, built in a fraction of a second."""
    with_embedded_configs()
    local = f"local-dir:{_local_folder(name)}" if _schema(name) else name
    with _muted(("open_clip", "huggingface_hub")), torch.device("meta"):
        return open_clip.create_model(local, pretrained=None, load_weights=False, device="meta")


def check_orthogonality(name: str) -> None:
    """Refuse, before any work, an architecture whose visual projection the orthogonality term cannot find."""
    try:
        visual_projection(model_skeleton(name))
    except UnknownNameError as exc:
        raise UnknownNameError(f"model.name: {name}: {exc}") from None


def _is_tag(pretrained: str | None) -> TypeGuard[str]:
    """Whether ``pretrained`` names an open_clip tag (rather than nothing or a file; the embedded weights a benchmark
    names are resolved to their file before a model is built: ``harness.trial.pretrain.embedded_weights``)."""
    return (pretrained is not None and not Path(pretrained).is_file()
            and not pretrained.endswith(WEIGHT_SUFFIXES) and "/" not in pretrained)


def check_pretrained_tag(name: str, tag: str) -> None:
    """Refuse a tag open_clip does not know for ``name``, or whose activation differs from the model's.

    OpenAI's weights (and some others) were trained with QuickGELU. open_clip 3.x only warns
    when such a tag is loaded into a GELU model (``ViT-B-16`` + ``openai``) and builds it anyway:
    the weights load, the features are wrong. We refuse and name the ``-quickgelu`` variant to use
    instead of switching the activation ourselves, so that the record's ``model.name`` always
    names the architecture that ran. A ``-quickgelu`` name with a GELU-trained tag is refused
    likewise, naming the plain model.
    """
    cfg = open_clip.get_pretrained_cfg(name, tag)
    base = name.removesuffix("-quickgelu")
    if not cfg and base != name and open_clip.get_pretrained_cfg(base, tag):
        raise PretrainedWeightsError(f"pretrained {tag!r} was trained with GELU: use model {base!r}, not {name!r}")
    if not cfg:
        known = ", ".join(open_clip.list_pretrained_tags_by_model(name)) or "none"
        raise PretrainedWeightsError(f"model.pretrained: unknown pretrained tag {tag!r} for {name} (known: {known}) and no such file")
    if cfg.get("quick_gelu", False) and not open_clip.get_model_config(name).get("quick_gelu", False):
        raise PretrainedWeightsError(f"pretrained {tag!r} was trained with QuickGELU: use model {name + '-quickgelu'!r}"
                                     f" (the same weights with the activation they were trained with), not {name!r}")


def create_model(name: str, pretrained: str | None = None, device: str | torch.device = "cpu") -> tuple[torch.nn.Module, Tokenizer]:
    """Build an open_clip model and its tokenizer.

    ``pretrained``: None (random init); a weights file (the embedded small CLIP's is resolved
    beforehand by ``harness.trial.pretrain.embedded_weights``) (see ``load_weights``); or an
    open_clip pretrained tag (from the user's cache, downloaded if there is network; the tag must
    fit the model's activation, see ``check_pretrained_tag``).
    """
    require_known_model(name, pretrained)
    if _schema(name):
        local = f"local-dir:{_local_folder(name)}"
        return _create_from_tag(local, None, device), open_clip.get_tokenizer(local)
    if _is_tag(pretrained):
        return _create_from_tag(name, pretrained, device), open_clip.get_tokenizer(name)
    weights = pretrained
    if weights is not None and not Path(weights).is_file():
        raise PretrainedWeightsError(f"{weights}: no such weights file")
    with _muted(("open_clip",), "No pretrained weights"):  # built empty: we load our own weights next
        model = open_clip.create_model(name, pretrained=None, device=device)
    if weights is not None:
        load_weights(model, Path(weights))
    return model, open_clip.get_tokenizer(name)


def _create_from_tag(name: str, tag: str | None, device: str | torch.device) -> torch.nn.Module:
    """open_clip's model with the tag's weights (or an ``hf-hub:``/``local-dir:`` model's own); a failed download or
    load is one line that says what to do."""
    try:
        with _muted(("open_clip", "huggingface_hub")):  # their lines (and retries) would repeat the error we raise
            return open_clip.create_model(name, pretrained=tag, device=device, require_pretrained=True)
    except Exception as exc:  # open_clip raises a variety of hub / file errors
        reason = " ".join(f"{exc.__class__.__name__}: {exc}".split())
        raise PretrainedWeightsError(
            f"could not load pretrained weights {tag or 'of the model'!r} for {name}: {reason} (not cached? run the same model and tag"
            " once where there is network, e.g. a login node, to fill the cache under $HF_HOME; or pass a local"
            " weights file; HF_HUB_OFFLINE=1 makes runs without network fail at once instead of retrying)"
        ) from exc


def load_weights(model: torch.nn.Module, path: Path) -> None:
    """Load a weights file, never unpickling code (``weights_only``).

    Accepted: a plain ``state_dict`` (as this harness saves), an open_clip training checkpoint
    (``{"state_dict": ...}``; a DDP ``module.`` prefix is stripped) or a ``.safetensors`` file (as
    open_clip's hub cache holds). A file carries no activation: OpenAI weights need a
    ``-quickgelu`` model name. OpenAI's original TorchScript ``.pt`` archives are refused.
    """
    if _is_torchscript(path):
        raise PretrainedWeightsError(
            f"{path}: a TorchScript archive (OpenAI's original release), which is not loaded here; use the open_clip"
            " tag instead (pretrained=openai with a -quickgelu model) or a state_dict of it")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(path)
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise PretrainedWeightsError(f"{path}: not a loadable state_dict ({exc.__class__.__name__}: {exc})") from exc
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise PretrainedWeightsError(f"{path}: holds a {type(state).__name__}, not a state_dict")
    try:
        model.load_state_dict({key.removeprefix("module."): value for key, value in state.items()})
    except RuntimeError as exc:
        raise PretrainedWeightsError(f"{path}: does not fit this model ({' '.join(str(exc).split())[:400]})") from exc


def _is_torchscript(path: Path) -> bool:
    """Whether ``path`` is a TorchScript archive (it holds ``constants.pkl``; a torch.save zip does not)."""
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        return any(member.endswith("constants.pkl") for member in archive.namelist())


def encode_images(model: torch.nn.Module, images: torch.Tensor) -> torch.Tensor:
    return F.normalize(model.encode_image(images), dim=-1)


def encode_texts(model: torch.nn.Module, tokens: torch.Tensor) -> torch.Tensor:
    return F.normalize(model.encode_text(tokens), dim=-1)


def zeroshot_head(
    model: torch.nn.Module, tokenizer: Tokenizer, classnames: Sequence[str], templates: Sequence[str]
) -> torch.Tensor:
    """Class embeddings ``[C, D]``: encode every template per class, L2-normalise, average, L2-normalise again.

    Prompts are encoded ``PROMPT_BATCH`` at a time: ImageNet's 1000 classes x 80 templates in one
    batch would need tens of GB of activations.
    """
    prompts = [template.format(name) for name in classnames for template in templates]
    device = next(model.parameters()).device
    features = torch.cat([encode_texts(model, tokenizer(prompts[start : start + PROMPT_BATCH]).to(device))
                          for start in range(0, len(prompts), PROMPT_BATCH)])
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


class ImageClassifier(torch.nn.Module):
    """The image tower and a linear head as one module, the one a cross-entropy stage (ft, lp) trains and
    ``DistributedDataParallel`` wraps: logits = head(normalised image features). A linear probe
    (``train_tower=False``) keeps the tower out of the autograd graph."""

    def __init__(self, model: torch.nn.Module, head: torch.nn.Module, train_tower: bool):
        super().__init__()
        self.model, self.head, self.train_tower = model, head, train_tower

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        with torch.set_grad_enabled(self.train_tower and torch.is_grad_enabled()):
            features = encode_images(self.model, images)
        return self.head(features)


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
    raise UnknownNameError(f"no final visual projection found in {type(visual).__name__} for the orthogonality term "
                           "(loss.oc_weight; it handles ViT visual.proj, ModifiedResNet attnpool.c_proj and timm "
                           "head.proj towers): set loss.oc_weight=0")


def text_projection(model: torch.nn.Module) -> torch.Tensor:
    """The text tower's projection W_t as [d_text, d_embed]."""
    projection = model.text_projection
    return projection.weight.T if isinstance(projection, torch.nn.Linear) else projection
