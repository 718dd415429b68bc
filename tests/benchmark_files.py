"""Small benchmark files on disk for the tests: RGB PNG and JPEG images of mixed sizes in class folders and a
CSV, with an OOD set that covers some classes only. ``write_benchmark`` returns the file and what it holds."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import yaml
from PIL import Image

CLASSES = ["cat", "dog", "bird"]
PARTIAL = ["dog", "cat"]  # the classes the "photos" OOD set covers (listed out of order on purpose)


@dataclass
class Written:
    file: Path
    root: Path
    sets: dict[str, list[tuple[str, str]]]  # split -> (path relative to the root, class name), as written


def _image(rng: np.random.Generator, label: int, path: Path) -> None:
    """A colour-coded image of a random size, saved as PNG or JPEG by its suffix."""
    width, height = (int(v) for v in rng.integers(12, 48, size=2))
    pixels = rng.integers(0, 80, size=(height, width, 3)).astype(np.uint8)
    pixels[..., label] += 160
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path)


def write_benchmark(root: Path, per_class: int = 6, seed: int = 0, **keys) -> Written:
    """Folders train/ and test/, a CSV sketch set (labels by name and by index) and a partial-class folder set."""
    rng = np.random.default_rng(seed)
    sets: dict[str, list[tuple[str, str]]] = {"train": [], "test": [], "sketch": [], "photos": []}
    sizes = {"train": per_class, "test": 3, "photos": 2}
    for split, count in sizes.items():
        for label, name in enumerate(CLASSES):
            if split == "photos" and name not in PARTIAL:
                continue
            for i in range(count):
                relative = f"{split}/{name}/{i}.{'png' if i % 2 else 'jpg'}"
                _image(rng, label, root / relative)
                sets[split].append((relative, name))
    rows = ["path,label"]
    for i in range(7):
        label = i % len(CLASSES)
        relative = f"sketches/s{i}.png"
        _image(rng, label, root / relative)
        rows.append(f"{relative},{CLASSES[label] if i % 2 else label}")
        sets["sketch"].append((relative, CLASSES[label]))
    (root / "sketch.csv").write_text("\n".join(rows) + "\n")
    spec = {
        "name": "toy", "classnames": CLASSES, "templates": ["a photo of a {}.", "a picture of a {}."],
        "splits": {"train": {"folder": "train"}, "test": {"folder": "test"},
                   "ood": {"sketch": {"csv": "sketch.csv"}, "photos": {"folder": "photos", "classes": PARTIAL}}},
        **keys,
    }
    file = root / "bench.yaml"
    file.write_text(yaml.safe_dump(spec, sort_keys=False))
    return Written(file, root, sets)
