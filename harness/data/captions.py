"""Class names, caption templates and the domain-aware captions of the pretraining pool."""

from __future__ import annotations

import numpy as np

DIGIT_NAMES = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")

# Fine-tuning captions (FLYP/CaRot style: a template filled with the class name).
CAPTION_TEMPLATES = (
    "a photo of the number {}.",
    "a photo of the digit {}.",
    "an image of the number {}.",
)

# Zero-shot head: averaged over these, as CLIP does with its ImageNet templates.
ZEROSHOT_TEMPLATES = (
    "a photo of the number {}.",
    "a photo of the digit {}.",
    "an image of the number {}.",
    "the number {}.",
    "a picture of a {}.",
)

# Domain-aware captions for pretraining; {name} is the word, {digit} the numeral.
_DOMAIN_TEMPLATES: dict[str, tuple[str, ...]] = {
    "mnist": (
        "a handwritten {name}.",
        "a photo of a handwritten {digit}.",
        "a handwritten digit {name}.",
        "a photo of the number {name}.",
        "the number {digit}, written by hand.",
    ),
    "uci": (
        "a low-resolution scan of a handwritten {name}.",
        "a blocky scan of the digit {digit}.",
        "a pixelated handwritten {name}.",
        "a photo of the number {name}.",
        "a coarse scan of a handwritten {digit}.",
    ),
    "rendered": (
        "a printed {digit}.",
        "the digit {name} in a {style} font.",
        "a typed number {name}.",
        "a photo of the number {name}.",
        "the numeral {digit} in print.",
    ),
    "corrupted": (
        "a {adjective} photo of the number {name}.",
        "a {adjective} handwritten {digit}.",
        "a {adjective} image of the digit {name}.",
        "a photo of the number {name}.",
    ),
}

_CORRUPTION_ADJECTIVES = {
    "gaussian_noise": ("noisy", "grainy"),
    "impulse_noise": ("speckled", "noisy"),
    "gaussian_blur": ("blurry", "out-of-focus"),
    "contrast": ("faded", "low-contrast"),
    "pixelate": ("pixelated", "low-resolution"),
}


def _font_style(font_name: str) -> str:
    lowered = font_name.lower()
    if "mono" in lowered or "tt10" in lowered:
        return "monospace"
    if "bol" in lowered or lowered == "cmb10":
        return "bold"
    if "ita" in lowered or "oblique" in lowered or "ti10" in lowered:
        return "italic"
    if "serif" in lowered or "stix" in lowered or lowered == "cmr10":
        return "serif"
    return "sans-serif"


def pretrain_caption(label: int, domain: str, detail: str, rng: np.random.Generator) -> str:
    """One caption for a pretraining image, drawn from its domain's templates.

    ``detail`` is the font name for rendered digits and the corruption name for corrupted ones.
    """
    template = _DOMAIN_TEMPLATES[domain][int(rng.integers(len(_DOMAIN_TEMPLATES[domain])))]
    fields = {"name": DIGIT_NAMES[label], "digit": str(label)}
    if domain == "rendered":
        fields["style"] = _font_style(detail)
    if domain == "corrupted":
        adjectives = _CORRUPTION_ADJECTIVES[detail]
        fields["adjective"] = adjectives[int(rng.integers(len(adjectives)))]
    return template.format(**fields)
