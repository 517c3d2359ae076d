"""Splits, augmentation on the device, and batching of in-memory uint8 image sets."""
from __future__ import annotations

import math
from collections.abc import Iterator, Sequence

import torch

from harness.data.values import DataError, ImageSet


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


def cutout_mask(height: int, width: int, rows: torch.Tensor, cols: torch.Tensor, length: int) -> torch.Tensor:
    """(n, 1, H, W) float mask: 0 inside one ``length`` x ``length`` square per image centred at
    (rows[i], cols[i]) and clipped at the borders (DeVries & Taylor 2017, DARTS's ``Cutout``:
    y1 = clip(y - L//2), y2 = clip(y + L//2)), 1 elsewhere."""
    device = rows.device
    half = length // 2
    r = torch.arange(height, device=device)[None, :]
    c = torch.arange(width, device=device)[None, :]
    in_rows = (r >= (rows[:, None] - half)) & (r < (rows[:, None] + half))     # (n, H)
    in_cols = (c >= (cols[:, None] - half)) & (c < (cols[:, None] + half))     # (n, W)
    hole = in_rows[:, :, None] & in_cols[:, None, :]
    return (~hole).to(torch.float32)[:, None]


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

    ``cutout > 0`` zeroes one ``cutout``-sided square per training image after normalisation
    (centre uniform over the image, clipped at the borders), as DARTS's CIFAR recipe does.

    ``epoch_images > 0`` caps every pass at that many images (whole batches): each pass is the
    first ``epoch_images`` of a fresh permutation of the whole set, so a capped run keeps seeing
    new images of the full half from pass to pass instead of one fixed subset (a per-epoch step
    budget, not a smaller dataset).

    Each ``iter()`` draws the whole epoch's randomness up front (order, crop offsets, flips, cutout centres),
    so the generator state after starting an epoch does not depend on how many of its batches
    were consumed: ``state_dict()`` taken at any point of an epoch makes a resumed run draw the
    next epoch bit for bit the same.
    """

    def __init__(self, data: ImageSet, batch_size: int, *, mean: Sequence[float], std: Sequence[float],
                 shuffle: bool = True, augment: bool = True, drop_last: bool = True, seed: int = 0,
                 device: torch.device | str = "cpu", cutout: int = 0, epoch_images: int = 0) -> None:
        if epoch_images < 0:
            raise DataError(f"epoch_images must be >= 0 (0 = the whole set every pass), got {epoch_images}")
        if 0 < epoch_images < batch_size:
            raise DataError(f"epoch_images {epoch_images} is below the batch size {batch_size}: a pass would "
                            "yield no batch; raise epoch_images or lower the batch size.")
        if cutout < 0:
            raise DataError(f"cutout must be >= 0 (0 = off), got {cutout}")
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
        self.cutout = int(cutout)
        self.epoch_images = int(epoch_images)
        self.generator = torch.Generator(device=self.device)
        self.generator.manual_seed(seed)
        self.epochs = 0

    def __len__(self) -> int:
        n = len(self.data)
        if 0 < self.epoch_images < n:  # a capped pass yields whole batches only
            return self.epoch_images // self.batch_size
        return n // self.batch_size if self.drop_last else math.ceil(n / self.batch_size)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        order, rows0, cols0, flips = self._draw_epoch()
        holes = self._draw_cutout()
        self.epochs += 1
        return self._batches(order, rows0, cols0, flips, holes)

    def _draw_cutout(self) -> torch.Tensor | None:
        """Cutout centres (2, n): rows then columns, drawn after the rest of the epoch's numbers
        (so ``cutout=0`` leaves every other draw as it was)."""
        if not self.cutout or not self.augment:   # augmentation: training batches only
            return None
        n, (height, width) = len(self.data), self.data.images.shape[-2:]
        rows = torch.randint(0, height, (n,), generator=self.generator, device=self.device)
        cols = torch.randint(0, width, (n,), generator=self.generator, device=self.device)
        return torch.stack([rows, cols])

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
                 flips: torch.Tensor | None, holes: torch.Tensor | None = None
                 ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        size = self.batch_size
        for start in range(0, len(self) * size, size):
            index = order[start:start + size]
            x = self.data.images[index]
            if rows0 is not None and cols0 is not None and flips is not None:
                window = slice(start, start + size)
                x = _crop_flip(x, rows0[window], cols0[window], flips[window], self.pad)
            out = normalize(x, self.mean, self.std)
            if holes is not None:
                window = slice(start, start + size)
                out = out * cutout_mask(out.shape[-2], out.shape[-1], holes[0, window], holes[1, window], self.cutout)
            yield out, self.data.labels[index]

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
