"""Tiny trees in the on-disk layouts of ImageNet and its shifts (small generated images, a handful of classes)."""

from __future__ import annotations

import json
from pathlib import Path

from PIL import Image

from harness.data.imagenet import imagenet_wnids

WNIDS = imagenet_wnids()
PICK = [3, 17, 250, 981]  # ImageNet indices used by the tiny trees


def jpeg(path: Path, colour, size: int = 32, fmt: str = "JPEG") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (size, size), colour).save(path, fmt)


def tree(root: Path, folders, per_class: int = 2, suffix: str = ".JPEG") -> Path:
    for k, folder in enumerate(folders):
        for j in range(per_class):
            jpeg(root / str(folder) / f"img_{j}{suffix}", (20 * k % 256, 40 * j, 100))
    return root


def objectnet_release(parent: Path, border_colour=(255, 0, 0), size: int = 12) -> Path:
    """A fake ObjectNet release: 3 mapped folders (``chairs`` maps to two ImageNet ids, 17 and 250) + 1 unmapped."""
    root = parent / "objectnet-1.0"
    maps = root / "mappings"
    maps.mkdir(parents=True)
    # imagenet_to_label_2012_v2: one label per line, in an order different from the model's index order.
    line_labels = ["zeta thing", "alpha thing", "beta thing", "gamma thing"]
    (maps / "imagenet_to_label_2012_v2").write_text("\n".join(line_labels) + "\n")
    # pytorch_to_imagenet_2012_id.json: {model index: line}
    json.dump({"3": 1, "17": 2, "250": 3, "981": 0}, open(maps / "pytorch_to_imagenet_2012_id.json", "w"))
    json.dump({"bananas": "Banana", "chairs": "Chair", "mugs": "Mug", "zips": "Zipper"},
              open(maps / "folder_to_objectnet_label.json", "w"))
    json.dump({"Banana": "alpha thing", "Chair": "beta thing; gamma thing", "Mug": "zeta thing"},
              open(maps / "objectnet_to_imagenet_1k.json", "w"))
    for folder in ("bananas", "chairs", "mugs", "zips"):
        for j in range(2):
            image = Image.new("RGB", (size, size), border_colour)
            image.paste(Image.new("RGB", (size - 2, size - 2), (0, 40 * j, 200)), (1, 1))
            (root / "images" / folder).mkdir(parents=True, exist_ok=True)
            image.save(root / "images" / folder / f"{j}.png")  # the release's images are PNG
    return root


def imagenet_family(root: Path, train_per_class: int = 4) -> Path:
    """ImageNet train/val on the PICK classes, V2 (index folders), R (two of them) and ObjectNet; no -A, no Sketch."""
    wnids = [WNIDS[i] for i in PICK]
    tree(root / "imagenet" / "train", wnids, per_class=train_per_class)
    tree(root / "imagenet" / "val", wnids)
    tree(root / "imagenetv2-matched-frequency-format-val", PICK)
    tree(root / "imagenet-r", wnids[1:3], suffix=".jpg")
    objectnet_release(root)
    return root
