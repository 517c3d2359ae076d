"""benchmarks.train: the recipes as values, the schedule, the training loop on CPU, ImageNet streaming."""
from __future__ import annotations

import contextlib
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from benchmarks.train import (
    RECIPES,
    Recipe,
    RecipeError,
    ImageNetData,
    Trainer,
    autocast,
    build_nb201,
    check_dataset,
    check_imagenet_root,
    coerce_recipe_field,
    count_macs,
    count_parameters,
    fit,
    learning_rate,
    recipe,
    stratified_indices,
)
from spaces.nb201 import Arch, count_flops, count_params

ARCH = Arch.from_str("|nor_conv_3x3~0|+|nor_conv_3x3~0|avg_pool_3x3~1|+|skip_connect~0|nor_conv_3x3~1|skip_connect~2|")


@pytest.fixture(autouse=True)
def one_thread():
    """The test machine is shared: one thread is several times faster than oversubscribing."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# --------------------------------------------------------------------------- recipes as values


def test_nb201_preset_is_the_benchmarks_own_recipe():
    r = recipe("nb201")
    assert (r.epochs, r.batch_size, r.lr, r.lr_min, r.momentum, r.nesterov, r.weight_decay) == \
        (200, 256, 0.1, 0.0, 0.9, True, 5e-4)
    assert (r.C, r.N, r.augment, r.image_size, r.warmup_epochs, r.label_smoothing) == (16, 5, "crop_flip", 32, 0, 0)
    assert r.decay_norm_and_bias and r.datasets == ("cifar10", "cifar100", "synthetic")


def test_imagenet_preset():
    r = recipe("imagenet")
    assert (r.image_size, r.resize, r.augment, r.stem, r.label_smoothing) == (224, 256, "resized_crop_flip", "imagenet", 0.1)
    assert r.warmup_epochs > 0 and r.datasets == ("imagenet",) and set(RECIPES) == {"nb201", "imagenet"}


def test_recipes_round_trip_through_json_and_reject_unknown_fields():
    import json

    for name in RECIPES:
        r = recipe(name, epochs=3, C=8)
        assert Recipe.from_dict(json.loads(json.dumps(r.to_dict()))) == r
    with pytest.raises(RecipeError, match="unknown recipe field"):
        Recipe.from_dict({**recipe("nb201").to_dict(), "lrr": 1})
    with pytest.raises(RecipeError, match="unknown recipe field"):
        recipe("nb201", momentun=0.8)
    with pytest.raises(RecipeError, match="unknown recipe 'resnet'"):
        recipe("resnet")
    with pytest.raises(RecipeError, match="warmup_epochs"):
        recipe("imagenet", epochs=3, warmup_epochs=5)  # 5 warm-up epochs do not fit in 3
    assert recipe("imagenet", epochs=25).warmup_epochs == pytest.approx(0.5)  # keeps its 2 % share
    with pytest.raises(RecipeError, match="epochs must be an integer >= 1"):
        recipe("nb201", epochs=0)
    assert coerce_recipe_field("warmup_epochs", "1") == 1.0 and coerce_recipe_field("nesterov", "false") is False
    with pytest.raises(RecipeError, match="expects a int"):
        coerce_recipe_field("C", "wide")


def test_a_recipe_refuses_data_it_is_not_meant_for():
    check_dataset(recipe("nb201"), "cifar100")
    with pytest.raises(RecipeError, match="not 'imagenet'; use --recipe imagenet"):
        check_dataset(recipe("nb201"), "imagenet")
    with pytest.raises(RecipeError, match="not 'cifar10'; use --recipe nb201"):
        check_dataset(recipe("imagenet"), "cifar10")


def test_learning_rate_cosine_to_zero_and_linear_warmup():
    r = recipe("nb201", epochs=10)
    lrs = [learning_rate(r, e, s, 5) for e in range(1, 11) for s in range(5)]
    assert lrs[0] == pytest.approx(0.1) and all(a >= b for a, b in zip(lrs, lrs[1:]))
    assert lrs[-1] < 1e-3 and learning_rate(r, 6, 0, 5) == pytest.approx(0.05)  # half way: lr/2
    w = recipe("imagenet", epochs=20, warmup_epochs=2.0)
    warm = [learning_rate(w, e, s, 4) for e in (1, 2) for s in range(4)]
    assert warm == pytest.approx([0.5 * (i + 1) / 8 for i in range(8)])  # linear up to the peak
    assert learning_rate(w, 3, 0, 4) == pytest.approx(0.5)


# --------------------------------------------------------------------------- networks


def test_count_macs_matches_the_closed_form_and_params_the_network():
    for C, N in ((8, 1), (16, 2)):
        net = build_nb201(ARCH, recipe("nb201", C=C, N=N), 10)
        assert count_macs(net, 32) == count_flops(ARCH, C, N, 10, 32)
        assert count_parameters(net) == count_params(ARCH, C, N, 10)
    assert net.training  # counting leaves the mode alone


def test_imagenet_stem_brings_224_pixels_down_to_56():
    net = build_nb201(ARCH, recipe("imagenet", C=4, N=1), 1000)
    seen = []
    net.layers[0].register_forward_hook(lambda m, i, o: seen.append(o.shape))
    net.eval()
    with torch.no_grad():
        assert net(torch.zeros(1, 3, 224, 224)).shape == (1, 1000)
    assert seen[0][-2:] == (56, 56)
    assert count_macs(net, 224) < count_flops(ARCH, 4, 1, 1000, 224)  # the cells run at 56 px, not 224


# --------------------------------------------------------------------------- the loop on CPU


def _synthetic_batches(seed: int = 0):
    from harness.data import Batches, fixed_batches, synthetic_dataset

    data = synthetic_dataset(1000, 300, seed=seed)
    train = Batches(data.train, 50, mean=data.mean, std=data.std, seed=seed, drop_last=False)
    test = fixed_batches(data.test, 300, mean=data.mean, std=data.std, device="cpu")
    return train, test


def test_one_epoch_of_the_nb201_recipe_on_synthetic_data_beats_chance():
    train, test = _synthetic_batches()
    r = recipe("nb201", epochs=1, C=8, N=1, batch_size=50)
    torch.manual_seed(0)
    trainer = Trainer(build_nb201(ARCH, r, 10), r, "cpu", len(train))
    history = fit(trainer, lambda epoch: train, test)
    (m,) = history
    assert set(m) >= {"epoch", "train_loss", "train_acc", "lr", "test_top1", "test_top5", "test_loss", "epoch_s"}
    assert m["epoch"] == 1 and m["train_images"] == 1000 and m["test_images"] == 300
    assert m["test_top1"] > 25.0, m  # chance is 10 %
    assert m["test_top5"] >= m["test_top1"] and m["train_loss"] < math.log(10)
    assert m["lr"] < 1e-3  # the cosine ran to (nearly) zero within the one epoch


def test_a_non_finite_loss_stops_training_with_its_reason():
    train, _ = _synthetic_batches()
    r = recipe("nb201", epochs=1, C=4, N=1, lr=1e30)
    trainer = Trainer(build_nb201(ARCH, r, 10), r, "cpu", len(train))
    with pytest.raises(FloatingPointError, match="non-finite training loss.*lower the learning rate"):
        trainer.train_epoch(1, train)


def test_cuda_only_paths_stay_off_on_the_cpu():
    r = recipe("nb201", C=4, N=1)
    assert r.amp and r.channels_last  # requested, but they only apply to CUDA devices
    trainer = Trainer(build_nb201(ARCH, r, 10), r, torch.device("cpu"), 1)
    assert not trainer.amp and not trainer.channels_last
    assert isinstance(autocast(torch.device("cpu"), True), contextlib.nullcontext)
    assert all(p.is_contiguous() for p in trainer.model.parameters())


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_step_uses_bf16_autocast_and_channels_last():
    r = recipe("nb201", C=8, N=1)
    trainer = Trainer(build_nb201(ARCH, r, 10), r, torch.device("cuda"), 2)
    assert trainer.amp and trainer.channels_last
    conv = trainer.model.stem[0].weight
    assert conv.is_contiguous(memory_format=torch.channels_last)
    with autocast(trainer.device, True):
        assert trainer.model(torch.randn(2, 3, 32, 32, device="cuda")).dtype == torch.bfloat16
    batches = [(torch.randn(8, 3, 32, 32), torch.randint(0, 10, (8,))) for _ in range(2)]  # CPU batches: moved
    out = trainer.train_epoch(1, batches)
    assert math.isfinite(out["train_loss"]) and trainer.evaluate(batches)["test_top1"] >= 0


# --------------------------------------------------------------------------- ImageNet-style streaming


def _write_tree(root: Path, classes: int = 6, train: int = 8, val: int = 4, size: int = 64) -> Path:
    """A tiny ImageFolder tree: each class a distinct smooth colour pattern plus noise, as PNG."""
    rng = np.random.default_rng(0)
    for c in range(classes):
        base = rng.uniform(0, 255, (4, 4, 3))
        pattern = np.kron(base, np.ones((size // 4, size // 4, 1)))
        for split, n in (("train", train), ("val", val)):
            folder = root / split / f"n{c:08d}"
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                pixels = np.clip(pattern + rng.normal(0, 20, pattern.shape), 0, 255).astype(np.uint8)
                Image.fromarray(pixels).save(folder / f"img_{i}.png")
    return root


@pytest.fixture(scope="module")
def tree(tmp_path_factory) -> Path:
    return _write_tree(tmp_path_factory.mktemp("imagenet"))


def _tiny_imagenet_recipe(**changes) -> Recipe:
    values = dict(epochs=2, warmup_epochs=0.5, C=8, N=1, batch_size=12, eval_batch_size=16, lr=0.1,
                  image_size=48, resize=56, workers=0)
    values.update(changes)
    return recipe("imagenet", **values)


def test_the_imagenet_recipe_trains_on_a_tiny_imagefolder_tree(tree):
    r = _tiny_imagenet_recipe()
    data = ImageNetData(tree, r, seed=0)
    assert data.num_classes == 6 and len(data.train_set) == 48 and len(data.val_set) == 24
    torch.manual_seed(0)
    trainer = Trainer(build_nb201(ARCH, r, data.num_classes), r, "cpu", data.steps_per_epoch)
    history = fit(trainer, data.train, data.test)
    assert [m["epoch"] for m in history] == [1, 2]
    last = history[-1]
    assert 0 <= last["test_top1"] <= last["test_top5"] <= 100 and last["test_images"] == 24
    assert last["test_top5"] > 5 / 6 * 100 - 1e-9 or last["test_top5"] >= last["test_top1"]
    assert all(math.isfinite(m["train_loss"]) for m in history)
    x, y = next(iter(data.train(1)))
    assert x.shape == (12, 3, 48, 48) and x.dtype == torch.float32 and y.dtype == torch.int64


def test_imagenet_batches_depend_on_seed_and_epoch_only(tree):
    """Same (seed, epoch) -> same images, order and crops, whatever the worker count."""
    def first(seed: int, epoch: int, workers: int):
        data = ImageNetData(tree, _tiny_imagenet_recipe(workers=workers), seed=seed)
        return next(iter(data.train(epoch)))

    x0, y0 = first(0, 2, 0)
    x1, y1 = first(0, 2, 1)
    assert torch.equal(x0, x1) and torch.equal(y0, y1)
    assert not torch.equal(first(0, 3, 0)[0], x0) and not torch.equal(first(1, 2, 0)[0], x0)


def test_subsets_are_stratified_and_seeded(tree):
    data = ImageNetData(tree, _tiny_imagenet_recipe(), seed=0, train_images=12, val_images=6)
    labels = [t for _, t in data.train_set.samples]
    assert len(labels) == 12 and np.bincount(labels).tolist() == [2] * 6
    targets = [0, 0, 0, 1, 1, 1, 2, 2, 2]
    pick = stratified_indices(targets, 3, seed=5)
    assert pick == stratified_indices(targets, 3, seed=5) and sorted(targets[i] for i in pick) == [0, 1, 2]
    assert stratified_indices(targets, None, 0) == list(range(9))


def test_an_imagenet_root_needs_train_and_val(tmp_path, tree):
    assert len(check_imagenet_root(tree)) == 6
    with pytest.raises(RecipeError, match="is not a directory"):
        check_imagenet_root(tmp_path / "nope")
    (tmp_path / "only" / "train" / "a").mkdir(parents=True)
    with pytest.raises(RecipeError, match="has no val/ folder"):
        check_imagenet_root(tmp_path / "only")
    (tmp_path / "only" / "val" / "b").mkdir(parents=True)
    with pytest.raises(RecipeError, match="different classes"):
        check_imagenet_root(tmp_path / "only")
