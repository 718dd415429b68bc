"""Raw digit images from the three real sources that install with the project.

Every loader returns white-on-black uint8 arrays ``[N, H, W]`` plus int labels;
``frame_digit`` then puts each domain into one common 32x32 framing.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

FRAME = 32
DIGIT_SIZE = 24  # longer side of a framed digit, in pixels

# Fonts shipped by matplotlib whose code points 0-9 are not usable digit glyphs
# (math-extension / symbol fonts, size variants, fallback), from a manual check of every font
# matplotlib ships; ``usable_digit_fonts`` also checks the glyphs.
_EXCLUDED_FONT_PREFIXES = (
    "cmex10", "cmsy10", "cmmi10", "STIXSiz", "STIXNonUni", "DejaVuSansDisplay",
    "DejaVuSerifDisplay", "LastResort",
)


def load_mnist_sheet() -> tuple[np.ndarray, np.ndarray]:
    """The 5,000 MNIST digits of OpenCV's ``digits.png``: 50 rows x 100 columns of 20x20, class = row // 5."""
    path = resources.files("harness.data") / "assets" / "digits.png"
    with resources.as_file(path) as file:
        sheet = np.asarray(Image.open(file).convert("L"))
    if sheet.shape != (1000, 2000):
        raise RuntimeError(f"{path}: expected a 1000x2000 sheet, got {sheet.shape}")
    tiles = sheet.reshape(50, 20, 100, 20).transpose(0, 2, 1, 3).reshape(5000, 20, 20)
    labels = np.repeat(np.arange(10), 500)
    return np.ascontiguousarray(tiles), labels


def load_uci_digits() -> tuple[np.ndarray, np.ndarray]:
    """UCI optical digits (8x8, ink 0-16) from scikit-learn, rescaled to 0-255."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = np.round(digits.images * (255.0 / 16.0)).astype(np.uint8)
    return images, digits.target.astype(np.int64)


def frame_digit(image: np.ndarray, size: int = DIGIT_SIZE, offset: tuple[int, int] = (0, 0)) -> np.ndarray:
    """Crop a white-on-black digit to its ink, scale its longer side to ``size`` and centre it in 32x32."""
    ink = np.argwhere(image > 0.15 * image.max()) if image.max() > 0 else np.empty((0, 2), int)
    if len(ink) == 0:
        return np.zeros((FRAME, FRAME), np.uint8)
    (top, left), (bottom, right) = ink.min(0), ink.max(0) + 1
    crop = image[top:bottom, left:right]
    height, width = crop.shape
    scale = size / max(height, width)
    new_h, new_w = max(1, round(height * scale)), max(1, round(width * scale))
    resized = np.asarray(Image.fromarray(crop).resize((new_w, new_h), Image.BILINEAR))
    out = np.zeros((FRAME, FRAME), np.uint8)
    y = int(np.clip((FRAME - new_h) // 2 + offset[0], 0, FRAME - new_h))
    x = int(np.clip((FRAME - new_w) // 2 + offset[1], 0, FRAME - new_w))
    out[y : y + new_h, x : x + new_w] = resized
    return out


def frame_all(images: np.ndarray) -> np.ndarray:
    return np.stack([frame_digit(image) for image in images])


def draw_text(font: ImageFont.FreeTypeFont, text: str, stroke: int = 0) -> np.ndarray:
    """``text`` drawn white on black, cropped to its box plus a 2-pixel margin."""
    left, top, right, bottom = font.getbbox(text, stroke_width=stroke)
    canvas = Image.new("L", (right - left + 4, bottom - top + 4), 0)
    ImageDraw.Draw(canvas).text((2 - left, 2 - top), text, fill=255, font=font, stroke_width=stroke, stroke_fill=255)
    return np.asarray(canvas)


def usable_digit_fonts() -> list[Path]:
    """matplotlib's TrueType fonts that draw ten distinct, non-empty digit glyphs, sorted by name."""
    import matplotlib

    folder = Path(matplotlib.get_data_path()) / "fonts" / "ttf"
    usable = []
    for path in sorted(folder.glob("*.ttf")):
        if path.name.startswith(_EXCLUDED_FONT_PREFIXES):
            continue
        font = ImageFont.truetype(str(path), 48)
        glyphs = [frame_digit(draw_text(font, str(d))) for d in range(10)]
        distinct = len({g.tobytes() for g in glyphs}) == 10
        if distinct and all(g.max() > 0 for g in glyphs):
            usable.append(path)
    return usable


def render_digits(labels: np.ndarray, fonts: list[Path], rng: np.random.Generator) -> tuple[np.ndarray, list[str]]:
    """Render each label as a printed digit: random font, size, stroke width, rotation and offset."""
    cache: dict[tuple[int, int], ImageFont.FreeTypeFont] = {}
    images, font_names = [], []
    for label in labels:
        font_index = int(rng.integers(len(fonts)))
        point = int(rng.choice([28, 36, 48, 64]))
        if (font_index, point) not in cache:
            cache[font_index, point] = ImageFont.truetype(str(fonts[font_index]), point)
        font = cache[font_index, point]
        stroke = int(rng.integers(0, 3)) * max(1, point // 24)
        glyph = Image.fromarray(draw_text(font, str(int(label)), stroke))
        rotated = np.asarray(glyph.rotate(float(rng.uniform(-15, 15)), resample=Image.BILINEAR, expand=True))
        size = int(rng.integers(18, 27))
        offset = (int(rng.integers(-2, 3)), int(rng.integers(-2, 3)))
        images.append(frame_digit(rotated, size=size, offset=offset))
        font_names.append(fonts[font_index].stem)
    return np.stack(images), font_names
