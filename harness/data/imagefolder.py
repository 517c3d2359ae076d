"""ImageFolder sources (a directory or an archive of ``{train,test}/<class>/*.jpg|png``),
decoded once with Pillow and cached as one ``.npz`` per source."""
from __future__ import annotations

import hashlib
import io
import os
import posixpath
import tarfile
import tempfile
import warnings
import zipfile
import zlib
from pathlib import Path

import numpy as np

from harness.data.values import (_CACHE_VERSION, _LAYOUT_HELP, _CANONICAL_CLASSES, _IMAGE_SUFFIXES, _SPLITS,
                                 _STORAGE_ORDER_SEED, DataError, Dataset, _channel_stats, _dataset_from_arrays)


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

