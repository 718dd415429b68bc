"""Pre-training of the small CLIPs that play CLIP's role on the embedded benchmarks (``python -m harness.pretrain``).

Contrastive training on a benchmark's pre-training pool: digitshift's (all its domains, with varied,
domain-aware captions), iconshift's, or a benchmark file's ``splits.pretrain`` (its captions, or
its labels in the file's templates), so that the starting model is broad and fairly calibrated on
every domain. ``model.pretrained=BENCHMARK`` names these weights. They are a plain ``state_dict``
(load with ``weights_only=True``); a JSON beside them holds the config, the zero-shot metrics and
the final logit scale. ``ensure_pretrained`` builds them once and caches them keyed by everything
that changes them: the config (model and benchmark included), the benchmark's content (its
registered version, or its files' digest) and the optimizer rules below. The entry points call it
before a model is built (``ensure_weights``); ``embedded_weights`` only looks the cache entry up.

Pretraining keeps open_clip's rules whatever fine-tuning uses: no weight decay on gains, biases,
embeddings and the logit scale, and the learned scale clamped at 100 (fine-tuning follows the
released CaRot code instead: ``optim.weight_decay_on``, ``optim.logit_scale_max``).
"""

from __future__ import annotations

import logging
import math
import os
import time
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch
from pydantic import Field, field_validator, model_validator
from torch.utils.data import Sampler
from tqdm.auto import tqdm

from harness.core.config import ModelConfig, StrictModel, benchmark_label, config_hash, is_benchmark_file
from harness.core.errors import ConfigError, PretrainedWeightsError, UnknownNameError
from harness.core.storage import (
    atomic_torch_save,
    atomic_write_json,
    cache_dir,
    file_lock,
)
from harness.data import (
    Benchmark,
    ImageSet,
    available_benchmarks,
    benchmark_content,
    load_benchmark,
    pretraining_benchmarks,
    require_known_benchmark,
)
from harness.data.pipeline import clip_preprocess, make_loader
from harness.models.clip import (
    MAX_LOGIT_SCALE,
    create_model,
    encode_images,
    encode_texts,
    ensure_tag_weights,
    require_known_model,
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

# Pre-training settings of each architecture where they differ from PretrainConfig's defaults (which are
# digit-vit-xs's); a config that names the model gets them unless it sets them itself.
MODEL_DEFAULTS: dict[str, dict] = {
    "digit-vit-s": {"epochs": 9},  # 4.5x digit-vit-xs's image tower: 12 epochs take 6 minutes on 2 cores, 9 fit in 5
}


class PretrainConfig(StrictModel):
    model: str = "digit-vit-xs"
    benchmark: str = Field("digitshift", description="whose pre-training pool: a registered benchmark with one "
                           "(digitshift, iconshift) or a benchmark file (.yaml) with splits.pretrain")
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

    @model_validator(mode="before")
    @classmethod
    def _model_defaults(cls, values: Any) -> Any:
        if isinstance(values, dict):
            model = values.get("model", cls.model_fields["model"].default)
            return {**MODEL_DEFAULTS.get(model, {}), **values}
        return values

    @field_validator("benchmark")
    @classmethod
    def _pretraining_benchmark(cls, benchmark: str) -> str:
        require_pool(benchmark)
        return os.path.abspath(benchmark) if is_benchmark_file(benchmark) else benchmark


DECAY_ON: DecayOn = "matrices"  # open_clip's decay groups
LOGIT_SCALE_MAX = MAX_LOGIT_SCALE  # open_clip's clamp


def pretrains_on(pretrained: str | None) -> bool:
    """Whether ``model.pretrained`` names a benchmark (whose pool pre-trains the embedded weights), not a tag or a
    weights file; ``require_pool`` then says whether it has a pool."""
    return pretrained is not None and (is_benchmark_file(pretrained) or pretrained in available_benchmarks())


def require_pool(benchmark: str) -> None:
    """A benchmark with a pre-training pool: a registered one that has it, or a benchmark file with splits.pretrain."""
    if is_benchmark_file(benchmark):
        from harness.data.benchmark_file import read_spec

        require_known_benchmark(benchmark)
        if read_spec(benchmark).splits.pretrain is None:
            raise ConfigError(f"{benchmark}: no splits.pretrain, so there is no pool to pre-train on "
                              "(docs/benchmark-files.md)")
    elif benchmark not in pretraining_benchmarks():
        raise UnknownNameError(f"{benchmark!r} has no pre-training pool; benchmarks with one: "
                               f"{', '.join(pretraining_benchmarks())}, or a benchmark file with splits.pretrain")


class _WeightsKey(StrictModel):
    """Everything the pretrained weights depend on: a cache entry built from other inputs is never reused."""

    config: PretrainConfig
    data: str  # the benchmark's content: its registered version, or its files' digest
    decay_on: str
    logit_scale_max: float


def weights_path(config: PretrainConfig) -> Path:
    key = _WeightsKey(config=config, data=benchmark_content(config.benchmark, progress=False), decay_on=DECAY_ON,
                      logit_scale_max=LOGIT_SCALE_MAX)
    return cache_dir() / "pretrained" / f"{config.model}-{benchmark_label(config.benchmark)}-{config_hash(key)}.pt"


def _param_groups(model: torch.nn.Module, config: PretrainConfig) -> list[dict]:
    others = ((name, p) for name, p in model.named_parameters() if name != "logit_scale")
    scale = {"params": [model.logit_scale], "weight_decay": 0.0, "lr_mult": config.logit_scale_lr_mult}
    return [*decay_groups(others, config.weight_decay, DECAY_ON), scale]


class _Order(Sampler):
    """The rows of the current epoch, in order (a loader's persistent workers read each epoch's anew)."""

    def __init__(self):
        self.rows: list[int] = []

    def __iter__(self) -> Iterator[int]:
        return iter(self.rows)

    def __len__(self) -> int:
        return len(self.rows)


class PretrainPool:
    """The pre-training pool as (images, captions) batches: tensors sliced in memory, or files read by loader
    processes with the model's training preprocessing; captions are the pool's own, or a template with the class."""

    def __init__(self, benchmark: Benchmark, model: torch.nn.Module, batch_size: int):
        self.dataset, self.benchmark = benchmark.pretrain, benchmark
        self.loader = None
        if not isinstance(self.dataset, ImageSet):
            self.dataset.transform = clip_preprocess(model, train=True)
            self.order = _Order()
            self.loader = make_loader(self.dataset, batch_size, train=True, sampler=self.order)

    def __len__(self) -> int:
        return len(self.dataset)

    def _template_caption(self, label: int, rng: np.random.Generator) -> str:
        templates = self.benchmark.templates
        return templates[int(rng.integers(len(templates)))].format(self.benchmark.classnames[label])

    def _memory_caption(self, row: int, label: int, rng: np.random.Generator) -> str:
        """The benchmark's own captioner of in-memory pools (digitshift's), else a template with the class."""
        if self.benchmark.pretrain_caption is not None:
            return self.benchmark.pretrain_caption(row, rng)
        return self._template_caption(label, rng)

    def epoch(self, rows: torch.Tensor, rng: np.random.Generator) -> Iterator[tuple[torch.Tensor, list[str]]]:
        """Batches of ``rows`` ``[steps, batch]``, in order."""
        if self.loader is None:
            for index in rows:
                labels = self.dataset.labels[index].tolist()
                yield (self.dataset.normalise(self.dataset.images[index]),
                       [self._memory_caption(i, label, rng) for i, label in zip(index.tolist(), labels)])
            return
        self.order.rows = rows.flatten().tolist()
        for images, texts in self.loader:
            if isinstance(texts, torch.Tensor):  # a labelled pool: captioned from the templates
                texts = [self._template_caption(label, rng) for label in texts.tolist()]
            yield images, list(texts)


def pretrain(config: PretrainConfig, out: Path, progress: bool = True) -> dict:
    """Train, evaluate zero-shot on every test set, and save weights + a JSON summary to ``out``."""
    started = time.perf_counter()
    torch.manual_seed(config.seed)
    rng = np.random.default_rng(config.seed)
    benchmark = load_benchmark(config.benchmark, progress=progress)
    model, tokenizer = create_model(config.model, pretrained=None)
    benchmark.set_transforms(clip_preprocess(model, train=True), clip_preprocess(model))
    pool = PretrainPool(benchmark, model, config.batch_size)
    count = min(len(pool), config.max_images or len(pool))
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
        for images, captions in pool.epoch(order.view(steps_per_epoch, -1), rng):
            missing = [c for c in dict.fromkeys(captions) if c not in token_cache]
            if missing:
                token_cache.update(zip(missing, tokenizer(missing)))
            tokens = torch.stack([token_cache[c] for c in captions])
            set_learning_rate(optimizer, config.lr, cosine_with_warmup(step, total, config.warmup_steps))
            loss = contrastive_loss(
                encode_images(model, images), encode_texts(model, tokens), model.logit_scale.exp()
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


def _config(model: ModelConfig) -> PretrainConfig:
    """The pre-training config of the embedded weights ``model`` names: its architecture on its benchmark's pool."""
    return PretrainConfig(model=model.name, benchmark=model.pretrained)


def ensure_pretrained(config: PretrainConfig, progress: bool = True) -> Path:
    """Path of the weights ``config`` trains, trained on first use (one process at a time)."""
    path = weights_path(config)
    with file_lock(path.with_suffix(".lock")):
        if not path.exists():
            log.info("first use: pretraining %s on %s (cached at %s)", config.model, config.benchmark, path)
            summary = pretrain(config, path, progress)
            log.info("zero-shot result of the pre-trained %s:\n%s", config.model,
                     format_table(summary["zeroshot"], summary["id_test"]))
    return path


def embedded_weights(model: ModelConfig) -> str | None:
    """The weights ``create_model`` gets for ``model``: the cache entry for the embedded ones, else as configured.

    Looks up only: pre-training is a job of its own, which the entry points run first (``ensure_weights``).
    """
    if not pretrains_on(model.pretrained):
        return model.pretrained
    config = _config(model)
    path = weights_path(config)
    if not path.exists():
        raise PretrainedWeightsError(f"the weights of {model.name} pre-trained on {model.pretrained} are not built "
                                     f"yet: run python -m harness.pretrain model={model.name} "
                                     f"benchmark={config.benchmark} (harness.train and harness.sweep do so on first use)")
    return str(path)


def ensure_weights(model: ModelConfig, progress: bool = True) -> str | None:
    """``embedded_weights``, made available first: the embedded model pre-trained on its benchmark when its cache
    entry is missing, an open_clip tag's weights found in the local cache or downloaded once (``ensure_tag_weights``)."""
    if pretrains_on(model.pretrained):
        ensure_pretrained(_config(model), progress)
    else:
        ensure_tag_weights(model.name, model.pretrained)
    return embedded_weights(model)


def check_model(model: ModelConfig) -> None:
    """Before any work: the architecture, and its weights (a benchmark with a pre-training pool, a tag, a file)."""
    if pretrains_on(model.pretrained):
        require_pool(model.pretrained)
        require_known_model(model.name, None)
    else:
        require_known_model(model.name, model.pretrained)
