"""ImageNet-C-style corruptions of 32x32 digits at graded severities (numpy only, seeded)."""

from __future__ import annotations

from typing import Callable

import numpy as np
from PIL import Image
from scipy.ndimage import gaussian_filter

SEVERITIES = (1, 2, 3)

# Per corruption, its parameter at severities 1, 2, 3 (mild to strong).
_PARAMETERS: dict[str, tuple[float, float, float]] = {
    "gaussian_noise": (0.2, 0.4, 0.6),  # noise std, image in [0, 1]
    "impulse_noise": (0.06, 0.15, 0.3),  # fraction of pixels set to 0 or 1
    "gaussian_blur": (0.9, 1.5, 2.2),  # blur sigma in pixels
    "contrast": (0.4, 0.2, 0.1),  # contrast factor around the image mean
    "pixelate": (14, 10, 7),  # side length the image is reduced to
}
CORRUPTIONS = tuple(_PARAMETERS)


def _gaussian_noise(image: np.ndarray, std: float, rng: np.random.Generator) -> np.ndarray:
    return image + rng.normal(0.0, std, image.shape)


def _impulse_noise(image: np.ndarray, fraction: float, rng: np.random.Generator) -> np.ndarray:
    out = image.copy()
    hit = rng.random(image.shape) < fraction
    out[hit] = rng.integers(0, 2, int(hit.sum()))
    return out


def _gaussian_blur(image: np.ndarray, sigma: float, rng: np.random.Generator) -> np.ndarray:
    return gaussian_filter(image, sigma)


def _contrast(image: np.ndarray, factor: float, rng: np.random.Generator) -> np.ndarray:
    mean = image.mean()
    return (image - mean) * factor + mean


def _pixelate(image: np.ndarray, side: float, rng: np.random.Generator) -> np.ndarray:
    size = image.shape[0]
    small = Image.fromarray(image.astype(np.float32)).resize((int(side), int(side)), Image.BOX)
    return np.asarray(small.resize((size, size), Image.NEAREST), dtype=np.float64)


_FUNCTIONS: dict[str, Callable[[np.ndarray, float, np.random.Generator], np.ndarray]] = {
    "gaussian_noise": _gaussian_noise,
    "impulse_noise": _impulse_noise,
    "gaussian_blur": _gaussian_blur,
    "contrast": _contrast,
    "pixelate": _pixelate,
}


def corrupt(image: np.ndarray, name: str, severity: int, rng: np.random.Generator) -> np.ndarray:
    """Corrupt one uint8 image with ``name`` at ``severity`` (1-3); returns uint8."""
    if severity not in SEVERITIES:
        raise ValueError(f"severity must be one of {SEVERITIES}, got {severity}")
    parameter = _PARAMETERS[name][severity - 1]
    out = _FUNCTIONS[name](image.astype(np.float64) / 255.0, parameter, rng)
    return np.round(np.clip(out, 0.0, 1.0) * 255.0).astype(np.uint8)
