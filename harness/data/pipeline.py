"""Input pipeline for file-backed datasets: open_clip's preprocessing and a DataLoader that keeps a GPU busy.

``make_loader`` uses worker processes, pinned memory when CUDA is in use, persistent workers and
prefetching; training loaders shuffle (seeded) and drop the last partial batch. Datasets whose
items depend on the epoch (captions sampled per image per epoch) take ``(epoch, index)`` keys from
an ``EpochSampler``: the sampler runs in the main process, so its epoch reaches persistent workers,
which a ``dataset.set_epoch`` in the main process would not.
"""

from __future__ import annotations

import os
from typing import Callable, Iterator

import torch
from torch.utils.data import DataLoader, Dataset, Sampler

_MASK = (1 << 64) - 1


def mix64(*values: int) -> int:
    """A 64-bit hash of integers (splitmix64 finaliser, chained): the same in every process and run."""
    state = 0x9E3779B97F4A7C15
    for value in values:
        state = (state ^ (value & _MASK)) * 0xBF58476D1CE4E5B9 & _MASK
        state ^= state >> 31
        state = (state + 0x9E3779B97F4A7C15) * 0x94D049BB133111EB & _MASK
        state ^= state >> 29
    return state


def default_num_workers() -> int:
    """CPUs this process may use, capped at 16 (decoding JPEGs rarely needs more per GPU)."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cpus = os.cpu_count() or 1
    return max(0, min(16, cpus - 1))


def clip_preprocess(model: torch.nn.Module | None = None, train: bool = False, image_size: int = 224) -> Callable:
    """open_clip's image preprocessing: the model's own config when given, else CLIP's defaults at ``image_size``.

    ``train=True`` gives open_clip's training transform (random resized crop); evaluation resizes
    and centre-crops. Mean/std are the model's (OpenAI's CLIP statistics by default).
    """
    import open_clip

    if model is not None:
        cfg = open_clip.get_model_preprocess_cfg(model)  # size, mean, std, interpolation, resize_mode, ...
        keys = ("mean", "std", "interpolation", "resize_mode", "fill_color")
        return open_clip.image_transform(cfg["size"], is_train=train, **{k: cfg[k] for k in keys if k in cfg})
    return open_clip.image_transform(image_size, is_train=train)


class EpochSampler(Sampler):
    """Yields ``(epoch, index)`` keys: a seeded permutation per epoch (or in order); call ``set_epoch``.

    With ``num_replicas > 1`` each rank takes every ``num_replicas``-th key of the same permutation,
    padded by wrapping so all ranks get ``ceil(length / num_replicas)`` keys (as DistributedSampler).
    ``set_epoch(epoch, start)`` skips this rank's first ``start`` keys: a resumed run goes on mid-epoch.
    """

    def __init__(self, length: int, seed: int = 0, shuffle: bool = True, num_replicas: int = 1, rank: int = 0):
        if not 0 <= rank < num_replicas:
            raise ValueError(f"rank {rank} outside 0..{num_replicas - 1}")
        self.length, self.seed, self.shuffle, self.epoch = length, seed, shuffle, 0
        self.num_replicas, self.rank = num_replicas, rank
        self.start = 0

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        self.epoch, self.start = epoch, start

    def _per_rank(self) -> int:
        return -(-self.length // self.num_replicas)

    def __len__(self) -> int:
        return max(0, self._per_rank() - self.start)

    def __iter__(self) -> Iterator[tuple[int, int]]:
        if self.shuffle:
            generator = torch.Generator().manual_seed(mix64(self.seed, self.epoch) >> 1)
            order = torch.randperm(self.length, generator=generator).tolist()
        else:
            order = list(range(self.length))
        total = self._per_rank() * self.num_replicas
        order = (order * (-(-total // max(1, len(order)))))[:total][self.rank :: self.num_replicas][self.start :]
        epoch = self.epoch
        return ((epoch, index) for index in order)


def make_loader(
    dataset: Dataset,
    batch_size: int,
    train: bool,
    num_workers: int | None = None,
    seed: int = 0,
    device: str | torch.device | None = None,
    sampler: Sampler | None = None,
    prefetch_factor: int = 4,
) -> DataLoader:
    """A DataLoader for file-backed data.

    ``num_workers`` defaults to ``default_num_workers()``; ``pin_memory`` is on when ``device`` is CUDA
    (or, with no device given, when CUDA is available); workers persist across epochs and prefetch
    ``prefetch_factor`` batches each. ``train`` shuffles with a generator seeded by ``seed`` (unless a
    ``sampler`` is given) and drops the last partial batch.
    """
    if num_workers is None:
        num_workers = default_num_workers()
    cuda = torch.device(device).type == "cuda" if device is not None else torch.cuda.is_available()
    options: dict = {
        "batch_size": batch_size,
        "num_workers": num_workers,
        "pin_memory": cuda,
        "drop_last": train,
        "persistent_workers": num_workers > 0,
    }
    if num_workers > 0:
        options["prefetch_factor"] = prefetch_factor
    if sampler is not None:
        options["sampler"] = sampler
    elif train:
        options["shuffle"] = True
        options["generator"] = torch.Generator().manual_seed(seed)
    return DataLoader(dataset, **options)
