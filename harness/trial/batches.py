"""Training batches by global step: this process's rows of the batch that (seed, step) selects, with captions.

``training_batches`` picks one of two sources with the same ``at(step)``:

- ``TensorBatches`` (in-memory sets, e.g. digitshift): batch ``position`` of a permutation seeded
  by (seed, epoch), one template per image drawn by (seed, step) over the whole batch. Random
  access, so a resumed run sees exactly the batches an uninterrupted one would.
- ``LoaderBatches`` (sets read from files, e.g. ImageNet): a DataLoader (worker processes, pinned
  memory) over an ``EpochSampler`` that gives each rank its share of the epoch's permutation;
  templates are drawn per (seed, epoch, image) in the workers, or come from a caption table. A
  resumed run restarts the sampler at the step's position: the same images and captions, though
  random crops are drawn afresh.

Every rank gets the whole batch's labels (same-class targets need them; -1 for a caption table,
which has no classes) and only its own images and captions. ``CaptionTokens`` turns the captions
into what the text towers encode: each distinct caption once.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterator, Protocol, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from harness.data import Benchmark, ImageSet
from harness.data.finetune_captions import (
    CaptionedImages,
    CaptionFileDataset,
    TemplateCaptions,
)
from harness.data.pipeline import EpochSampler, make_loader
from harness.trial.distributed import (
    DistributedEnvironment,
    gather_features,
    local_rows,
)


@dataclass
class TrainBatch:
    images: torch.Tensor  # this process's rows, on the device
    labels: torch.Tensor  # the whole batch's labels, in rank order, on the device
    captions: list[str]  # this process's rows' captions


@dataclass
class Captions:
    """A batch's captions as the text towers see them: each distinct caption once."""

    texts: list[str]  # the distinct captions, in order of first appearance
    tokens: torch.Tensor  # their tokens, one row each, on the device
    index: torch.Tensor  # per image, the row of its caption


class CaptionTokens:
    """Tokenises a batch's distinct captions, each caption tokenised once per trial.

    Identical captions are encoded once (exact: rows of a batch are independent), which the
    template captions of a class-labelled batch make frequent.
    """

    def __init__(self, tokenizer: Callable[[list[str]], torch.Tensor], device: torch.device):
        self.tokenizer, self.device = tokenizer, device
        self._tokens: dict[str, torch.Tensor] = {}

    def __call__(self, captions: list[str]) -> Captions:
        texts = list(dict.fromkeys(captions))
        missing = [caption for caption in texts if caption not in self._tokens]
        if missing:
            self._tokens.update(zip(missing, self.tokenizer(missing)))
        position = {caption: i for i, caption in enumerate(texts)}
        tokens = torch.stack([self._tokens[caption] for caption in texts]).to(self.device)
        return Captions(texts, tokens, torch.tensor([position[c] for c in captions], device=self.device))


class BatchSource(Protocol):
    steps_per_epoch: int

    def at(self, step: int) -> TrainBatch: ...


def seeded_generator(*parts: int) -> torch.Generator:
    """A generator seeded by a tuple, so each epoch's order and each step's captions are reproducible alone."""
    return torch.Generator().manual_seed(int(np.random.SeedSequence(list(parts)).generate_state(1)[0]))


class TensorBatches:
    def __init__(self, dataset: ImageSet, batch_size: int, seed: int, env: DistributedEnvironment,
                 classnames: Sequence[str], templates: Sequence[str], device: torch.device):
        self.dataset, self.batch_size, self.seed, self.env = dataset, batch_size, seed, env
        self.classnames, self.templates, self.device = classnames, templates, device
        self.steps_per_epoch = len(dataset) // batch_size

    def at(self, step: int) -> TrainBatch:
        epoch, position = divmod(step, self.steps_per_epoch)
        order = torch.randperm(len(self.dataset), generator=seeded_generator(self.seed, 0, epoch))
        index = order[position * self.batch_size : (position + 1) * self.batch_size]
        labels = self.dataset.labels[index]
        choice = torch.randint(len(self.templates), (len(index),), generator=seeded_generator(self.seed, 1, step))
        captions = [self.templates[t].format(self.classnames[y]) for t, y in zip(choice.tolist(), labels.tolist())]
        rows = local_rows(len(index), self.env)
        images = self.dataset.normalise(self.dataset.images[index[rows]])
        return TrainBatch(images.to(self.device), labels.to(self.device), captions[rows])


class Unlabelled(Dataset):
    """A caption table's ``(image, caption)`` rows as ``(image, caption, -1)``, keyed like ``CaptionedImages``."""

    def __init__(self, table: CaptionFileDataset):
        self.table = table

    def __len__(self) -> int:
        return len(self.table)

    def __getitem__(self, key):
        index = key[1] if isinstance(key, tuple) else key
        return (*self.table[index], -1)


class LoaderBatches:
    """Batches of ``(image, caption, label)`` items (``CaptionedImages``, ``Unlabelled``) read by loader processes."""

    def __init__(self, captioned: Dataset, batch_size: int, seed: int, env: DistributedEnvironment,
                 device: torch.device, num_workers: int | None):
        self.local_size = batch_size // env.world_size
        self.steps_per_epoch = len(captioned) // batch_size
        self.device = device
        self.sampler = EpochSampler(len(captioned), seed, shuffle=True, num_replicas=env.world_size, rank=env.rank)
        self.loader = make_loader(captioned, self.local_size, train=True, num_workers=num_workers, seed=seed,
                                  device=device, sampler=self.sampler)
        self._batches: Iterator | None = None
        self._next_step: int | None = None

    def at(self, step: int) -> TrainBatch:
        if step != self._next_step or step % self.steps_per_epoch == 0:  # a new epoch, or a jump (resume)
            epoch, position = divmod(step, self.steps_per_epoch)
            self.sampler.set_epoch(epoch, start=position * self.local_size)
            self._batches = iter(self.loader)
        images, captions, labels = next(self._batches)
        self._next_step = step + 1
        labels = gather_features(labels.to(self.device, non_blocking=True))
        return TrainBatch(images.to(self.device, non_blocking=True), labels, list(captions))


def training_batches(benchmark: Benchmark, batch_size: int, seed: int, env: DistributedEnvironment,
                     device: torch.device, num_workers: int | None = None) -> BatchSource:
    """The source that suits the benchmark's training set."""
    if benchmark.in_memory:
        return TensorBatches(benchmark.train, batch_size, seed, env, benchmark.classnames, benchmark.templates, device)
    if isinstance(benchmark.train, CaptionFileDataset):
        captioned: Dataset = Unlabelled(benchmark.train)
    else:
        captioned = CaptionedImages(benchmark.train, TemplateCaptions(benchmark.classnames, benchmark.templates, seed))
    return LoaderBatches(captioned, batch_size, seed, env, device, num_workers)
