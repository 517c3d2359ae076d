"""The data value objects: a split (``ImageSet``), a dataset (``Dataset``), ``DataError``,
the canonical class lists, and the builders every source ends in."""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

DATASETS = ("cifar10", "cifar100", "synthetic")

CIFAR10_CLASSES = (
    "airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck",
)
# torchvision's order: the ``fine_label_names`` of the CIFAR-100 meta file, which is alphabetical.
CIFAR100_CLASSES = (
    "apple", "aquarium_fish", "baby", "bear", "beaver", "bed", "bee", "beetle", "bicycle",
    "bottle", "bowl", "boy", "bridge", "bus", "butterfly", "camel", "can", "castle",
    "caterpillar", "cattle", "chair", "chimpanzee", "clock", "cloud", "cockroach", "couch",
    "crab", "crocodile", "cup", "dinosaur", "dolphin", "elephant", "flatfish", "forest", "fox",
    "girl", "hamster", "house", "kangaroo", "keyboard", "lamp", "lawn_mower", "leopard", "lion",
    "lizard", "lobster", "man", "maple_tree", "motorcycle", "mountain", "mouse", "mushroom",
    "oak_tree", "orange", "orchid", "otter", "palm_tree", "pear", "pickup_truck", "pine_tree",
    "plain", "plate", "poppy", "porcupine", "possum", "rabbit", "raccoon", "ray", "road",
    "rocket", "rose", "sea", "seal", "shark", "shrew", "skunk", "skyscraper", "snail", "snake",
    "spider", "squirrel", "streetcar", "sunflower", "sweet_pepper", "table", "tank",
    "telephone", "television", "tiger", "tractor", "train", "trout", "tulip", "turtle",
    "wardrobe", "whale", "willow_tree", "wolf", "woman", "worm",
)
_CANONICAL_CLASSES = {"cifar10": CIFAR10_CLASSES, "cifar100": CIFAR100_CLASSES}
_TORCHVISION_FOLDERS = {"cifar10": "cifar-10-batches-py", "cifar100": "cifar-100-python"}
_IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
_ARCHIVE_SUFFIXES = (".tar.gz", ".tgz", ".tar")
_SPLITS = ("train", "test")
# Bump when the cached arrays' meaning changes (order, stats, ...), so old caches are not reused.
_CACHE_VERSION = 1
# Fixed seed of the storage order of decoded ImageFolder data (see _decode_split).
_STORAGE_ORDER_SEED = 0

_LAYOUT_HELP = (
    "Accepted layouts: (1) a torchvision CIFAR folder ('cifar-10-batches-py' / "
    "'cifar-100-python') or the folder that contains it; (2) an ImageFolder directory with "
    "train/<class>/*.jpg|png and test/<class>/*.jpg|png, or a folder holding one such directory; "
    "(3) a .tar.gz / .tgz / .tar archive of such an ImageFolder directory."
)


class DataError(ValueError):
    """A data problem the user can fix: the message says what was wrong, what is accepted and
    what to do (usually: pass --data-root PATH)."""


# --------------------------------------------------------------------------- value objects


@dataclass(frozen=True, eq=False)
class ImageSet:
    """Images and labels of one split, kept together so indexing can never misalign them.

    ``images`` is uint8 (N, 3, H, W), contiguous; ``labels`` int64 (N,), on the same device.
    ``eq=False``: tensors have no boolean equality, so sets compare by identity.
    """

    images: torch.Tensor
    labels: torch.Tensor
    classes: tuple[str, ...]

    def __post_init__(self) -> None:
        images, labels = self.images, self.labels
        if not isinstance(images, torch.Tensor) or images.dtype != torch.uint8 or images.dim() != 4 \
                or images.shape[1] != 3:
            raise DataError(f"ImageSet.images must be a uint8 tensor (N, 3, H, W), got "
                            f"{getattr(images, 'dtype', type(images))} {tuple(getattr(images, 'shape', ()))}")
        if not isinstance(labels, torch.Tensor) or labels.dtype != torch.int64 or labels.dim() != 1:
            raise DataError(f"ImageSet.labels must be an int64 tensor (N,), got "
                            f"{getattr(labels, 'dtype', type(labels))} {tuple(getattr(labels, 'shape', ()))}")
        if len(labels) != len(images):
            raise DataError(f"ImageSet has {len(images)} images but {len(labels)} labels")
        if labels.device != images.device:
            raise DataError(f"ImageSet images on {images.device} but labels on {labels.device}")
        if not images.is_contiguous():
            object.__setattr__(self, "images", images.contiguous())
        object.__setattr__(self, "classes", tuple(str(c) for c in self.classes))

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def device(self) -> torch.device:
        return self.images.device

    def to(self, device: torch.device | str) -> ImageSet:
        """The same set on ``device`` (no copy when it is already there)."""
        return ImageSet(self.images.to(device), self.labels.to(device), self.classes)

    def subset(self, indices: torch.Tensor) -> ImageSet:
        """The images at ``indices`` (int64 positions, or a boolean mask of length N)."""
        indices = torch.as_tensor(indices, device=self.images.device)
        if indices.dtype == torch.bool:
            indices = indices.nonzero().flatten()
        indices = indices.to(torch.int64)
        return ImageSet(self.images.index_select(0, indices), self.labels.index_select(0, indices),
                        self.classes)


@dataclass(frozen=True, eq=False)
class Dataset:
    """A train and a test split plus what is needed to normalise them and to cite the source.

    ``mean``/``std`` are per channel on the [0, 1] scale, computed from the train images.
    ``from_cache`` is True when the arrays were read from this module's decode cache instead of
    being decoded (or generated) now — the observable cache hit.
    """

    name: str
    train: ImageSet
    test: ImageSet
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    source: str
    from_cache: bool = False

    def __post_init__(self) -> None:
        if self.train.classes != self.test.classes:
            raise DataError(f"{self.name}: train and test classes differ "
                            f"({self.train.classes} vs {self.test.classes})")
        if len(self.mean) != 3 or len(self.std) != 3:
            raise DataError(f"{self.name}: mean and std need 3 channels, got {self.mean}, {self.std}")

    @property
    def num_classes(self) -> int:
        return self.train.num_classes


def _channel_stats(images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Exact per-channel mean and std on [0, 1], from a 256-bin histogram (no float copy of N images)."""
    levels = np.arange(256, dtype=np.float64) / 255.0
    means, stds = [], []
    for channel in range(images.shape[1]):
        hist = np.bincount(images[:, channel].ravel(), minlength=256).astype(np.float64)
        total = hist.sum()
        mean = (hist * levels).sum() / total
        var = max((hist * levels**2).sum() / total - mean**2, 0.0)
        means.append(mean)
        stds.append(math.sqrt(var))
    return np.array(means), np.array(stds)



def _dataset_from_arrays(name: str, arrays: dict[str, np.ndarray], source: str, from_cache: bool) -> Dataset:
    """Wrap the cached/decoded numpy arrays as a Dataset (zero-copy into torch)."""
    classes = tuple(str(c) for c in arrays["classes"])

    def image_set(split: str) -> ImageSet:
        return ImageSet(torch.from_numpy(arrays[f"{split}_images"]),
                        torch.from_numpy(arrays[f"{split}_labels"].astype(np.int64)), classes)

    return Dataset(name, image_set("train"), image_set("test"),
                   mean=tuple(float(m) for m in arrays["mean"]),  # type: ignore[arg-type]
                   std=tuple(float(s) for s in arrays["std"]),  # type: ignore[arg-type]
                   source=source, from_cache=from_cache)


def _make_dataset(name: str, train: tuple[np.ndarray, np.ndarray], test: tuple[np.ndarray, np.ndarray],
                  classes: tuple[str, ...], source: str) -> Dataset:
    """A Dataset from (images, labels) numpy pairs, with mean/std computed from the train images."""
    mean, std = _channel_stats(train[0])
    arrays = {"train_images": train[0], "train_labels": train[1], "test_images": test[0],
              "test_labels": test[1], "classes": np.array(classes), "mean": mean, "std": std}
    return _dataset_from_arrays(name, arrays, source, from_cache=False)

