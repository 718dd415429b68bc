"""An in-memory image set served item by item, as a set read from files is: training then goes through
``LoaderBatches`` (a DataLoader) instead of slicing tensors."""

from __future__ import annotations

from torch.utils.data import Dataset

from harness.data import ImageSet


class ItemByItem(Dataset):
    """The images of an ``ImageSet`` one at a time, with its labels (not an ``ImageSet`` itself)."""

    def __init__(self, images: ImageSet):
        self.images, self.labels = images, images.labels

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int):
        return self.images[index]
