"""Where a dataset comes from: ``load_dataset`` resolves a root to a torchvision CIFAR folder,
an ImageFolder source or synthetic data, and says what to do when it finds none."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from harness.data.imagefolder import _load_imagefolder
from harness.data.values import (_ARCHIVE_SUFFIXES, _CANONICAL_CLASSES, _LAYOUT_HELP, _SPLITS, _TORCHVISION_FOLDERS,
                                 DATASETS, DataError, Dataset, _make_dataset)


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

