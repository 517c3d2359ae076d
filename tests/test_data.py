"""harness.data: sources, the decode cache, splits, augmentation, batching, errors."""
from __future__ import annotations

import io
import pickle
import tarfile
import time
import urllib.error
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from harness import data as hd
from harness.data import batches as hd_batches
from harness.data import (
    CIFAR10_CLASSES,
    DATASETS,
    Batches,
    DataError,
    ImageSet,
    augment,
    default_cache_dir,
    fixed_batches,
    load_dataset,
    normalize,
    search_split,
    stratified_subset,
    synthetic_dataset,
)

README_MEAN = (0.4913, 0.4821, 0.4465)
README_STD = (0.2452, 0.2428, 0.2606)


# --------------------------------------------------------------------------- helpers


def _tiny_set(n: int = 40, num_classes: int = 4, size: int = 8, seed: int = 0) -> ImageSet:
    g = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (n, 3, size, size), generator=g, dtype=torch.uint8)
    labels = torch.arange(n) % num_classes
    return ImageSet(images, labels, tuple(f"c{i}" for i in range(num_classes)))


def _write_imagefolder(root: Path, per_class: int = 2, classes=CIFAR10_CLASSES) -> dict[str, int]:
    """Tiny PNG ImageFolder; returns {relative path: label} with a unique colour per file."""
    truth = {}
    k = 0
    for split in ("train", "test"):
        for label, cls in enumerate(classes):
            folder = root / split / cls
            folder.mkdir(parents=True)
            for i in range(per_class):
                k += 1
                pixels = np.full((8, 8, 3), (k % 256, k // 256, label), dtype=np.uint8)
                Image.fromarray(pixels).save(folder / f"{i}.png")
                truth[f"{split}/{cls}/{i}.png"] = label
    return truth


def _label_of(images: torch.Tensor, labels: torch.Tensor, image: np.ndarray) -> set[int]:
    """Labels of every stored image equal to ``image`` (H, W, 3)."""
    target = torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1)))
    hits = (images == target).flatten(1).all(1)
    return set(labels[hits].tolist())


# --------------------------------------------------------------------------- real archive


@pytest.fixture(scope="session")
def cifar10_real(cifar10_tgz, tmp_path_factory):
    """Decode the shared archive once per session into a private cache dir."""
    cache = tmp_path_factory.mktemp("data-cache")
    start = time.perf_counter()
    dataset = load_dataset("cifar10", cifar10_tgz, cache_dir=cache)
    return dataset, time.perf_counter() - start, cache


@pytest.mark.realdata
def test_real_archive_shapes_classes_and_stats(cifar10_real):
    dataset, seconds, _ = cifar10_real
    print(f"decoded the CIFAR-10 archive in {seconds:.1f} s")
    assert not dataset.from_cache
    assert dataset.name == "cifar10" and dataset.num_classes == 10
    assert dataset.train.classes == CIFAR10_CLASSES
    assert dataset.train.images.shape == (50_000, 3, 32, 32)
    assert dataset.test.images.shape == (10_000, 3, 32, 32)
    assert dataset.train.images.dtype == torch.uint8 and dataset.train.images.is_contiguous()
    assert dataset.train.labels.dtype == torch.int64
    assert torch.bincount(dataset.train.labels).tolist() == [5000] * 10
    assert torch.bincount(dataset.test.labels).tolist() == [1000] * 10
    assert np.allclose(dataset.mean, README_MEAN, atol=1e-3)
    assert np.allclose(dataset.std, README_STD, atol=1e-3)
    # stored order mixes classes: the first 100 images are not one class
    assert len(set(dataset.train.labels[:100].tolist())) == 10


@pytest.mark.realdata
def test_real_archive_labels_follow_folders(cifar10_real, cifar10_tgz):
    dataset, _, _ = cifar10_real
    wanted = {"cifar10-jpg/train/cat/0001.jpg": ("train", 3),
              "cifar10-jpg/train/airplane/0002.jpg": ("train", 0),
              "cifar10-jpg/test/ship/0000.jpg": ("test", 8)}
    found = {}
    with tarfile.open(cifar10_tgz) as archive:  # one streaming pass for all members
        for member in archive:
            if member.name in wanted:
                handle = archive.extractfile(member)
                assert handle is not None
                found[member.name] = np.asarray(Image.open(io.BytesIO(handle.read())).convert("RGB"))
    assert found.keys() == wanted.keys()
    for name, (split, label) in wanted.items():
        part = getattr(dataset, split)
        assert _label_of(part.images, part.labels, found[name]) == {label}, name


@pytest.mark.realdata
def test_real_archive_second_load_hits_cache(cifar10_real, cifar10_tgz):
    dataset, seconds, cache = cifar10_real
    again = load_dataset("cifar10", cifar10_tgz, cache_dir=cache)
    assert again.from_cache  # the observable cache hit (no timing: wall clocks are not asserted)
    assert torch.equal(again.train.images, dataset.train.images)
    assert torch.equal(again.test.labels, dataset.test.labels)
    assert again.mean == dataset.mean and again.source == dataset.source
    assert len(list((cache / "datasets").glob("*.npz"))) == 1
    assert not list((cache / "datasets").glob("*.tmp"))


@pytest.mark.realdata
def test_real_archive_search_split(cifar10_real):
    train = cifar10_real[0].train
    first, second = search_split(train, seed=0)
    assert torch.bincount(first.labels).tolist() == [2500] * 10
    assert torch.bincount(second.labels).tolist() == [2500] * 10


# --------------------------------------------------------------------------- ImageFolder sources


def test_imagefolder_directory_and_cache(tmp_path):
    root = tmp_path / "wrapper" / "cifar10-png"
    truth = _write_imagefolder(root)
    cache = tmp_path / "cache"
    # the folder holding the dataset folder is accepted too
    dataset = load_dataset("cifar10", tmp_path / "wrapper", cache_dir=cache)
    assert not dataset.from_cache and dataset.source.endswith(str(root))
    assert len(dataset.train) == 20 and len(dataset.test) == 20
    for rel, label in truth.items():
        split = rel.split("/")[0]
        pixels = np.asarray(Image.open(root / rel).convert("RGB"))
        part = getattr(dataset, split)
        assert _label_of(part.images, part.labels, pixels) == {label}, rel
    assert load_dataset("cifar10", root, cache_dir=cache).from_cache
    # touching a file changes the key: decoded again
    (root / "train" / "cat" / "0.png").touch()
    assert not load_dataset("cifar10", root, cache_dir=cache).from_cache


@pytest.mark.parametrize("suffix, mode", [(".tar.gz", "w:gz"), (".tgz", "w:gz"), (".tar", "w")])
def test_imagefolder_archive(tmp_path, suffix, mode):
    truth = _write_imagefolder(tmp_path / "src" / "top")
    archive = tmp_path / f"data{suffix}"
    with tarfile.open(archive, mode) as tar:
        tar.add(tmp_path / "src" / "top", arcname="top")
    dataset = load_dataset("cifar10", archive, cache_dir=tmp_path / "cache")
    assert dataset.train.classes == CIFAR10_CLASSES
    for rel, label in truth.items():
        split = rel.split("/")[0]
        pixels = np.asarray(Image.open(tmp_path / "src" / "top" / rel).convert("RGB"))
        part = getattr(dataset, split)
        assert _label_of(part.images, part.labels, pixels) == {label}, rel
    assert load_dataset("cifar10", archive, cache_dir=tmp_path / "cache").from_cache


def test_imagefolder_wrong_classes(tmp_path):
    _write_imagefolder(tmp_path / "d", classes=CIFAR10_CLASSES[:9] + ("zebra",))
    with pytest.raises(DataError, match="missing: \\['truck'\\].*unexpected: \\['zebra'\\]"):
        load_dataset("cifar10", tmp_path / "d", cache_dir=tmp_path / "cache")


def test_cifar100_class_order_is_torchvision_order():
    assert hd.CIFAR100_CLASSES == tuple(sorted(hd.CIFAR100_CLASSES))
    assert len(set(hd.CIFAR100_CLASSES)) == 100
    assert hd.CIFAR100_CLASSES[:2] == ("apple", "aquarium_fish")


# --------------------------------------------------------------------------- torchvision source


def _fake_torchvision_cifar10(root: Path, n_per_batch: int = 4) -> None:
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        entry = {"data": rng.integers(0, 256, (n_per_batch, 3072), dtype=np.uint8),
                 "labels": list(rng.integers(0, 10, n_per_batch))}
        (folder / name).write_bytes(pickle.dumps(entry))
    (folder / "batches.meta").write_bytes(pickle.dumps({"label_names": list(CIFAR10_CLASSES)}))


@pytest.fixture
def no_md5(monkeypatch):
    """Fake pickles have no genuine md5; skip torchvision's integrity checks."""
    import torchvision.datasets.cifar as cifar
    monkeypatch.setattr(cifar, "check_integrity", lambda *a, **k: True)


@pytest.mark.parametrize("sub", ["", "cifar-10-batches-py"])
def test_torchvision_root(tmp_path, no_md5, sub):
    _fake_torchvision_cifar10(tmp_path)
    dataset = load_dataset("cifar10", tmp_path / sub, cache_dir=tmp_path / "cache")
    assert len(dataset.train) == 20 and len(dataset.test) == 4
    assert dataset.train.images.shape[1:] == (3, 32, 32)
    assert dataset.train.classes == CIFAR10_CLASSES
    raw = pickle.loads((tmp_path / "cifar-10-batches-py" / "data_batch_1").read_bytes())
    assert torch.equal(dataset.train.images[0].flatten(), torch.from_numpy(raw["data"][0]))
    assert dataset.source.startswith("torchvision:")


def test_default_root_missing_without_download(tmp_path):
    with pytest.raises(DataError, match="(?s)cifar-10-batches-py.*--data-root.*download"):
        load_dataset("cifar10", None, cache_dir=tmp_path)


def test_download_failure_says_pass_data_root(tmp_path, monkeypatch):
    import torchvision.datasets.cifar as cifar

    def offline(*args, **kwargs):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(cifar, "download_and_extract_archive", offline)
    with pytest.raises(DataError, match="(?s)could not download.*--data-root"):
        load_dataset("cifar10", None, cache_dir=tmp_path, download=True)


# --------------------------------------------------------------------------- errors


def test_unknown_dataset_lists_choices():
    with pytest.raises(DataError, match="cifar10, cifar100, synthetic"):
        load_dataset("mnist")


def test_missing_root(tmp_path):
    missing = tmp_path / "nope"
    with pytest.raises(DataError, match="(?s)does not exist.*ImageFolder.*--data-root") as info:
        load_dataset("cifar10", missing, cache_dir=tmp_path)
    assert str(missing) in str(info.value)


def test_empty_root(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DataError, match="(?s)is empty.*cifar-10-batches-py.*tar.gz.*--data-root") as info:
        load_dataset("cifar10", empty, cache_dir=tmp_path)
    assert str(empty) in str(info.value)


def test_root_with_archive_suggests_it(tmp_path):
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "x.tar.gz").write_bytes(b"")
    with pytest.raises(DataError, match="pass its path"):
        load_dataset("cifar10", tmp_path / "d", cache_dir=tmp_path)


def test_corrupt_archive(tmp_path):
    bad = tmp_path / "bad.tar.gz"
    bad.write_bytes(b"this is not a gzip stream" * 100)
    with pytest.raises(DataError, match="cannot read archive") as info:
        load_dataset("cifar10", bad, cache_dir=tmp_path / "cache")
    assert str(bad) in str(info.value)


def test_truncated_archive(tmp_path):
    _write_imagefolder(tmp_path / "src")
    good = tmp_path / "good.tar.gz"
    with tarfile.open(good, "w:gz") as tar:
        tar.add(tmp_path / "src", arcname="src")
    cut = tmp_path / "cut.tar.gz"
    cut.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(DataError, match="cannot read archive"):
        load_dataset("cifar10", cut, cache_dir=tmp_path / "cache")


def test_corrupt_image_names_the_file(tmp_path):
    _write_imagefolder(tmp_path / "d")
    (tmp_path / "d" / "train" / "dog" / "1.png").write_bytes(b"\x89PNG garbage")
    with pytest.raises(DataError, match="train/dog/1.png"):
        load_dataset("cifar10", tmp_path / "d", cache_dir=tmp_path / "cache")


def test_corrupt_image_in_archive_names_the_member(tmp_path):
    _write_imagefolder(tmp_path / "d")
    (tmp_path / "d" / "test" / "frog" / "0.png").write_bytes(b"not an image")
    archive = tmp_path / "d.tgz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(tmp_path / "d", arcname="d")
    with pytest.raises(DataError, match="d/test/frog/0.png") as info:
        load_dataset("cifar10", archive, cache_dir=tmp_path / "cache")
    assert str(archive) in str(info.value)


def test_mixed_image_sizes_rejected(tmp_path):
    _write_imagefolder(tmp_path / "d")
    Image.fromarray(np.zeros((9, 9, 3), np.uint8)).save(tmp_path / "d" / "train" / "cat" / "0.png")
    with pytest.raises(DataError, match="train/cat/0.png.*9x9"):
        load_dataset("cifar10", tmp_path / "d", cache_dir=tmp_path / "cache")


def test_damaged_cache_is_rebuilt(tmp_path):
    _write_imagefolder(tmp_path / "d")
    cache = tmp_path / "cache"
    load_dataset("cifar10", tmp_path / "d", cache_dir=cache)
    (cache_file,) = (cache / "datasets").glob("*.npz")
    cache_file.write_bytes(b"broken")
    with pytest.warns(UserWarning, match="damaged data cache"):
        dataset = load_dataset("cifar10", tmp_path / "d", cache_dir=cache)
    assert not dataset.from_cache and len(dataset.train) == 20


def test_default_cache_dir(monkeypatch, tmp_path):
    monkeypatch.setenv("NAS_HARNESS_CACHE", str(tmp_path / "a"))
    assert default_cache_dir() == tmp_path / "a"
    monkeypatch.delenv("NAS_HARNESS_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert default_cache_dir() == tmp_path / "xdg" / "nas-harness"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert default_cache_dir() == (Path.home() / ".cache" / "nas-harness").resolve()


def test_imageset_validates():
    with pytest.raises(DataError, match="uint8"):
        ImageSet(torch.zeros(2, 3, 4, 4), torch.zeros(2, dtype=torch.int64), ("a",))
    with pytest.raises(DataError, match="2 images but 3 labels"):
        ImageSet(torch.zeros(2, 3, 4, 4, dtype=torch.uint8), torch.zeros(3, dtype=torch.int64), ("a",))


# --------------------------------------------------------------------------- splits


def test_search_split_stratified_disjoint_complete():
    data = _tiny_set(n=80, num_classes=4)
    first, second = search_split(data, seed=3)
    assert torch.bincount(first.labels).tolist() == [10] * 4
    assert torch.bincount(second.labels).tolist() == [10] * 4
    # images are unique random noise, so they identify their source rows
    rows = {img.numpy().tobytes(): i for i, img in enumerate(data.images)}
    a = {rows[img.numpy().tobytes()] for img in first.images}
    b = {rows[img.numpy().tobytes()] for img in second.images}
    assert not a & b and a | b == set(range(80))


def test_search_split_deterministic_in_seed():
    data = _tiny_set(n=80, num_classes=4)
    a1, b1 = search_split(data, seed=0)
    a2, b2 = search_split(data, seed=0)
    a3, _ = search_split(data, seed=1)
    assert torch.equal(a1.images, a2.images) and torch.equal(b1.images, b2.images)
    assert not torch.equal(a1.images, a3.images)


def test_search_split_per_class_cap_and_errors():
    data = _tiny_set(n=80, num_classes=4)
    first, second = search_split(data, seed=0, per_class=3)
    assert torch.bincount(first.labels).tolist() == [3] * 4
    assert torch.bincount(second.labels).tolist() == [3] * 4
    # a cap above a class's half keeps the whole half
    first, second = search_split(data, seed=0, per_class=11)
    assert torch.bincount(first.labels).tolist() == [10] * 4
    lonely = ImageSet(data.images[:5], data.labels[:5], data.classes)  # classes 1..3 have 1 image
    with pytest.raises(DataError, match="'c1' has 1 image.*at least 2"):
        search_split(lonely, seed=0)
    with pytest.raises(DataError, match="per_class"):
        search_split(data, seed=0, per_class=0)


def test_stratified_subset_keeps_proportions():
    labels = torch.tensor([0] * 50 + [1] * 30 + [2] * 20)
    data = ImageSet(torch.zeros(100, 3, 2, 2, dtype=torch.uint8), labels, ("a", "b", "c"))
    sub = stratified_subset(data, 10, seed=0)
    assert torch.bincount(sub.labels).tolist() == [5, 3, 2]
    sub = stratified_subset(data, 7, seed=0)
    assert len(sub) == 7 and torch.bincount(sub.labels, minlength=3).tolist() == [4, 2, 1]
    assert torch.equal(stratified_subset(data, 7, seed=5).labels, stratified_subset(data, 7, seed=5).labels)
    with pytest.raises(DataError, match="between 1 and 100"):
        stratified_subset(data, 101, seed=0)


# --------------------------------------------------------------------------- augmentation


def test_augment_shape_dtype_reproducible():
    x = _tiny_set(n=16, size=8).images
    out1 = augment(x, torch.Generator().manual_seed(0))
    out2 = augment(x, torch.Generator().manual_seed(0))
    assert out1.shape == x.shape and out1.dtype == torch.uint8
    assert torch.equal(out1, out2)
    assert not torch.equal(out1, augment(x, torch.Generator().manual_seed(1)))


def test_crop_is_a_real_shift_and_flip_is_torch_flip():
    x = _tiny_set(n=3, size=8).images
    rows0 = torch.tensor([0, 4, 6])
    cols0 = torch.tensor([4, 1, 4])
    flips = torch.tensor([False, False, True])
    out = hd_batches._crop_flip(x, rows0, cols0, flips, pad=4)
    # sample 0: moved down by 4 rows (offset 0 = 4 px of zero padding on top), columns unchanged
    expected0 = torch.zeros_like(x[0])
    expected0[:, 4:, :] = x[0, :, :4, :]
    assert torch.equal(out[0], expected0)
    # sample 1: rows unchanged, content moved right by 3
    expected1 = torch.zeros_like(x[1])
    expected1[:, :, 3:] = x[1, :, :, :5]
    assert torch.equal(out[1], expected1)
    # sample 2: shifted up by 2 then mirrored
    expected2 = torch.zeros_like(x[2])
    expected2[:, :6, :] = x[2, :, 2:, :]
    assert torch.equal(out[2], torch.flip(expected2, dims=[-1]))


def test_augment_without_padding_only_flips():
    x = _tiny_set(n=64, size=8).images
    out = augment(x, torch.Generator().manual_seed(0), pad=0)
    same = (out == x).flatten(1).all(1)
    mirrored = (out == torch.flip(x, dims=[-1])).flatten(1).all(1)
    assert bool((same | mirrored).all())
    assert 0 < int(mirrored.sum()) < 64


def test_normalize():
    x = torch.tensor([0, 255], dtype=torch.uint8).view(1, 1, 1, 2).expand(1, 3, 1, 2).contiguous()
    out = normalize(x, (0.5, 0.5, 0.5), (0.5, 0.25, 1.0))
    assert out.dtype == torch.float32
    assert torch.allclose(out[0, :, 0, 0], torch.tensor([-1.0, -2.0, -0.5]))
    assert torch.allclose(out[0, :, 0, 1], torch.tensor([1.0, 2.0, 0.5]))


def test_batches_without_augmentation_are_exact_normalized_input():
    data = _tiny_set(n=10)
    mean, std = (0.4, 0.5, 0.6), (0.2, 0.3, 0.4)
    batches = Batches(data, 4, mean=mean, std=std, shuffle=False, augment=False, drop_last=False)
    got = list(batches)
    assert len(batches) == len(got) == 3 and [len(y) for _, y in got] == [4, 4, 2]
    assert torch.equal(torch.cat([x for x, _ in got]), normalize(data.images, mean, std))
    assert torch.equal(torch.cat([y for _, y in got]), data.labels)
    fixed = fixed_batches(data, 4, mean=mean, std=std, device="cpu")
    assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(fixed, got))


def test_batches_len_and_epoch_content():
    data = _tiny_set(n=10)
    batches = Batches(data, 4, mean=(0.5,) * 3, std=(0.5,) * 3, seed=1)
    got = list(batches)
    assert len(batches) == len(got) == 2
    assert all(x.shape == (4, 3, 8, 8) and x.dtype == torch.float32 for x, _ in got)
    assert all(y.dtype == torch.int64 for _, y in got)
    assert len(set(torch.cat([y for _, y in got]).tolist())) > 1
    with pytest.raises(DataError, match="drop_last"):
        Batches(data, 11, mean=(0.5,) * 3, std=(0.5,) * 3)


def test_batches_state_dict_resumes_bit_for_bit():
    data = _tiny_set(n=30)
    kwargs = dict(mean=(0.5,) * 3, std=(0.25,) * 3)
    run = Batches(data, 8, seed=7, **kwargs)
    list(run)
    state = run.state_dict()
    next_epoch = list(run)
    resumed = Batches(data, 8, seed=999, **kwargs)
    resumed.load_state_dict(state)
    again = list(resumed)
    assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(next_epoch, again))
    # an epoch left unfinished does not change what the next one draws
    partial = Batches(data, 8, seed=7, **kwargs)
    list(partial)
    next(iter(partial))
    complete = Batches(data, 8, seed=7, **kwargs)
    for _ in range(2):
        list(complete)
    assert torch.equal(next(iter(partial))[0], next(iter(complete))[0])
    # the global RNG is untouched
    torch.manual_seed(0)
    expected = torch.rand(1)
    torch.manual_seed(0)
    list(Batches(data, 8, seed=1, **kwargs))
    assert torch.equal(torch.rand(1), expected)
    with pytest.raises(DataError, match="30"):
        Batches(_tiny_set(n=20), 8, **kwargs).load_state_dict(state)


# --------------------------------------------------------------------------- synthetic


def test_synthetic_deterministic_and_shaped():
    a, b = synthetic_dataset(seed=4), synthetic_dataset(seed=4)
    assert torch.equal(a.train.images, b.train.images) and torch.equal(a.test.labels, b.test.labels)
    assert not torch.equal(a.train.images, synthetic_dataset(seed=5).train.images)
    assert a.train.images.shape == (1000, 3, 32, 32) and a.train.images.dtype == torch.uint8
    assert len(a.test) == 200 and a.num_classes == 10
    assert torch.bincount(a.train.labels).tolist() == [100] * 10
    via_loader = load_dataset("synthetic", synthetic_train=50, synthetic_test=20, seed=4)
    assert len(via_loader.train) == 50 and via_loader.name == "synthetic"


def test_synthetic_is_learnable_by_a_linear_model():
    dataset = synthetic_dataset(n_train=500, n_test=200, seed=0)
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.AvgPool2d(4), torch.nn.Flatten(), torch.nn.Linear(3 * 8 * 8, 10))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    train = Batches(dataset.train, 50, mean=dataset.mean, std=dataset.std, seed=0)
    for _ in range(2):
        for x, y in train:
            optimizer.zero_grad()
            torch.nn.functional.cross_entropy(model(x), y).backward()
            optimizer.step()
    correct = sum(int((model(x).argmax(1) == y).sum())
                  for x, y in fixed_batches(dataset.test, 100, mean=dataset.mean, std=dataset.std,
                                            device="cpu"))
    assert correct / len(dataset.test) > 0.5  # chance is 0.1


def test_datasets_constant():
    assert DATASETS == ("cifar10", "cifar100", "synthetic")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_batches_on_cuda_match_themselves_and_stay_on_device():
    data = _tiny_set(n=30)
    kwargs = dict(mean=(0.5,) * 3, std=(0.25,) * 3, device="cuda", seed=3)
    first, second = Batches(data, 8, **kwargs), Batches(data, 8, **kwargs)
    for (xa, ya), (xb, yb) in zip(first, second):
        assert xa.is_cuda and ya.is_cuda
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
    state = first.state_dict()
    expected = list(first)
    second.load_state_dict(state)
    assert all(torch.equal(a[0], b[0]) for a, b in zip(expected, second))
    out = augment(data.images.cuda(), torch.Generator(device="cuda").manual_seed(0))
    assert out.is_cuda and out.shape == data.images.shape
