"""Datasets as in-memory uint8 tensors, augmentation on the device, and NAS-Bench-201 splits.

Why this shape: CIFAR-sized data fits in memory many times over, so a whole split lives in one
``uint8`` tensor on the training device. Batching, random crops and flips are then a few
vectorised tensor ops per batch (no ``DataLoader``, no per-image Python), and every random draw
comes from one seeded ``torch.Generator`` whose state is checkpointed with the trial.

Sources (``load_dataset``):

* a torchvision CIFAR root: the ``cifar-10-batches-py`` / ``cifar-100-python`` folder or the
  folder that contains it (``download=True`` lets torchvision fetch it);
* an ImageFolder layout ``{train,test}/<class>/*.jpg|png`` as a directory (or a folder holding
  exactly one such directory) or as a ``.tar`` / ``.tar.gz`` / ``.tgz`` archive of one;
* ``synthetic``: generated from a seed, no files.

ImageFolder sources are decoded once and cached as one ``.npz`` per source under
``<cache_dir>/datasets``, keyed by a hash of the source's absolute path, size and mtime (for a
directory: of every image file). ``Dataset.from_cache`` says whether a load was a cache hit.
This module must not import ray: methods, benchmarks and tests import it too.
"""
from __future__ import annotations

import hashlib
import io
import math
import os
import posixpath
import tarfile
import tempfile
import warnings
import zipfile
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

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


# --------------------------------------------------------------------------- loading


def default_cache_dir() -> Path:
    """``$NAS_HARNESS_CACHE``, else ``$XDG_CACHE_HOME/nas-harness``, else ``~/.cache/nas-harness``."""
    explicit = os.environ.get("NAS_HARNESS_CACHE")
    if explicit:
        return Path(explicit).expanduser().resolve()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return (base / "nas-harness").resolve()


def load_dataset(name: str, root: str | Path | None = None, *, cache_dir: str | Path | None = None,
                 download: bool = False, synthetic_train: int = 1000, synthetic_test: int = 200,
                 seed: int = 0) -> Dataset:
    """Load ``name`` from ``root`` (see the module docstring for the accepted layouts).

    ``root=None`` means the torchvision folder ``<cache_dir>/torchvision``. ``synthetic`` ignores
    ``root`` and ``download`` and uses ``synthetic_train``/``synthetic_test``/``seed``.
    """
    if name not in DATASETS:
        raise DataError(f"unknown dataset {name!r}; choose one of: {', '.join(DATASETS)}")
    if name == "synthetic":
        return synthetic_dataset(synthetic_train, synthetic_test, seed=seed)
    cache = Path(cache_dir).expanduser().resolve() if cache_dir is not None else default_cache_dir()
    if root is None:
        return _load_torchvision(name, cache / "torchvision", download, default_root=True)
    kind, path = _resolve_source(name, Path(root).expanduser().resolve(), download)
    if kind == "torchvision":
        return _load_torchvision(name, path, download)
    return _load_imagefolder(name, path, kind, cache)


def _resolve_source(name: str, root: Path, download: bool) -> tuple[str, Path]:
    """Which layout ``root`` holds: ('torchvision', dir), ('folder', dir) or ('archive', file)."""
    base_folder = _TORCHVISION_FOLDERS[name]
    if root.is_file():
        if root.name.lower().endswith(_ARCHIVE_SUFFIXES):
            return "archive", root
        raise DataError(f"data root {root} is a file but not a .tar.gz/.tgz/.tar archive. "
                        f"{_LAYOUT_HELP} Pass --data-root PATH.")
    if not root.exists():
        if download:
            return "torchvision", root
        raise DataError(f"data root {root} does not exist. {_LAYOUT_HELP} "
                        "Pass --data-root PATH to an existing copy, or allow the download.")
    if root.name == base_folder:
        return "torchvision", root.parent
    if (root / base_folder).is_dir():
        return "torchvision", root
    folder = _find_imagefolder_root(root)
    if folder is not None:
        return "folder", folder
    if download:
        return "torchvision", root
    raise DataError(_nothing_found_message(name, root))


def _nothing_found_message(name: str, root: Path) -> str:
    """Say what ``root`` holds, so the user sees why nothing matched (and any archive to pass)."""
    entries = sorted(p.name for p in root.iterdir())
    if not entries:
        found = "it is empty"
    else:
        found = "it contains: " + ", ".join(entries[:12]) + (" ..." if len(entries) > 12 else "")
    archives = [e for e in entries if e.lower().endswith(_ARCHIVE_SUFFIXES)]
    hint = f" To use an archive, pass its path, e.g. --data-root {root / archives[0]}." if archives else ""
    return (f"no {name} data found in {root} ({found}; expected '{_TORCHVISION_FOLDERS[name]}' "
            f"or train/ and test/ folders). {_LAYOUT_HELP}{hint} Pass --data-root PATH, "
            "or allow the download of the torchvision copy.")


def _find_imagefolder_root(root: Path) -> Path | None:
    """``root`` itself or its single child that has both train/ and test/ subfolders."""
    if all((root / split).is_dir() for split in _SPLITS):
        return root
    hits = sorted(child for child in root.iterdir()
                  if child.is_dir() and all((child / split).is_dir() for split in _SPLITS))
    if len(hits) > 1:
        raise DataError(f"{root} holds several ImageFolder datasets ({', '.join(h.name for h in hits)}); "
                        "pass the one you mean with --data-root PATH.")
    return hits[0] if hits else None


# ----- torchvision CIFAR


def _load_torchvision(name: str, root: Path, download: bool, default_root: bool = False) -> Dataset:
    """Read the pickled CIFAR batches through torchvision (already uint8, so no decode cache)."""
    from torchvision import datasets  # heavy import, only needed for this source

    base_folder = root / _TORCHVISION_FOLDERS[name]
    where = f"{root} (the default location, used when no --data-root is given)" if default_root else str(root)
    if not download and not base_folder.is_dir():
        raise DataError(f"{name} not found: no '{base_folder.name}' folder in {where}. {_LAYOUT_HELP} "
                        "Pass --data-root PATH, or allow the download of the torchvision copy.")
    cls = datasets.CIFAR10 if name == "cifar10" else datasets.CIFAR100
    splits = {}
    for split in _SPLITS:
        try:
            ds = cls(str(root), train=split == "train", download=download)
        except Exception as exc:  # torchvision raises RuntimeError/URLError/OSError variously
            if download:
                raise DataError(f"could not download {name} into {where}: {exc}. Without internet "
                                f"access pass --data-root PATH to a local copy. {_LAYOUT_HELP}") from exc
            raise DataError(f"{name} in {base_folder} is incomplete or corrupted ({exc}). Delete "
                            "that folder and download again, or pass --data-root PATH to another "
                            f"copy. {_LAYOUT_HELP}") from exc
        images = np.ascontiguousarray(np.asarray(ds.data, dtype=np.uint8).transpose(0, 3, 1, 2))
        labels = np.asarray(ds.targets, dtype=np.int64)
        splits[split] = (images, labels, tuple(ds.classes))
    classes = splits["train"][2]
    if classes != _CANONICAL_CLASSES[name]:
        raise DataError(f"{base_folder} has classes {classes}, not the canonical {name} classes; "
                        "pass --data-root PATH to a genuine copy.")
    return _make_dataset(name, splits["train"][:2], splits["test"][:2], classes,
                         source=f"torchvision:{base_folder}")


# ----- ImageFolder (directory or archive), decoded once and cached


def _load_imagefolder(name: str, path: Path, kind: str, cache_dir: Path) -> Dataset:
    """Decode an ImageFolder source, or read its arrays from the cache when it is unchanged."""
    description = f"imagefolder-{'archive' if kind == 'archive' else 'dir'}:{path}"
    cache_file = cache_dir / "datasets" / f"{name}-{_fingerprint(name, path)}.npz"
    cached = _read_cache(cache_file)
    if cached is not None:
        return _dataset_from_arrays(name, cached, description, from_cache=True)
    entries = _read_archive(path) if kind == "archive" else _read_directory(path)
    arrays = _decode_imagefolder(name, entries, path)
    _write_cache(cache_file, arrays)
    return _dataset_from_arrays(name, arrays, description, from_cache=False)


def _fingerprint(name: str, path: Path) -> str:
    """Hash of what identifies the source's content cheaply: path, size, mtime (per file for a dir)."""
    digest = hashlib.sha256(f"v{_CACHE_VERSION}|{name}|{path}".encode())
    if path.is_file():
        stat = path.stat()
        digest.update(f"|{stat.st_size}|{stat.st_mtime_ns}".encode())
    else:
        for split in _SPLITS:
            for dirpath, dirnames, filenames in os.walk(path / split):
                dirnames.sort()
                for filename in sorted(filenames):
                    stat = os.stat(os.path.join(dirpath, filename))
                    rel = os.path.relpath(os.path.join(dirpath, filename), path)
                    digest.update(f"|{rel}|{stat.st_size}|{stat.st_mtime_ns}".encode())
    return digest.hexdigest()[:20]


def _is_image_name(relpath: str) -> bool:
    """Image files by suffix; hidden files (e.g. macOS '._x.jpg' resource forks) are not images."""
    filename = relpath.rsplit("/", 1)[-1]
    return not filename.startswith(".") and filename.lower().endswith(_IMAGE_SUFFIXES)


def _read_archive(path: Path) -> dict[str, bytes]:
    """All image members' bytes in one streaming pass (no extraction to disk), keyed by name."""
    entries: dict[str, bytes] = {}
    try:
        with tarfile.open(path, "r:*") as archive:
            for member in archive:
                if member.isfile() and _is_image_name(member.name):
                    handle = archive.extractfile(member)
                    if handle is None:
                        raise DataError(f"cannot read member {member.name} of archive {path}")
                    entries[posixpath.normpath(member.name)] = handle.read()
    except (tarfile.TarError, OSError, EOFError, zlib.error) as exc:
        raise DataError(f"cannot read archive {path}: {exc}. Expected an uncorrupted .tar.gz/.tgz/.tar "
                        f"of an ImageFolder directory; re-copy it or pass --data-root PATH. "
                        f"{_LAYOUT_HELP}") from exc
    return entries


def _read_directory(root: Path) -> dict[str, bytes]:
    """All image files' bytes under ``root/{train,test}``, keyed by their path relative to root."""
    entries: dict[str, bytes] = {}
    for split in _SPLITS:
        for dirpath, _, filenames in os.walk(root / split):
            for filename in filenames:
                full = os.path.join(dirpath, filename)
                rel = os.path.relpath(full, root).replace(os.sep, "/")
                if _is_image_name(rel):
                    try:
                        entries[rel] = Path(full).read_bytes()
                    except OSError as exc:
                        raise DataError(f"cannot read image {full}: {exc}") from exc
    return entries


def _split_members(entries: dict[str, bytes], source: Path) -> dict[str, dict[str, list[str]]]:
    """Group member names as {split: {class: [names]}} under the one prefix that has both splits."""
    by_prefix: dict[str, dict[str, dict[str, list[str]]]] = {}
    for relpath in entries:
        parts = relpath.split("/")
        if len(parts) >= 3 and parts[-3] in _SPLITS:
            prefix = "/".join(parts[:-3])
            tree = by_prefix.setdefault(prefix, {})
            tree.setdefault(parts[-3], {}).setdefault(parts[-2], []).append(relpath)
    complete = {p: t for p, t in by_prefix.items() if all(s in t for s in _SPLITS)}
    if not complete:
        raise DataError(f"{source} holds no ImageFolder layout: no folder with both train/<class>/ "
                        f"and test/<class>/ image files (.jpg/.jpeg/.png). {_LAYOUT_HELP} "
                        "Pass --data-root PATH.")
    if len(complete) > 1:
        names = ", ".join(repr(p or ".") for p in sorted(complete))
        raise DataError(f"{source} holds several ImageFolder datasets ({names}); pass one of them "
                        "with --data-root PATH.")
    return next(iter(complete.values()))


def _class_order(name: str, found: set[str], split: str, source: Path) -> tuple[str, ...]:
    """The canonical label order for CIFAR (checked against the folders), else sorted names."""
    canonical = _CANONICAL_CLASSES.get(name)
    if canonical is None:
        return tuple(sorted(found))
    if found != set(canonical):
        missing = sorted(set(canonical) - found)
        extra = sorted(found - set(canonical))
        raise DataError(f"{source}: the {split}/ class folders are not the {len(canonical)} {name} "
                        f"classes (missing: {missing or 'none'}; unexpected: {extra or 'none'}). "
                        f"Pass --data-root PATH to a {name} copy, or choose the matching dataset name.")
    return canonical


def _decode_imagefolder(name: str, entries: dict[str, bytes], source: Path) -> dict[str, np.ndarray]:
    """Decode both splits into the arrays that are cached (images, labels, classes, mean, std)."""
    tree = _split_members(entries, source)
    classes = _class_order(name, set(tree["train"]), "train", source)
    test_classes = _class_order(name, set(tree["test"]), "test", source)
    if set(test_classes) != set(classes):
        raise DataError(f"{source}: train/ and test/ have different class folders "
                        f"({sorted(classes)} vs {sorted(test_classes)}).")
    arrays: dict[str, np.ndarray] = {"classes": np.array(classes)}
    shape: tuple[int, int] | None = None
    for split in _SPLITS:
        images, labels, shape = _decode_split(tree[split], classes, entries, source, shape)
        arrays[f"{split}_images"], arrays[f"{split}_labels"] = images, labels
    arrays["mean"], arrays["std"] = _channel_stats(arrays["train_images"])
    return arrays


def _decode_split(members: dict[str, list[str]], classes: tuple[str, ...], entries: dict[str, bytes],
                  source: Path, shape: tuple[int, int] | None
                  ) -> tuple[np.ndarray, np.ndarray, tuple[int, int]]:
    """Decode one split with Pillow into (N, 3, H, W) uint8.

    Images are ordered by (class, file name) and then by a fixed permutation, so the stored
    order does not depend on the archive's member order and any prefix mixes the classes
    (a calibration batch taken from the front is not all airplanes).
    """
    from PIL import Image  # only the decode path needs Pillow

    ordered = [(label, relpath) for label, cls in enumerate(classes) for relpath in sorted(members[cls])]
    images: np.ndarray | None = None
    labels = np.empty(len(ordered), dtype=np.int64)
    for i, (label, relpath) in enumerate(ordered):
        try:
            with Image.open(io.BytesIO(entries[relpath])) as image:
                pixels = np.asarray(image.convert("RGB"))
        except Exception as exc:  # Pillow raises OSError, SyntaxError, ValueError, ... for bad files
            raise DataError(f"cannot decode image {relpath} in {source}: {exc}. Replace or remove "
                            "that file, or pass --data-root PATH to an intact copy.") from exc
        if shape is None:
            shape = pixels.shape[:2]
        if pixels.shape[:2] != shape:
            raise DataError(f"image {relpath} in {source} is {pixels.shape[1]}x{pixels.shape[0]}, but "
                            f"the others are {shape[1]}x{shape[0]}; all images must share one size.")
        if images is None:
            images = np.empty((len(ordered), 3, *shape), dtype=np.uint8)
        images[i] = pixels.transpose(2, 0, 1)
        labels[i] = label
    assert images is not None and shape is not None  # _split_members guarantees files
    order = np.random.default_rng(_STORAGE_ORDER_SEED).permutation(len(ordered))
    return np.ascontiguousarray(images[order]), labels[order], shape


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


def _read_cache(path: Path) -> dict[str, np.ndarray] | None:
    """The cached arrays, or None on a miss; a damaged cache file is reported and rebuilt."""
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as npz:
            arrays = {key: npz[key] for key in npz.files}
        _check_arrays(arrays)
        return arrays
    except (OSError, ValueError, KeyError, zipfile.BadZipFile, EOFError) as exc:
        warnings.warn(f"ignoring damaged data cache {path} ({exc}); decoding again", stacklevel=3)
        return None


def _check_arrays(arrays: dict[str, np.ndarray]) -> None:
    """Raise ValueError if cached arrays are not what _decode_imagefolder writes."""
    for split in _SPLITS:
        images, labels = arrays[f"{split}_images"], arrays[f"{split}_labels"]
        if images.dtype != np.uint8 or images.ndim != 4 or labels.shape != (len(images),):
            raise ValueError(f"unexpected {split} arrays {images.dtype} {images.shape} / {labels.shape}")
    if arrays["mean"].shape != (3,) or arrays["std"].shape != (3,):
        raise ValueError("mean/std must have 3 channels")


def _write_cache(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """Write atomically (temp file + rename) so concurrent trials never read half a file.

    A cache that cannot be written only costs time, so it warns instead of failing the load.
    """
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as handle:
                np.savez(handle, **arrays)  # type: ignore[arg-type]  # numpy stubs: allow_pickle clash
            os.replace(tmp, path)
        except BaseException:
            os.unlink(tmp)
            raise
    except OSError as exc:
        warnings.warn(f"could not write the data cache {path} ({exc}); the next load decodes again. "
                      "Set NAS_HARNESS_CACHE or --cache-dir to a writable folder.", stacklevel=3)


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


# --------------------------------------------------------------------------- synthetic data


def synthetic_dataset(n_train: int = 1000, n_test: int = 200, num_classes: int = 10, seed: int = 0,
                      image_size: int = 32) -> Dataset:
    """A learnable dataset from a seed alone: for tests and smoke runs without files.

    Each class has its own smooth random colour pattern (4x4 noise upsampled), made mirror
    symmetric so horizontal flips keep the label and smooth so 4-pixel crops barely change it;
    every image adds a per-image colour shift and per-pixel noise. Same arguments, same tensors.
    """
    for arg, value, low in (("n_train", n_train, 1), ("n_test", n_test, 1),
                            ("num_classes", num_classes, 2), ("image_size", image_size, 4)):
        if value < low:
            raise DataError(f"synthetic_dataset: {arg} must be >= {low}, got {value}")
    generator = torch.Generator().manual_seed(seed)
    coarse = torch.rand(num_classes, 3, 4, 4, generator=generator)
    coarse = torch.maximum(coarse, coarse.flip(-1))  # mirror symmetric, keeps the full contrast
    templates = torch.nn.functional.interpolate(coarse, size=(image_size, image_size),
                                                mode="bilinear", align_corners=False)
    splits = [_synthetic_split(templates, n, generator) for n in (n_train, n_test)]
    classes = tuple(f"class_{i}" for i in range(num_classes))
    source = (f"synthetic(seed={seed}, n_train={n_train}, n_test={n_test}, "
              f"num_classes={num_classes}, image_size={image_size})")
    return _make_dataset("synthetic", splits[0], splits[1], classes, source)


def _synthetic_split(templates: torch.Tensor, n: int, generator: torch.Generator
                     ) -> tuple[np.ndarray, np.ndarray]:
    """``n`` noisy samples of the class templates, classes balanced and in shuffled order."""
    num_classes, _, size, _ = templates.shape
    labels = (torch.arange(n) % num_classes)[torch.randperm(n, generator=generator)]
    shift = 0.1 * torch.randn(n, 3, 1, 1, generator=generator)
    noise = 0.15 * torch.randn(n, 3, size, size, generator=generator)
    pixels = (templates[labels] + shift + noise).clamp(0, 1).mul(255).round().to(torch.uint8)
    return pixels.contiguous().numpy(), labels.numpy().astype(np.int64)


# --------------------------------------------------------------------------- splits


def search_split(train: ImageSet, seed: int, per_class: int | None = None) -> tuple[ImageSet, ImageSet]:
    """NAS-Bench-201 search split: two disjoint halves with exactly half of every class each.

    Seeded and deterministic. ``per_class`` caps each half at that many images per class (small
    budgets); a class with fewer keeps its full half, so one preset works for CIFAR-10 and
    CIFAR-100 — the halves' sizes, not the cap, are what to record. A class with an odd count
    leaves its one extra image out; a class with fewer than 2 images is an error.
    """
    if per_class is not None and per_class < 1:
        raise DataError(f"search_split: per_class must be >= 1 or None, got {per_class}")
    generator = torch.Generator().manual_seed(seed)
    labels = train.labels.cpu()
    first, second = [], []
    for label, name in enumerate(train.classes):
        members = (labels == label).nonzero().flatten()
        half = len(members) // 2
        if half == 0:
            raise DataError(f"search_split: class {name!r} has {len(members)} image(s) but needs at "
                            "least 2 (one per half); use more training data.")
        take = half if per_class is None else min(per_class, half)
        members = members[torch.randperm(len(members), generator=generator)]
        first.append(members[:take])
        second.append(members[half:half + take])
    return (train.subset(_shuffled(torch.cat(first), generator)),
            train.subset(_shuffled(torch.cat(second), generator)))


def stratified_subset(data: ImageSet, n: int, seed: int) -> ImageSet:
    """``n`` images keeping the class proportions (largest remainders get the leftover slots).

    Seeded; the result is in shuffled order so any prefix mixes the classes.
    """
    total = len(data)
    if not 1 <= n <= total:
        raise DataError(f"stratified_subset: n must be between 1 and {total} (the set's size), got {n}")
    generator = torch.Generator().manual_seed(seed)
    labels = data.labels.cpu()
    counts = torch.bincount(labels, minlength=data.num_classes)
    quota = counts * n // total
    remainder = counts * n % total
    extra = n - int(quota.sum())
    order = torch.sort(remainder, descending=True, stable=True).indices
    quota[order[:extra]] += 1
    picks = []
    for label in range(data.num_classes):
        members = (labels == label).nonzero().flatten()
        picks.append(members[torch.randperm(len(members), generator=generator)[: int(quota[label])]])
    return data.subset(_shuffled(torch.cat(picks), generator))


def _shuffled(indices: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    return indices[torch.randperm(len(indices), generator=generator)]


# --------------------------------------------------------------------------- augmentation


def augment(x_uint8: torch.Tensor, generator: torch.Generator, pad: int = 4) -> torch.Tensor:
    """Random crop (zero padding ``pad``) + horizontal flip of a batch, on its device, as uint8.

    Draws, in this order, the row offsets, the column offsets and the flip bits from
    ``generator`` (which must live on the batch's device).
    """
    _check_batch(x_uint8)
    if pad < 0:
        raise DataError(f"augment: pad must be >= 0, got {pad}")
    n = len(x_uint8)
    offsets = torch.randint(0, 2 * pad + 1, (2, n), generator=generator, device=x_uint8.device)
    flips = torch.randint(0, 2, (n,), generator=generator, device=x_uint8.device).bool()
    return _crop_flip(x_uint8, offsets[0], offsets[1], flips, pad)


def _crop_flip(x: torch.Tensor, rows0: torch.Tensor, cols0: torch.Tensor, flips: torch.Tensor,
               pad: int) -> torch.Tensor:
    """Crop each padded image at its own offset and mirror the flagged ones, in one gather.

    The flip is folded into the column index (a reversed window), so crop-then-flip costs one
    advanced-indexing op for the whole batch.
    """
    n, channels, height, width = x.shape
    padded = x.new_zeros((n, channels, height + 2 * pad, width + 2 * pad))
    padded[:, :, pad:pad + height, pad:pad + width] = x
    device = x.device
    rows = rows0[:, None] + torch.arange(height, device=device)  # (n, H)
    cols = cols0[:, None] + torch.arange(width, device=device)  # (n, W)
    cols = torch.where(flips[:, None], cols.flip(1), cols)
    batch = torch.arange(n, device=device)[:, None, None, None]
    channel = torch.arange(channels, device=device)[None, :, None, None]
    return padded[batch, channel, rows[:, None, :, None], cols[:, None, None, :]]


def normalize(x_uint8: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """float32 ``(x / 255 - mean) / std`` per channel, on x's device; (3,H,W) or (N,3,H,W)."""
    if x_uint8.dtype != torch.uint8:
        raise DataError(f"normalize expects uint8 images, got {x_uint8.dtype}")
    mean_t = torch.as_tensor(mean, dtype=torch.float32, device=x_uint8.device).view(-1, 1, 1)
    std_t = torch.as_tensor(std, dtype=torch.float32, device=x_uint8.device).view(-1, 1, 1)
    return (x_uint8.to(torch.float32).div_(255.0) - mean_t).div_(std_t)


def _check_batch(x: torch.Tensor) -> None:
    if x.dtype != torch.uint8 or x.dim() != 4:
        raise DataError(f"expected a uint8 batch (N, C, H, W), got {x.dtype} {tuple(x.shape)}")


def random_batch(data: ImageSet, n: int, seed: int, *, mean: Sequence[float], std: Sequence[float],
                 device: torch.device | str) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` images of ``data`` drawn uniformly without replacement with ``seed``, normalised.

    The one minibatch of a training-free proxy: the same seed gives the same images, whatever
    else was drawn before. Not augmented (the proxies' papers score unaugmented batches).
    """
    if not 1 <= n <= len(data):
        raise DataError(f"random_batch: n must be between 1 and {len(data)} (the set's size), got {n}")
    order = torch.randperm(len(data), generator=torch.Generator().manual_seed(seed))[:n]
    picked = data.subset(order).to(device)
    return normalize(picked.images, mean, std), picked.labels


# --------------------------------------------------------------------------- batching


class Batches:
    """Epochs of normalised (and optionally augmented) batches drawn on the device.

    Each ``iter()`` draws the whole epoch's randomness up front (order, crop offsets, flips),
    so the generator state after starting an epoch does not depend on how many of its batches
    were consumed: ``state_dict()`` taken at any point of an epoch makes a resumed run draw the
    next epoch bit for bit the same.
    """

    def __init__(self, data: ImageSet, batch_size: int, *, mean: Sequence[float], std: Sequence[float],
                 shuffle: bool = True, augment: bool = True, drop_last: bool = True, seed: int = 0,
                 device: torch.device | str = "cpu") -> None:
        if batch_size < 1:
            raise DataError(f"batch_size must be >= 1, got {batch_size}")
        if len(data) == 0:
            raise DataError("cannot batch an empty image set")
        if drop_last and len(data) < batch_size:
            raise DataError(f"batch_size {batch_size} exceeds the {len(data)} images and drop_last=True "
                            "would yield no batch; lower the batch size or use more images.")
        self.device = torch.device(device)
        self.data = data.to(self.device)
        self.batch_size = batch_size
        self.mean = tuple(float(m) for m in mean)
        self.std = tuple(float(s) for s in std)
        self.shuffle = shuffle
        self.augment = augment
        self.drop_last = drop_last
        self.pad = 4
        self.generator = torch.Generator(device=self.device)
        self.generator.manual_seed(seed)
        self.epochs = 0

    def __len__(self) -> int:
        n = len(self.data)
        return n // self.batch_size if self.drop_last else math.ceil(n / self.batch_size)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        order, rows0, cols0, flips = self._draw_epoch()
        self.epochs += 1
        return self._batches(order, rows0, cols0, flips)

    def _draw_epoch(self) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None, torch.Tensor | None]:
        """Every random number of one epoch, in a fixed order: permutation, rows, cols, flips."""
        n, device, generator = len(self.data), self.device, self.generator
        if self.shuffle:
            order = torch.randperm(n, generator=generator, device=device)
        else:
            order = torch.arange(n, device=device)
        if not self.augment:
            return order, None, None, None
        offsets = torch.randint(0, 2 * self.pad + 1, (2, n), generator=generator, device=device)
        flips = torch.randint(0, 2, (n,), generator=generator, device=device).bool()
        return order, offsets[0], offsets[1], flips

    def _batches(self, order: torch.Tensor, rows0: torch.Tensor | None, cols0: torch.Tensor | None,
                 flips: torch.Tensor | None) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        size = self.batch_size
        for start in range(0, len(self) * size, size):
            index = order[start:start + size]
            x = self.data.images[index]
            if rows0 is not None and cols0 is not None and flips is not None:
                window = slice(start, start + size)
                x = _crop_flip(x, rows0[window], cols0[window], flips[window], self.pad)
            yield normalize(x, self.mean, self.std), self.data.labels[index]

    def state_dict(self) -> dict:
        """The generator state (a CPU uint8 tensor) and epoch count; torch.save-able."""
        return {"generator": self.generator.get_state(), "epochs": self.epochs,
                "num_images": len(self.data)}

    def load_state_dict(self, state: dict) -> None:
        """Restore ``state_dict()`` output so the next epoch matches the saved run's."""
        missing = {"generator", "epochs", "num_images"} - set(state)
        if missing:
            raise DataError(f"Batches state is missing {sorted(missing)}; expected Batches.state_dict() output")
        if state["num_images"] != len(self.data):
            raise DataError(f"Batches state was saved for {state['num_images']} images, but this set "
                            f"has {len(self.data)}; resume with the same data and split.")
        try:
            self.generator.set_state(torch.as_tensor(state["generator"]).cpu())
        except RuntimeError as exc:
            raise DataError(f"cannot restore the batch generator on {self.device} ({exc}); resume on the "
                            "same device type the checkpoint was written on.") from exc
        self.epochs = int(state["epochs"])


def fixed_batches(data: ImageSet, batch_size: int, *, mean: Sequence[float], std: Sequence[float],
                  device: torch.device | str) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """All of ``data`` in order as normalised batches on ``device``, computed once.

    For BN calibration and validation sets, which are read many times unchanged; the last
    batch may be smaller.
    """
    if batch_size < 1:
        raise DataError(f"batch_size must be >= 1, got {batch_size}")
    data = data.to(device)
    return [(normalize(data.images[start:start + batch_size], mean, std),
             data.labels[start:start + batch_size])
            for start in range(0, len(data), batch_size)]
