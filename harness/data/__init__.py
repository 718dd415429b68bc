"""Benchmarks: ``load_benchmark(name)`` returns a ``Benchmark`` of torch Datasets."""

from harness.data import digitshift as _digitshift  # noqa: F401  (registers "digitshift")
from harness.data import iconshift as _iconshift  # noqa: F401  (registers "iconshift")
from harness.data import imagenet_benchmark as _imagenet  # noqa: F401  (registers "imagenet")
from harness.data.registry import (
    Benchmark,
    ImageSet,
    LoadedBenchmarks,
    available_benchmarks,
    benchmark_content,
    benchmark_version,
    check_benchmark,
    known_train_size,
    load_benchmark,
    pretraining_benchmarks,
    register_benchmark,
    require_known_benchmark,
)

__all__ = [
    "Benchmark", "ImageSet", "LoadedBenchmarks", "available_benchmarks", "benchmark_content", "benchmark_version", "check_benchmark", "known_train_size", "load_benchmark", "pretraining_benchmarks", "register_benchmark", "require_known_benchmark",
]
