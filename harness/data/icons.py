"""Icon glyphs from the icon fonts that install with qtawesome: six families by different designers.

qtawesome (a pip package; only its font files and their JSON charmaps are read, its Qt code is never
imported) ships Material Design Icons, Font Awesome, Phosphor, Remix Icon, Microsoft's Codicons and
Elusive Icons. Each family draws the same everyday concepts (a house, a heart, a key) in its own
design, which makes one family against another a real distribution shift: other designers, other
stroke weights, other conventions, the same classes.

A class is found in a family by the glyph names that start with the family's word for it
(``CLASS_STEMS``: Material says ``home``, Font Awesome ``house``, Remix ``notification`` for a
bell), so a family's variants (outlined, filled, bold, with a badge) are all members; struck-
through variants (``-off``, ``-slash``) and the few names that draw something else
(``EXCLUDED``) are left out.
"""

from __future__ import annotations

import importlib.util
import json
import re
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import numpy as np
from PIL import Image, ImageFont

from harness.core.errors import ConfigError
from harness.data.sources import draw_text, frame_digit

PACKAGE = "qtawesome"


@dataclass(frozen=True)
class IconFamily:
    """One designer's icon set: its fonts (a file and its charmap each) and its licence."""

    name: str
    fonts: tuple[tuple[str, str], ...]  # (font file, charmap file) in qtawesome's fonts folder
    designer: str
    licence: str


FAMILIES: dict[str, IconFamily] = {family.name: family for family in (
    IconFamily("material", (("materialdesignicons6-webfont-6.9.96.ttf", "materialdesignicons6-webfont-charmap-6.9.96.json"),),
               "Pictogrammers (Material Design Icons 6.9.96)", "Apache-2.0"),
    IconFamily("fontawesome", (("fontawesome6-solid-webfont-6.7.2.ttf", "fontawesome6-solid-webfont-charmap-6.7.2.json"),
                               ("fontawesome6-regular-webfont-6.7.2.ttf", "fontawesome6-regular-webfont-charmap-6.7.2.json")),
               "Fonticons (Font Awesome Free 6.7.2, solid and regular)", "SIL OFL 1.1 (fonts), CC BY 4.0 (icons)"),
    IconFamily("phosphor", (("phosphor-1.3.0.ttf", "phosphor-charmap-1.3.0.json"),),
               "Helena Zhang and Tobias Fried (Phosphor 1.3.0)", "MIT"),
    IconFamily("remix", (("remixicon-2.5.0.ttf", "remixicon-charmap-2.5.0.json"),),
               "Remix Design (Remix Icon 2.5.0)", "Apache-2.0"),
    IconFamily("codicons", (("codicon-0.0.36.ttf", "codicon-charmap-0.0.36.json"),),
               "Microsoft (Codicons 0.0.36)", "CC BY 4.0"),
    IconFamily("elusive", (("elusiveicons-webfont-2.0.ttf", "elusiveicons-webfont-charmap-2.0.json"),),
               "Aristeides Stathopoulos (Elusive Icons 2.0)", "SIL OFL 1.1"),
)}

# Each class's word in each family's glyph names (several words: any of them).
CLASS_STEMS: dict[str, dict[str, tuple[str, ...]]] = {
    "house": {"material": ("home",), "fontawesome": ("house",), "phosphor": ("house",), "remix": ("home",),
              "codicons": ("home",), "elusive": ("home",)},
    "heart": {family: ("heart",) for family in FAMILIES},
    "star": {family: ("star",) for family in FAMILIES},
    "bell": {"material": ("bell",), "fontawesome": ("bell",), "phosphor": ("bell",), "remix": ("notification",),
             "codicons": ("bell",), "elusive": ("bell",)},
    "camera": {family: ("camera",) for family in FAMILIES},
    "padlock": {family: ("lock",) for family in FAMILIES},
    "envelope": {"material": ("email",), "fontawesome": ("envelope",), "phosphor": ("envelope",), "remix": ("mail",),
                 "codicons": ("mail",), "elusive": ("envelope",)},
    "cloud": {family: ("cloud",) for family in FAMILIES},
    "folder": {family: ("folder",) for family in FAMILIES},
    "key": {family: ("key",) for family in FAMILIES},
    "airplane": {"material": ("airplane",), "fontawesome": ("plane",), "phosphor": ("airplane",),
                 "remix": ("plane", "flight"), "codicons": (), "elusive": ("plane",)},
    "person": {"material": ("account",), "fontawesome": ("user",), "phosphor": ("user",), "remix": ("user",),
               "codicons": ("person", "account"), "elusive": ("user", "person")},
}
CLASSNAMES = tuple(CLASS_STEMS)

# Struck-through variants draw the class crossed out; these names draw something else.
_STRUCK = re.compile(r"(^|-)(off|slash)(-|$)")
EXCLUDED = {
    "material": {"camera-iris", "home-assistant", "key-wireless", "key-variant", "account-tie-voice"},
    "phosphor": {"key-return", "key-return-bold", "key-return-fill", "key-return-light", "key-return-thin"},
    "remix": {"notification-badge-fill", "notification-badge-line", "camera-lens-fill", "camera-lens-line",
              "mail-volume-fill", "mail-volume-line"},
    "codicons": {"folder-library", "key"},  # a stack of books; the keyboard's key
}


@dataclass(frozen=True, order=True)
class Glyph:
    """One drawing: its family, its name in the family's charmap, and the font file that draws it."""

    family: str
    name: str
    font: str
    codepoint: int

    @property
    def source(self) -> str:
        """A unique id of the drawing (what splits are disjoint by)."""
        return f"{self.family}:{Path(self.font).stem}:{self.name}"

    @property
    def words(self) -> str:
        """The glyph's name as words, style and numbering dropped: ``arrow-left-bold`` -> ``arrow left``."""
        kept = [w for w in self.name.split("-") if w not in _STYLE_WORDS and not w.isdigit()]
        return " ".join(kept) or self.name


_STYLE_WORDS = {"fill", "line", "outline", "bold", "light", "thin", "duotone", "variant", "alt", "o", "s"}


def fonts_folder() -> Path:
    """qtawesome's fonts folder, found without importing qtawesome (which would need a Qt binding)."""
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError("iconshift needs the icon fonts of qtawesome, which is not installed: pip install qtawesome")
    return Path(list(spec.submodule_search_locations)[0]) / "fonts"


@cache
def family_glyphs(family: str) -> tuple[Glyph, ...]:
    """Every glyph of ``family``, sorted by (font, name)."""
    folder = fonts_folder()
    glyphs = []
    for font, charmap in FAMILIES[family].fonts:
        codes = json.loads((folder / charmap).read_text())
        glyphs += [Glyph(family, name, font, int(code, 16) if isinstance(code, str) else int(code))
                   for name, code in codes.items()]
    return tuple(sorted(glyphs, key=lambda g: (g.font, g.name)))


def _member(name: str, stems: tuple[str, ...]) -> bool:
    return any(name == stem or name.startswith(stem + "-") for stem in stems)


def class_glyphs(family: str, classname: str) -> tuple[Glyph, ...]:
    """The glyphs of ``family`` that draw ``classname`` (see ``CLASS_STEMS``)."""
    stems = CLASS_STEMS[classname][family]
    excluded = EXCLUDED.get(family, set())
    return tuple(g for g in family_glyphs(family)
                 if _member(g.name, stems) and not _STRUCK.search(g.name) and g.name not in excluded)


def other_glyphs(family: str) -> tuple[Glyph, ...]:
    """The glyphs of ``family`` whose names mention no class in any family's words (safe to caption by name)."""
    every_stem = {stem for per_family in CLASS_STEMS.values() for stems in per_family.values() for stem in stems}
    return tuple(g for g in family_glyphs(family) if not every_stem & set(g.name.split("-")))


class GlyphRenderer:
    """Draws glyphs into 32x32 white-on-black frames with a random size, rotation and offset."""

    POINT = 48

    def __init__(self):
        self._fonts: dict[str, ImageFont.FreeTypeFont] = {}
        self._folder = fonts_folder()

    def _font(self, file: str) -> ImageFont.FreeTypeFont:
        if file not in self._fonts:
            self._fonts[file] = ImageFont.truetype(str(self._folder / file), self.POINT)
        return self._fonts[file]

    def render(self, glyph: Glyph, rng: np.random.Generator) -> np.ndarray:
        drawn = Image.fromarray(draw_text(self._font(glyph.font), chr(glyph.codepoint)))
        rotated = np.asarray(drawn.rotate(float(rng.uniform(-10, 10)), resample=Image.BILINEAR, expand=True))
        size = int(rng.integers(20, 29))
        offset = (int(rng.integers(-2, 3)), int(rng.integers(-2, 3)))
        return frame_digit(rotated, size=size, offset=offset)
