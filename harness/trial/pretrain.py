"""Pre-training of the small CLIP that plays CLIP's role on the embedded benchmark (``python -m harness.pretrain``).

Contrastive training on the digitshift pretraining pool (all domains) with varied,
domain-aware captions, so that the starting model is broad and fairly calibrated on every
domain. Weights are a plain ``state_dict`` (load with ``weights_only=True``); a JSON beside
them holds the config, the zero-shot metrics and the final logit scale. ``ensure_pretrained``
builds the default weights once per architecture and caches them keyed by everything that
changes them: the config, the benchmark's version and the optimizer rules below. The entry
points call it before a model is built (``ensure_weights``); ``embedded_weights`` only
looks the cache entry up.

Pretraining keeps open_clip's rules whatever fine-tuning uses: no weight decay on gains, biases,
embeddings and the logit scale, and the learned scale clamped at 100 (fine-tuning follows the
released CaRot code instead: ``optim.weight_decay_on``, ``optim.logit_scale_max``).
"""

from __future__ import annotations

import logging
import math
import time
from pathlib import Path

import numpy as np
import torch
from pydantic import Field
from tqdm.auto import tqdm

from harness.core.config import ModelConfig, StrictModel, config_hash
from harness.core.errors import PretrainedWeightsError
from harness.core.storage import (
    atomic_torch_save,
    atomic_write_json,
    cache_dir,
    file_lock,
)
from harness.data import benchmark_version, load_benchmark
from harness.data.captions import pretrain_caption
from harness.models.clip import (
    EMBEDDED_PRETRAINED,
    MAX_LOGIT_SCALE,
    create_model,
    ensure_tag_weights,
    encode_images,
    encode_texts,
)
from harness.trial.set_reports import evaluate_zeroshot, format_table
from harness.trial.losses import contrastive_loss
from harness.trial.optim import (
    DecayOn,
    cosine_with_warmup,
    decay_groups,
    set_learning_rate,
)

log = logging.getLogger(__name__)

class PretrainConfig(StrictModel):
    model: str = "digit-vit-xs"
    benchmark: str = "digitshift"
    epochs: int = Field(12, ge=1)
    batch_size: int = Field(128, ge=2)
    lr: float = Field(1e-3, gt=0.0)
    weight_decay: float = Field(0.1, ge=0.0)
    warmup_steps: int = Field(40, ge=0)
    init_logit_scale: float = Field(
        30.0, gt=0.0, le=MAX_LOGIT_SCALE, description="initial multiplier (CLIP: 1/0.07 = 14.3; see README for why 30)"
    )
    logit_scale_lr_mult: float = Field(1.0, gt=0.0, description="learning-rate multiplier of the logit scale")
    max_images: int | None = Field(None, ge=2, description="use only the first N pool images (tests)")
    seed: int = Field(0, ge=0)


DECAY_ON: DecayOn = "matrices"  # open_clip's decay groups
LOGIT_SCALE_MAX = MAX_LOGIT_SCALE  # open_clip's clamp


class _WeightsKey(StrictModel):
    """Everything the pretrained weights depend on: a cache entry built from other inputs is never reused."""

    config: PretrainConfig
    benchmark_version: int
    decay_on: str
    logit_scale_max: float


def weights_path(config: PretrainConfig) -> Path:
    key = _WeightsKey(config=config, benchmark_version=benchmark_version(config.benchmark), decay_on=DECAY_ON,
                      logit_scale_max=LOGIT_SCALE_MAX)
    return cache_dir() / "pretrained" / f"{config.model}-{config_hash(key)}.pt"


def _param_groups(model: torch.nn.Module, config: PretrainConfig) -> list[dict]:
    others = ((name, p) for name, p in model.named_parameters() if name != "logit_scale")
    scale = {"params": [model.logit_scale], "weight_decay": 0.0, "lr_mult": config.logit_scale_lr_mult}
    return [*decay_groups(others, config.weight_decay, DECAY_ON), scale]


def pretrain(config: PretrainConfig, out: Path, progress: bool = True) -> dict:
    """Train, evaluate zero-shot on every test set, and save weights + a JSON summary to ``out``."""
    started = time.perf_counter()
    torch.manual_seed(config.seed)
    rng = np.random.default_rng(config.seed)
    benchmark = load_benchmark(config.benchmark, progress=progress)
    pool = benchmark.pretrain
    count = min(len(pool), config.max_images or len(pool))
    model, tokenizer = create_model(config.model, pretrained=None)
    with torch.no_grad():
        model.logit_scale.fill_(math.log(config.init_logit_scale))
    optimizer = torch.optim.AdamW(_param_groups(model, config), lr=config.lr)
    steps_per_epoch = max(1, count // config.batch_size)
    total = steps_per_epoch * config.epochs
    token_cache: dict[str, torch.Tensor] = {}
    generator = torch.Generator().manual_seed(config.seed)
    bar = tqdm(total=total, desc=f"pretraining {config.model}", disable=not progress)
    step = 0
    model.train()
    for _ in range(config.epochs):
        order = torch.randperm(count, generator=generator)[: steps_per_epoch * config.batch_size]
        for index in order.view(steps_per_epoch, -1):
            captions = [pretrain_caption(int(pool.labels[i]), pool.meta["domain"][i], pool.meta["detail"][i], rng)
                        for i in index.tolist()]
            missing = [c for c in dict.fromkeys(captions) if c not in token_cache]
            if missing:
                token_cache.update(zip(missing, tokenizer(missing)))
            tokens = torch.stack([token_cache[c] for c in captions])
            set_learning_rate(optimizer, config.lr, cosine_with_warmup(step, total, config.warmup_steps))
            loss = contrastive_loss(
                encode_images(model, pool.normalise(pool.images[index])), encode_texts(model, tokens), model.logit_scale.exp()
            )
            if not torch.isfinite(loss):
                raise FloatingPointError(f"non-finite pretraining loss at step {step}")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            with torch.no_grad():
                model.logit_scale.clamp_(0, math.log(LOGIT_SCALE_MAX))
            step += 1
            bar.set_postfix(loss=f"{loss.item():.3f}", scale=f"{model.logit_scale.exp().item():.1f}")
            bar.update()
    bar.close()
    train_seconds = time.perf_counter() - started
    zeroshot = evaluate_zeroshot(model, tokenizer, benchmark)
    summary = {
        "config": config.model_dump(),
        "logit_scale": model.logit_scale.exp().item(),
        "steps": total,
        "train_seconds": round(train_seconds, 1),
        "zeroshot": zeroshot,
        "id_test": benchmark.id_test,
    }
    atomic_torch_save(model.state_dict(), out)
    atomic_write_json(summary, out.with_suffix(".json"))
    return summary


def ensure_pretrained(model_name: str, progress: bool = True) -> Path:
    """Path of the embedded pretrained weights for ``model_name``, trained on first use (one process at a time)."""
    config = PretrainConfig(model=model_name)
    path = weights_path(config)
    with file_lock(path.with_suffix(".lock")):
        if not path.exists():
            log.info("first use: pretraining %s on %s (cached at %s)", model_name, config.benchmark, path)
            summary = pretrain(config, path, progress)
            log.info("zero-shot result of the pre-trained %s:\n%s", model_name,
                     format_table(summary["zeroshot"], summary["id_test"]))
    return path


def embedded_weights(model: ModelConfig) -> str | None:
    """The weights ``create_model`` gets for ``model``: the cache entry for the embedded ones, else as configured.

    Looks up only: pre-training is a job of its own, which the entry points run first (``ensure_weights``).
    """
    if model.pretrained != EMBEDDED_PRETRAINED:
        return model.pretrained
    path = weights_path(PretrainConfig(model=model.name))
    if not path.exists():
        raise PretrainedWeightsError(f"the embedded weights of {model.name} are not built yet: run "
                                     f"python -m harness.pretrain model={model.name} (harness.train and "
                                     "harness.sweep do so on first use)")
    return str(path)


def ensure_weights(model: ModelConfig, progress: bool = True) -> str | None:
    """``embedded_weights``, made available first: the embedded model pre-trained when its cache entry is missing,
    an open_clip tag's weights found in the local cache or downloaded once (``ensure_tag_weights``)."""
    if model.pretrained == EMBEDDED_PRETRAINED:
        ensure_pretrained(model.name, progress)
    else:
        ensure_tag_weights(model.name, model.pretrained)
    return embedded_weights(model)
