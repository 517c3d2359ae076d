"""From-scratch training recipes: frozen configs plus one small training loop that runs them.

Why here: the benchmark's own numbers come from one recipe (NAS-Bench-201: 200 epochs, SGD
Nesterov 0.9, lr 0.1 cosine to 0, weight decay 5e-4, batch 256, crop + flip, C=16, N=5), and a
searched architecture is only comparable to the benchmark when it is trained the same way. The
ImageNet recipe is the DARTS-family mobile setting (P-DARTS / PC-DARTS: 250 epochs, batch 1024,
lr 0.5 with 5 warm-up epochs then cosine, weight decay 3e-5 off BN and biases, label smoothing
0.1, gradient clipping 5) and takes any ``nn.Module``, so later spaces reuse it unchanged.

This module is a leaf: it imports torch, torchvision and ``spaces`` only — never ray or the
harness. It takes data as plain iterables of ``(x, y)`` batches (``Trainer.train_epoch`` /
``Trainer.evaluate``); the harness builds CIFAR batches from its in-memory tensors, and
``ImageNetData`` below streams an ImageFolder ``train/`` + ``val/`` tree through a DataLoader.

Resumability by construction: the learning rate is a pure function of (epoch, step), so the
schedule has no state of its own; ``ImageNetData`` draws every random number of an epoch from
``(seed, epoch)`` (sample order and a per-sample augmentation seed), so a resumed run sees the
same images in the same order with the same crops whatever the number of loader workers.

CUDA paths (bf16 autocast, channels_last, pinned memory and non_blocking copies) switch on only
when ``device.type == 'cuda'``; on the CPU the same code runs in float32, contiguous layout.
"""
from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Mapping, Sequence

import torch
from torch import nn

from common.config import coerce_field, config_from_dict, config_to_dict
from spaces.measure import conv_linear_macs, deployed_params
from spaces.nb201 import Arch, Network

Batch = tuple[torch.Tensor, torch.Tensor]

NETWORKS = ("nb201", "darts-cifar", "darts-imagenet")   # what a recipe builds from an arch / genotype
SCHEDULES = ("cosine", "cosine_epoch", "linear")
# cosine: warm-up then cosine to lr_min, stepped per iteration (NB201);
# cosine_epoch: cosine to lr_min stepped once per epoch (DARTS's CosineAnnealingLR(epochs));
# linear: P-DARTS's ImageNet schedule, per epoch (``learning_rate`` below).
AUGMENTS = ("crop_flip", "resized_crop_flip")   # CIFAR pad-4 crop + flip | RandomResizedCrop + flip
STEMS = ("cifar", "imagenet")                   # 3x3 conv at full resolution | stride-4 stem for 224 px
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
_IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")


class RecipeError(ValueError):
    """A recipe that cannot be built or does not fit the data: the message says what to change."""


# --------------------------------------------------------------------------- the recipe value


@dataclass(frozen=True)
class Recipe:
    """Everything about from-scratch training that is not the architecture or the data.

    Defaults are the NAS-Bench-201 recipe; ``recipe("imagenet")`` gives the ImageNet one.
    Frozen and JSON round-trip (``to_dict`` / ``from_dict``; unknown keys raise), so a trial's
    config says exactly how it was trained.
    """

    name: str = "nb201"
    epochs: int = 200
    batch_size: int = 256
    lr: float = 0.1
    lr_min: float = 0.0                 # cosine ends here
    warmup_epochs: float = 0.0          # linear warm-up from ~0 to `lr`, then cosine over the rest
    momentum: float = 0.9
    nesterov: bool = True
    weight_decay: float = 5e-4
    decay_norm_and_bias: bool = True    # NB201 decays every parameter; ImageNet recipes skip BN/bias
    label_smoothing: float = 0.0
    grad_clip: float = 0.0              # max global grad norm; 0 = off
    C: int = 16                         # NB201 network width (stage channels C, 2C, 4C)
    N: int = 5                          # cells per stage
    augment: str = "crop_flip"
    image_size: int = 32                # training / test crop
    resize: int = 32                    # ImageNet val: resize the short side to this, then center-crop
    stem: str = "cifar"
    eval_batch_size: int = 512
    eval_every: int = 1                 # test every k epochs (and always after the last)
    workers: int = 0                    # DataLoader workers (streamed datasets only)
    amp: bool = True                    # bf16 autocast — on CUDA only
    channels_last: bool = True          # channels_last memory format — on CUDA only
    network: str = "nb201"              # nb201 cells | DARTS NetworkCIFAR | DARTS NetworkImageNet
    layers: int = 20                    # DARTS cells in all (darts-* networks only; NB201 uses N)
    auxiliary_weight: float = 0.0       # DARTS auxiliary head: loss = CE + w * CE(aux); 0 = no head
    drop_path: float = 0.0              # DARTS max drop-path prob, raised linearly: p * (epoch-1) / epochs
    cutout: int = 0                     # Cutout square side in px (in-memory CIFAR data only); 0 = off
    schedule: str = "cosine"            # one of SCHEDULES

    def __post_init__(self) -> None:
        if self.name not in RECIPE_DATASETS:
            raise RecipeError(f"unknown recipe {self.name!r}; recipes: {', '.join(RECIPE_DATASETS)}")
        positive = ("epochs", "batch_size", "C", "N", "image_size", "resize", "eval_batch_size", "eval_every",
                    "layers")
        for field_name in positive:
            value = getattr(self, field_name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise RecipeError(f"recipe {field_name} must be an integer >= 1, got {value!r}")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise RecipeError(f"recipe lr must be a positive number, got {self.lr!r}")
        if not 0 <= self.lr_min <= self.lr:
            raise RecipeError(f"recipe lr_min must be in [0, lr={self.lr}], got {self.lr_min!r}")
        if not 0 <= self.warmup_epochs < self.epochs:
            raise RecipeError(f"recipe warmup_epochs must be in [0, epochs={self.epochs}), got "
                              f"{self.warmup_epochs!r}; lower it with the epochs")
        if not 0 <= self.momentum < 1:
            raise RecipeError(f"recipe momentum must be in [0, 1), got {self.momentum!r}")
        if self.weight_decay < 0 or self.grad_clip < 0 or self.workers < 0:
            raise RecipeError("recipe weight_decay, grad_clip and workers must be >= 0")
        if not 0 <= self.label_smoothing < 1:
            raise RecipeError(f"recipe label_smoothing must be in [0, 1), got {self.label_smoothing!r}")
        if self.augment not in AUGMENTS:
            raise RecipeError(f"recipe augment must be one of {', '.join(AUGMENTS)}, got {self.augment!r}")
        if self.stem not in STEMS:
            raise RecipeError(f"recipe stem must be one of {', '.join(STEMS)}, got {self.stem!r}")
        if self.network not in NETWORKS:
            raise RecipeError(f"recipe network must be one of {', '.join(NETWORKS)}, got {self.network!r}")
        if self.schedule not in SCHEDULES:
            raise RecipeError(f"recipe schedule must be one of {', '.join(SCHEDULES)}, got {self.schedule!r}")
        if not (0 <= self.auxiliary_weight and math.isfinite(self.auxiliary_weight)):
            raise RecipeError(f"recipe auxiliary_weight must be a number >= 0, got {self.auxiliary_weight!r}")
        if not 0 <= self.drop_path < 1:
            raise RecipeError(f"recipe drop_path must be in [0, 1), got {self.drop_path!r}")
        if isinstance(self.cutout, bool) or not isinstance(self.cutout, int) or self.cutout < 0:
            raise RecipeError(f"recipe cutout must be an integer >= 0 (0 = off), got {self.cutout!r}")
        if self.network == "nb201" and (self.auxiliary_weight or self.drop_path):
            raise RecipeError("recipe auxiliary_weight and drop_path need a DARTS network (recipe darts-cifar or "
                              "darts-imagenet); NB201 networks have no auxiliary head or drop-path")
        if self.cutout and self.augment != "crop_flip":
            raise RecipeError("recipe cutout works on in-memory CIFAR-sized data (augment crop_flip) only; "
                              "set cutout=0")
        if self.resize < self.image_size:
            raise RecipeError(f"recipe resize ({self.resize}) must be >= image_size ({self.image_size}): "
                              "validation images are resized, then center-cropped to image_size")

    # -- JSON
    def to_dict(self) -> dict[str, Any]:
        return config_to_dict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "Recipe":
        try:
            return config_from_dict(cls, data)
        except ValueError as err:
            raise RecipeError(str(err).replace("Recipe field", "recipe field")) from None

    def replace(self, **changes: Any) -> "Recipe":
        return recipe_from(self, changes)

    @property
    def datasets(self) -> tuple[str, ...]:
        """The datasets this recipe is meant for (the harness refuses other pairings)."""
        return RECIPE_DATASETS[self.name]


# Which data each recipe trains on: NB201 is a 32x32 in-memory recipe, ImageNet a streamed one.
RECIPE_DATASETS: dict[str, tuple[str, ...]] = {
    "nb201": ("cifar10", "cifar100", "synthetic"),
    "imagenet": ("imagenet",),
    "darts-cifar": ("cifar10", "cifar100", "synthetic"),
    "darts-imagenet": ("imagenet",),
}

_PRESETS: dict[str, dict[str, Any]] = {
    # NAS-Bench-201 (Dong & Yang 2020), exactly: see ANCHORS.md "From-scratch training recipe".
    "nb201": {},
    # DARTS-family mobile ImageNet setting (P-DARTS, PC-DARTS), cosine instead of linear decay.
    "imagenet": dict(name="imagenet", epochs=250, batch_size=1024, lr=0.5, warmup_epochs=5.0,
                     nesterov=False, weight_decay=3e-5, decay_norm_and_bias=False, label_smoothing=0.1,
                     grad_clip=5.0, augment="resized_crop_flip", image_size=224, resize=256,
                     stem="imagenet", eval_batch_size=256, workers=8),
    # DARTS / P-DARTS CIFAR-10 evaluation, as quark0/darts cnn/train.py and chenxin061/pdarts
    # train_cifar.py: 600 epochs, batch 96, SGD lr 0.025 (momentum 0.9, no Nesterov) with
    # CosineAnnealingLR(epochs) stepped once per epoch to 0, weight decay 3e-4 on every parameter,
    # Cutout 16, drop-path 0.3 raised linearly, auxiliary head weight 0.4, grad-norm clip 5,
    # C=36, 20 cells.
    "darts-cifar": dict(name="darts-cifar", network="darts-cifar", epochs=600, batch_size=96, lr=0.025,
                        nesterov=False, weight_decay=3e-4, grad_clip=5.0, C=36, layers=20, auxiliary_weight=0.4,
                        drop_path=0.3, cutout=16, schedule="cosine_epoch"),
    # DARTS-family mobile ImageNet (14 cells, C=48) with P-DARTS's published schedule
    # (chenxin061/pdarts train_imagenet.py, its default `--lr_scheduler linear`): 250 epochs,
    # batch 1024 with lr 0.5 (the paper's 8-GPU setting; the script's defaults are 256 / 0.1),
    # a 5-epoch warm-up (lr * (epoch+1)/5, applied there when batch > 256), then linear decay
    # per epoch (``learning_rate``), SGD momentum 0.9, weight decay 3e-5 on every parameter,
    # label smoothing 0.1, auxiliary weight 0.4, grad-norm clip 5, no drop-path. (DARTS's own
    # quark0/darts cnn/train_imagenet.py: batch 128, lr 0.1, StepLR x0.97 per epoch — not used.)
    # Not reproduced: P-DARTS's ColorJitter(0.4, 0.4, 0.4, 0.2) on the training images.
    "darts-imagenet": dict(name="darts-imagenet", network="darts-imagenet", epochs=250, batch_size=1024, lr=0.5,
                           warmup_epochs=5.0, nesterov=False, weight_decay=3e-5, label_smoothing=0.1,
                           grad_clip=5.0, C=48, layers=14, auxiliary_weight=0.4, schedule="linear",
                           augment="resized_crop_flip", image_size=224, resize=256, stem="imagenet",
                           eval_batch_size=256, workers=8),
}
ALL_RECIPES = tuple(_PRESETS)
RECIPES = tuple(n for n in ALL_RECIPES if _PRESETS[n].get("network", "nb201") == "nb201")   # NB201-space recipes
DARTS_RECIPES = tuple(n for n in ALL_RECIPES if n not in RECIPES)                          # DARTS-space recipes


def recipe(name: str, **overrides: Any) -> Recipe:
    """The named preset with ``overrides`` applied (``None`` values are ignored).

    Shortening ``epochs`` without naming ``warmup_epochs`` keeps the warm-up's share of the
    schedule (ImageNet: 5 of 250 epochs = 2 %), so a 3-epoch check still warms up briefly.
    """
    if name not in _PRESETS:
        raise RecipeError(f"unknown recipe {name!r}; recipes: {', '.join(ALL_RECIPES)}")
    base = Recipe(**_PRESETS[name])
    changes = {k: v for k, v in overrides.items() if v is not None}
    if "epochs" in changes and "warmup_epochs" not in changes and base.warmup_epochs:
        if isinstance(changes["epochs"], int) and changes["epochs"] >= 1:
            changes["warmup_epochs"] = base.warmup_epochs * changes["epochs"] / base.epochs
    return recipe_from(base, changes)


def recipe_from(base: Recipe, overrides: Mapping[str, Any]) -> Recipe:
    changes = {k: v for k, v in overrides.items() if v is not None}
    names = {f.name for f in dataclasses.fields(Recipe)}
    unknown = sorted(set(changes) - names)
    if unknown:
        raise RecipeError(f"unknown recipe field(s) {unknown}; known fields: {sorted(names)}")
    if "name" in changes and changes["name"] != base.name:
        raise RecipeError("a recipe's name cannot be overridden; pick the recipe by name instead")
    return dataclasses.replace(base, **changes)


def coerce_recipe_field(key: str, text: str) -> Any:
    """Parse a command-line ``FIELD=VALUE`` into the type of that recipe field."""
    fields = {f.name for f in dataclasses.fields(Recipe)}
    if key not in fields or key == "name":
        raise RecipeError(f"unknown recipe field {key!r}; known fields: {sorted(fields - {'name'})}")
    try:
        return coerce_field(Recipe, key, text)
    except ValueError as err:
        raise RecipeError(f"recipe field {err}") from None


def check_dataset(r: Recipe, dataset: str) -> None:
    """Refuse a dataset the recipe is not meant for, saying which recipe fits."""
    if dataset in r.datasets:
        return
    fits = [name for name, sets in RECIPE_DATASETS.items() if dataset in sets]
    hint = f"use --recipe {fits[0]}" if fits else "no recipe trains on it"
    raise RecipeError(f"recipe {r.name!r} trains on {', '.join(r.datasets)}, not {dataset!r}; {hint}")


# --------------------------------------------------------------------------- networks


def imagenet_stem(C: int) -> nn.Sequential:
    """Two stride-2 3x3 convs (224 -> 56 px), as DARTS-family ImageNet networks reduce early.

    The NB201 cells then run at 56, 28 and 14 px; without this the first stage would run at
    224 px (49x the CIFAR compute per image at the same width).
    """
    mid = max(C // 2, 1)
    return nn.Sequential(
        nn.Conv2d(3, mid, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(mid), nn.ReLU(inplace=True),
        nn.Conv2d(mid, C, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(C),
    )


def build_nb201(arch: Arch, r: Recipe, num_classes: int) -> Network:
    """The benchmark network of ``arch`` at the recipe's width/depth and stem."""
    net = Network(arch, r.C, r.N, num_classes)
    if r.stem == "imagenet":
        net.stem = imagenet_stem(r.C)
    return net


def build_darts(genotype: Any, r: Recipe, num_classes: int) -> nn.Module:
    """The DARTS network of ``genotype`` (a ``spaces.darts.Genotype`` or its text) at the recipe's
    C and layers; the auxiliary head is built when ``r.auxiliary_weight > 0``."""
    from spaces import darts

    if isinstance(genotype, str):
        genotype = darts.Genotype.from_str(genotype)
    aux = r.auxiliary_weight > 0
    if r.network == "darts-cifar":
        return darts.NetworkCIFAR(genotype, C=r.C, layers=r.layers, num_classes=num_classes, auxiliary=aux,
                                  drop_path_prob=0.0)
    if r.network == "darts-imagenet":
        return darts.NetworkImageNet(genotype, C=r.C, layers=r.layers, num_classes=num_classes, auxiliary=aux,
                                     drop_path_prob=0.0)
    raise RecipeError(f"recipe {r.name!r} builds {r.network!r} networks, not DARTS ones; "
                      "use --recipe darts-cifar or darts-imagenet")


def count_parameters(model: nn.Module) -> int:
    """Parameters of the network as deployed: a DARTS auxiliary head (training only) is excluded."""
    return deployed_params(model)


def count_macs(model: nn.Module, image_size: int, device: torch.device | str | None = None) -> int:
    """Multiply-accumulates of one image's forward pass: convolutions and linear layers
    (``spaces.measure``: the convention of ``spaces.nb201.count_flops``, for any stem or space)."""
    return conv_linear_macs(model, image_size, device)


# --------------------------------------------------------------------------- the training loop


def learning_rate(r: Recipe, epoch: int, step: int, steps_per_epoch: int) -> float:
    """The lr at ``step`` (0-based) of ``epoch`` (1-based), by ``r.schedule``.

    ``cosine``: linear warm-up, then cosine to lr_min, stepped per iteration as NB201's own
    scheduler does. ``cosine_epoch``: DARTS's CosineAnnealingLR(epochs), constant within an epoch
    (epoch e uses lr_min + (lr - lr_min)(1 + cos(pi (e-1) / epochs)) / 2). ``linear``: P-DARTS's
    ImageNet ``adjust_lr`` (chenxin061/pdarts train_imagenet.py), per epoch, 0-based e, E epochs,
    tail T = min(5, E-1): lr (E-T-e)/(E-T) while E-e > T, then lr (e-E+T+1)/((E-T) T) for the last
    T epochs, times the warm-up factor min(1, (e+1)/warmup_epochs) while e < warmup_epochs.
    Pure functions, so resuming at an epoch boundary needs no scheduler state.
    """
    steps_per_epoch = max(int(steps_per_epoch), 1)
    if r.schedule == "cosine_epoch":
        progress = (epoch - 1) / r.epochs
        return r.lr_min + 0.5 * (r.lr - r.lr_min) * (1.0 + math.cos(math.pi * progress))
    if r.schedule == "linear":
        e, total = epoch - 1, r.epochs
        tail = min(5, total - 1)
        if total - e > tail:
            lr = r.lr * (total - tail - e) / (total - tail)
        else:
            lr = r.lr * (e - total + tail + 1) / ((total - tail) * tail)
        if e < r.warmup_epochs:
            lr *= min(1.0, (e + 1) / r.warmup_epochs)
        return lr
    t = (epoch - 1) + step / steps_per_epoch          # epochs completed before this step
    if t < r.warmup_epochs:
        return r.lr * (t + 1.0 / steps_per_epoch) / r.warmup_epochs
    span = r.epochs - r.warmup_epochs
    progress = min(max((t - r.warmup_epochs) / span, 0.0), 1.0)
    return r.lr_min + 0.5 * (r.lr - r.lr_min) * (1.0 + math.cos(math.pi * progress))


def drop_path_prob(r: Recipe, epoch: int) -> float:
    """DARTS's drop-path schedule: ``drop_path * (epoch - 1) / epochs`` for 1-based ``epoch``
    (0 in the first epoch, rising linearly towards ``drop_path``)."""
    return r.drop_path * (epoch - 1) / r.epochs


def _param_groups(model: nn.Module, weight_decay: float, decay_norm_and_bias: bool) -> list[dict[str, Any]]:
    if decay_norm_and_bias:
        return [{"params": [p for p in model.parameters() if p.requires_grad], "weight_decay": weight_decay}]
    decay: list[nn.Parameter] = []
    no_decay: list[nn.Parameter] = []
    for p in model.parameters():
        if p.requires_grad:
            (decay if p.ndim > 1 else no_decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def autocast(device: torch.device, enabled: bool) -> contextlib.AbstractContextManager:
    """bf16 autocast on CUDA when ``enabled``; a no-op anywhere else (CPU trains in float32).

    bf16 keeps float32's exponent range, so no loss scaling (GradScaler) is needed.
    """
    if enabled and device.type == "cuda":
        return torch.autocast(device_type="cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


class Trainer:
    """A model, its optimizer and the recipe's loss and schedule; the data comes per call.

    ``train_epoch(epoch, batches)`` runs one epoch over any iterable of ``(x, y)`` batches
    (on the device already, or on the CPU: they are moved, ``non_blocking`` on CUDA);
    ``evaluate(batches)`` gives loss, top-1 and top-5 in percent. ``state_dict`` holds the
    model and optimizer — together with the epoch number that is everything to resume.
    """

    def __init__(self, model: nn.Module, r: Recipe, device: torch.device | str, steps_per_epoch: int) -> None:
        if steps_per_epoch < 1:
            raise RecipeError(f"steps_per_epoch must be >= 1, got {steps_per_epoch}")
        self.recipe = r
        self.device = torch.device(device)
        self.cuda = self.device.type == "cuda"
        self.channels_last = self.cuda and r.channels_last
        self.amp = self.cuda and r.amp
        self.model = model.to(self.device)
        if self.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.steps_per_epoch = int(steps_per_epoch)
        self.optimizer = torch.optim.SGD(
            _param_groups(self.model, r.weight_decay, r.decay_norm_and_bias), lr=r.lr, momentum=r.momentum,
            nesterov=r.nesterov and r.momentum > 0)
        self.criterion = nn.CrossEntropyLoss(label_smoothing=r.label_smoothing)

    def _to_device(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.cuda:
            memory_format = torch.channels_last if self.channels_last else torch.preserve_format
            return (x.to(self.device, non_blocking=True, memory_format=memory_format),
                    y.to(self.device, non_blocking=True))
        return x.to(self.device), y.to(self.device)

    def train_epoch(self, epoch: int, batches: Iterable[Batch]) -> dict[str, float]:
        """One epoch (``epoch`` is 1-based): train loss/accuracy, the last lr, images, seconds.

        A model with ``forward_aux`` (DARTS) and a recipe with ``auxiliary_weight > 0`` trains on
        CE(logits) + w * CE(aux_logits); a model with a ``drop_path_prob`` attribute gets
        ``drop_path * (epoch - 1) / epochs`` before the epoch (DARTS's linear schedule).
        """
        r, model = self.recipe, self.model
        use_aux = r.auxiliary_weight > 0 and hasattr(model, "forward_aux")
        if hasattr(model, "drop_path_prob"):
            setattr(model, "drop_path_prob", drop_path_prob(r, epoch))
        model.train()
        loss_sum = torch.zeros((), device=self.device)
        correct = torch.zeros((), device=self.device, dtype=torch.long)
        seen = 0
        lr = r.lr
        t0 = time.perf_counter()
        for step, (x, y) in enumerate(batches):
            x, y = self._to_device(x, y)
            lr = learning_rate(r, epoch, step, self.steps_per_epoch)
            for group in self.optimizer.param_groups:
                group["lr"] = lr
            with autocast(self.device, self.amp):
                if use_aux:
                    logits, aux_logits = getattr(model, "forward_aux")(x)
                    loss = self.criterion(logits.float(), y)
                    if aux_logits is not None:
                        loss = loss + r.auxiliary_weight * self.criterion(aux_logits.float(), y)
                else:
                    logits = model(x)
                    loss = self.criterion(logits.float(), y)
            if not torch.isfinite(loss):
                raise FloatingPointError(f"non-finite training loss ({loss.item()}) at epoch {epoch} step {step}: "
                                         "lower the learning rate (--lr) or check the data; the trial stops here")
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if r.grad_clip > 0:
                nn.utils.clip_grad_norm_(model.parameters(), r.grad_clip)
            self.optimizer.step()
            b = y.shape[0]
            loss_sum += loss.detach() * b
            correct += (logits.detach().argmax(1) == y).sum()
            seen += b
        if seen == 0:
            raise RecipeError("the training data yielded no batch; use more images or a smaller batch size")
        return {"train_loss": float(loss_sum) / seen, "train_acc": 100.0 * float(correct) / seen,
                "lr": lr, "train_images": seen, "train_s": time.perf_counter() - t0}

    @torch.no_grad()
    def evaluate(self, batches: Iterable[Batch], prefix: str = "test") -> dict[str, float]:
        """Loss and top-1 / top-5 accuracy (%) over every batch (top-k capped at the class count)."""
        model = self.model
        model.eval()
        loss_sum = torch.zeros((), device=self.device)
        hits = torch.zeros(2, device=self.device, dtype=torch.long)
        seen = 0
        criterion = nn.CrossEntropyLoss(reduction="sum")  # plain CE: comparable across recipes
        for x, y in batches:
            x, y = self._to_device(x, y)
            with autocast(self.device, self.amp):
                logits = model(x)
            logits = logits.float()
            loss_sum += criterion(logits, y)
            k = min(5, logits.shape[1])
            top = logits.topk(k, dim=1).indices
            match = top == y[:, None]
            hits[0] += match[:, 0].sum()
            hits[1] += match.any(dim=1).sum()
            seen += y.shape[0]
        if seen == 0:
            raise RecipeError("the test data yielded no batch")
        return {f"{prefix}_loss": float(loss_sum) / seen, f"{prefix}_top1": 100.0 * float(hits[0]) / seen,
                f"{prefix}_top5": 100.0 * float(hits[1]) / seen, f"{prefix}_images": seen}

    def state_dict(self) -> dict[str, Any]:
        return {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])


def fit(trainer: Trainer, train: Callable[[int], Iterable[Batch]], test: Iterable[Batch] | Callable[[], Iterable[Batch]],
        *, start_epoch: int = 0, on_epoch: Callable[[dict[str, Any]], None] | None = None) -> list[dict[str, Any]]:
    """Train epochs ``start_epoch+1 .. recipe.epochs``; ``train(epoch)`` gives that epoch's batches.

    Tests every ``eval_every`` epochs and after the last; ``on_epoch(metrics)`` is where a
    caller checkpoints. Returns one metrics dict per epoch run.
    """
    r = trainer.recipe
    history = []
    for epoch in range(start_epoch + 1, r.epochs + 1):
        t0 = time.perf_counter()
        metrics: dict[str, Any] = {"epoch": epoch, "epochs": r.epochs}
        metrics.update(train_and_test(trainer, epoch, train(epoch), test))
        metrics["epoch_s"] = time.perf_counter() - t0
        history.append(metrics)
        if on_epoch is not None:
            on_epoch(metrics)
    return history


def train_and_test(trainer: Trainer, epoch: int, train: Iterable[Batch],
                   test: Iterable[Batch] | Callable[[], Iterable[Batch]]) -> dict[str, Any]:
    """One epoch of the recipe: train, then test every ``eval_every`` epochs and after the last.

    The step ``fit`` repeats and the harness's checkpointed loop (``harness.loop``) calls.
    """
    r = trainer.recipe
    metrics = dict(trainer.train_epoch(epoch, train))
    if epoch == r.epochs or epoch % r.eval_every == 0:
        metrics.update(trainer.evaluate(test() if callable(test) else test))
    return metrics


def drop_last_for(n: int, batch_size: int) -> bool:
    """Keep the last partial batch (as NB201's loader does) unless it would hold one image,
    which BatchNorm cannot normalise in training mode."""
    return n % batch_size == 1


# --------------------------------------------------------------------------- ImageNet (ImageFolder, streamed)


def check_imagenet_root(root: str | os.PathLike[str]) -> tuple[str, ...]:
    """Validate an ImageFolder ``root/{train,val}/<class>/<images>`` tree; return its classes.

    Cheap (lists class folders, does not scan every image), so a driver can fail fast before
    any trial starts.
    """
    path = Path(root).expanduser()
    layout = "expected ROOT/train/<class>/*.JPEG and ROOT/val/<class>/*.JPEG (val sorted into class folders)"
    if not path.is_dir():
        raise RecipeError(f"ImageNet root {path} is not a directory; {layout}; pass it with --data-root")
    missing = [s for s in ("train", "val") if not (path / s).is_dir()]
    if missing:
        raise RecipeError(f"ImageNet root {path} has no {' and no '.join(s + '/' for s in missing)} folder; {layout}")
    classes = {}
    for split in ("train", "val"):
        names = sorted(d.name for d in (path / split).iterdir() if d.is_dir() and not d.name.startswith("."))
        if not names:
            raise RecipeError(f"ImageNet root {path}: {split}/ has no class folders; {layout}")
        classes[split] = tuple(names)
    if classes["train"] != classes["val"]:
        only_train = sorted(set(classes["train"]) - set(classes["val"]))
        only_val = sorted(set(classes["val"]) - set(classes["train"]))
        raise RecipeError(f"ImageNet root {path}: train/ and val/ have different classes (only in train: "
                          f"{only_train[:3]}, only in val: {only_val[:3]}); both need the same class folders")
    if len(classes["train"]) < 2:
        raise RecipeError(f"ImageNet root {path} has {len(classes['train'])} class; a classifier needs >= 2")
    return classes["train"]


def _mix(*values: int) -> int:
    """A 62-bit seed from integers (stable across processes, unlike ``hash``)."""
    h = 0x9E3779B97F4A7C15
    for v in values:
        h = (h ^ (int(v) & 0xFFFFFFFFFFFFFFFF)) * 0xBF58476D1CE4E5B9 & 0xFFFFFFFFFFFFFFFF
        h ^= h >> 31
    return h & ((1 << 62) - 1)


def stratified_indices(targets: Sequence[int], n: int | None, seed: int) -> list[int]:
    """``n`` positions keeping the class proportions (largest remainders get the spare slots);
    all positions when ``n`` is None. Seeded, sorted."""
    total = len(targets)
    if n is None or n >= total:
        return list(range(total))
    if n < 1:
        raise RecipeError(f"a subset needs at least 1 image, got {n}")
    by_class: dict[int, list[int]] = {}
    for i, t in enumerate(targets):
        by_class.setdefault(int(t), []).append(i)
    labels = sorted(by_class)
    quota = {c: len(by_class[c]) * n // total for c in labels}
    order = sorted(labels, key=lambda c: -(len(by_class[c]) * n % total))
    for c in order[: n - sum(quota.values())]:
        quota[c] += 1
    generator = torch.Generator().manual_seed(seed)
    picks: list[int] = []
    for c in labels:
        members = by_class[c]
        perm = torch.randperm(len(members), generator=generator)[: quota[c]].tolist()
        picks.extend(members[i] for i in perm)
    return sorted(picks)


class _EpochSampler(torch.utils.data.Sampler):
    """Yields ``(position, sample_seed)``: a permutation and per-sample seeds from (seed, epoch)."""

    def __init__(self, n: int, seed: int, shuffle: bool) -> None:
        self.n, self.seed, self.shuffle, self.epoch = n, seed, shuffle, 1

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return self.n

    def __iter__(self) -> Iterator[tuple[int, int]]:
        generator = torch.Generator().manual_seed(_mix(self.seed, self.epoch))
        order = torch.randperm(self.n, generator=generator) if self.shuffle else torch.arange(self.n)
        seeds = torch.randint(0, 2**62, (self.n,), generator=generator)
        return iter(zip(order.tolist(), seeds.tolist()))


class _SeededImages(torch.utils.data.Dataset):
    """ImageFolder samples whose random transform draws from a per-sample seed.

    torchvision's random transforms read torch's global RNG; forking it around each sample
    makes a crop depend only on the sample's seed, not on the worker that decoded it.
    """

    def __init__(self, samples: Sequence[tuple[str, int]], transform: Callable, loader: Callable) -> None:
        self.samples, self.transform, self.loader = list(samples), transform, loader

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, key: int | tuple[int, int]) -> tuple[torch.Tensor, int]:
        position, sample_seed = key if isinstance(key, tuple) else (key, None)
        path, target = self.samples[position]
        image = self.loader(path)
        if sample_seed is None:
            return self.transform(image), target
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(sample_seed)
            return self.transform(image), target


class ImageNetData:
    """An ImageFolder ``train/`` + ``val/`` tree streamed through DataLoaders.

    Train: RandomResizedCrop(image_size) + horizontal flip; val: resize(resize) + center crop
    (image_size); both normalised with the ImageNet channel statistics. ``train_images`` /
    ``val_images`` take a stratified seeded subset (quick pipeline checks). ``train(epoch)``
    returns the loader for that epoch; its randomness depends on (seed, epoch) only.
    """

    def __init__(self, root: str | os.PathLike[str], r: Recipe, *, seed: int, device: torch.device | str = "cpu",
                 train_images: int | None = None, val_images: int | None = None, subset_seed: int = 0) -> None:
        from torchvision import datasets, transforms

        self.classes = check_imagenet_root(root)
        root = Path(root).expanduser()
        train_folder = datasets.ImageFolder(str(root / "train"))
        val_folder = datasets.ImageFolder(str(root / "val"))
        for split, folder in (("train", train_folder), ("val", val_folder)):
            if len(folder) == 0:
                raise RecipeError(f"ImageNet root {root}: {split}/ holds no images ({', '.join(_IMAGE_SUFFIXES)})")
        normalize = transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD)
        train_tf = transforms.Compose([transforms.RandomResizedCrop(r.image_size), transforms.RandomHorizontalFlip(),
                                       transforms.ToTensor(), normalize])
        val_tf = transforms.Compose([transforms.Resize(r.resize), transforms.CenterCrop(r.image_size),
                                     transforms.ToTensor(), normalize])
        train_pick = stratified_indices(train_folder.targets, train_images, subset_seed)
        val_pick = stratified_indices(val_folder.targets, val_images, subset_seed)
        self.train_set = _SeededImages([train_folder.samples[i] for i in train_pick], train_tf, train_folder.loader)
        self.val_set = _SeededImages([val_folder.samples[i] for i in val_pick], val_tf, val_folder.loader)
        self.num_classes = len(self.classes)
        self.source = f"ImageFolder {root} ({len(self.train_set)} train / {len(self.val_set)} val images)"
        cuda = torch.device(device).type == "cuda"
        workers = int(r.workers)
        self._sampler = _EpochSampler(len(self.train_set), seed, shuffle=True)
        self._train_loader = torch.utils.data.DataLoader(
            self.train_set, batch_size=r.batch_size, sampler=self._sampler,
            drop_last=drop_last_for(len(self.train_set), r.batch_size),
            num_workers=workers, pin_memory=cuda, persistent_workers=workers > 0)
        self._val_loader = torch.utils.data.DataLoader(self.val_set, batch_size=r.eval_batch_size, shuffle=False,
                                                       num_workers=workers, pin_memory=cuda,
                                                       persistent_workers=workers > 0)

    @property
    def steps_per_epoch(self) -> int:
        return len(self._train_loader)

    def train(self, epoch: int) -> Iterable[Batch]:
        self._sampler.set_epoch(epoch)
        return self._train_loader

    def test(self) -> Iterable[Batch]:
        return self._val_loader
