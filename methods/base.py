"""The method interface and the helpers every method shares (the registry: ``methods.registry``).

A method is one class in its own module, listed by name in ``methods.registry``, with a frozen ``Config``
dataclass (defaults = the published schedule, ``preset(budget)`` shrinks it). The harness
builds it as ``cls(cfg, setup)`` and drives it epoch by epoch:

    for epoch in range(cfg.epochs): method.train_epoch(train, valid)
    method.score(archs)   # higher = better, one per arch; what Kendall tau is computed on
    method.derive()       # the method's chosen architecture

Methods take plain typed arguments and a ``torch.device`` from ``SearchSetup``; they never
pick a device, read the CLI, print, or import ray.
"""
from __future__ import annotations

import contextlib
import math
import random
import time
from dataclasses import dataclass, field
from typing import Callable, ClassVar, Iterable, Iterator, Protocol, Sequence, Sized, runtime_checkable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from spaces.nb201 import NUM_EDGES, Arch, Plan, SuperNet, path_plan

Batch = tuple[torch.Tensor, torch.Tensor]


class NonFiniteLossError(FloatingPointError):
    """A training loss became NaN or infinite; the trial is reported failed with this reason."""


# --------------------------------------------------------------------------- setup and protocol


@dataclass
class SearchSetup:
    """What a method gets from the harness besides its own config.

    ``calib`` (training images, no augmentation) and ``valid`` (validation images) are fixed
    lists of batches already on ``device``: every arch of a run is scored on the same batches.
    """

    C: int
    N: int
    num_classes: int
    device: torch.device
    seed: int
    calib: list[Batch] = field(default_factory=list)
    valid: list[Batch] = field(default_factory=list)
    # ``sample_batch(n, seed)``: ``n`` training images of the search's train half (normalised,
    # not augmented, labels included) drawn with ``seed``, on ``device``. Training-free proxies
    # use it for their one minibatch; ``None`` where the harness has no data to give.
    sample_batch: Callable[[int, int], Batch] | None = None
    # ``progress(line)``: the harness passes a function that prints one line prefixed with the
    # trial's name. Methods never print: inside long loops they call it through a ``Ticker``
    # (at most one line per 30 s). ``None`` (the default): nothing is reported.
    progress: Callable[[str], None] | None = None


@runtime_checkable
class SearchMethod(Protocol):
    name: ClassVar[str]
    Config: ClassVar[type]

    def train_epoch(self, train: Iterable[Batch], valid: Iterable[Batch]) -> dict[str, float]: ...

    def derive(self) -> Arch: ...

    def score(self, archs: Sequence[Arch]) -> np.ndarray: ...

    def state_dict(self) -> dict: ...

    def load_state_dict(self, state: dict) -> None: ...


class TrainingFree:
    """What a training-free method (a baseline, a zero-cost proxy) has of the protocol's training
    side: no epochs (``Config.epochs == 0``), nothing to checkpoint."""

    def train_epoch(self, train: Iterable[Batch], valid: Iterable[Batch]) -> dict[str, float]:
        return {}

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass


# --------------------------------------------------------------------------- shared training helpers


def sgd(params_or_model: nn.Module, lr: float, momentum: float, weight_decay: float, nesterov: bool) -> torch.optim.SGD:
    """SGD with weight decay only on conv/linear weights (not on BN parameters or biases)."""
    decay: list[nn.Parameter] = []
    no_decay: list[nn.Parameter] = []
    for name, p in params_or_model.named_parameters():
        if not p.requires_grad:
            continue
        (decay if p.ndim > 1 else no_decay).append(p)
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.SGD(groups, lr=lr, momentum=momentum, nesterov=nesterov and momentum > 0)


def first_images(batches: Sequence[Batch], n: int) -> list[Batch]:
    """The first ``n`` images of a list of batches (all of them when ``n == 0``)."""
    if n <= 0:
        return list(batches)
    out, left = [], n
    for x, y in batches:
        if left <= 0:
            break
        out.append((x[:left], y[:left]) if x.shape[0] > left else (x, y))
        left -= x.shape[0]
    return out


def cosine_lr(epoch: int, total: int, lr_max: float, lr_min: float) -> float:
    """Cosine annealing from ``lr_max`` at epoch 0 to ``lr_min`` at ``total``."""
    if total <= 0:
        return lr_max
    t = min(max(epoch, 0), total) / total
    return lr_min + 0.5 * (lr_max - lr_min) * (1 + math.cos(math.pi * t))


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr


def check_finite(loss: torch.Tensor, where: str) -> None:
    """Fail the trial on a NaN / infinite loss.

    On the CPU at once. On an accelerator, reading the flag would cost a host-device sync every
    step, so the check is left to ``Meter.result`` at the epoch's end: the epoch's loss sum,
    accumulated on the device, carries any NaN or inf of any step.
    """
    if loss.device.type != "cpu":
        return
    if not torch.isfinite(loss).all():
        raise NonFiniteLossError(f"non-finite loss ({loss.item()}) in {where}: lower the learning rate "
                                 "or check the data; the trial stops here")


class Meter:
    """Running sums of loss and accuracy over an epoch (kept on the device: no sync per step)."""

    def __init__(self) -> None:
        self.loss = 0.0
        self.correct = 0.0
        self.n = 0
        self._loss_t: torch.Tensor | None = None
        self._correct_t: torch.Tensor | None = None

    def update(self, loss: torch.Tensor, logits: torch.Tensor, y: torch.Tensor) -> None:
        b = y.shape[0]
        l = loss.detach() * b
        c = (logits.detach().argmax(1) == y).sum()
        self._loss_t = l if self._loss_t is None else self._loss_t + l
        self._correct_t = c if self._correct_t is None else self._correct_t + c
        self.n += b

    def result(self, prefix: str) -> dict[str, float]:
        if self.n == 0 or self._loss_t is None or self._correct_t is None:
            return {}
        loss = float(self._loss_t) / self.n  # the one host-device sync of an epoch
        if not math.isfinite(loss):
            raise NonFiniteLossError(f"non-finite {prefix} loss ({loss}) over an epoch: lower the learning rate "
                                     "or check the data; the trial stops here")
        return {f"{prefix}_loss": loss, f"{prefix}_acc": float(self._correct_t) / self.n}


def rng_state(rng: random.Random) -> list:
    state = rng.getstate()
    return [state[0], list(state[1]), state[2]]


def set_rng_state(rng: random.Random, state: Sequence) -> None:
    rng.setstate((state[0], tuple(state[1]), state[2]))


def cycle(batches: Iterable[Batch], who: str) -> Iterator[Batch]:
    """``batches`` in order, restarting when they run out (architecture steps on valid batches)."""
    while True:
        empty = True
        for b in batches:
            empty = False
            yield b
        if empty:
            raise ValueError(f"{who} needs validation batches for its architecture steps, but `valid` is empty")


def table_scores(table: np.ndarray | torch.Tensor, archs: Sequence[Arch]) -> np.ndarray:
    """Score of each arch = the sum over edges of ``table[edge, op of the arch on that edge]``.

    The shared form of every architecture-parameter score: ``table`` is ``(6, 5)`` in OPS order.
    """
    t = table.detach().cpu().double().numpy() if isinstance(table, torch.Tensor) else np.asarray(table, np.float64)
    if t.shape != (NUM_EDGES, 5):
        raise ValueError(f"a score table is (6, 5) edges x ops, got {t.shape}")
    if not archs:
        return np.empty(0, dtype=np.float64)
    idx = np.array([a.indices for a in archs])
    return t[np.arange(NUM_EDGES)[None, :], idx].sum(axis=1)


# --------------------------------------------------------------------------- progress lines

PROGRESS_EVERY_S = 30.0


def progress_clock() -> float:
    """The clock of progress lines: ``time.monotonic`` (looked up at each call; tests replace it)."""
    return time.monotonic()


def length_or_none(items: Iterable) -> int | None:
    """``len(items)`` where it has one (a list or a DataLoader), else ``None``."""
    return len(items) if isinstance(items, Sized) else None


class Ticker:
    """Rate-limited progress lines for one long loop of a method (methods never print).

    Call ``tick(done)`` after each step of the loop: it calls ``progress`` with one line, e.g.
    ``"one-shot scoring: 340/1000 archs (12.3 s)"`` (seconds since this ticker started), when at
    least ``every_s`` seconds have passed since the last line (or since the start): at most one
    line per ``every_s``, and, while the loop runs, at least one per ``every_s`` plus one step.
    A ``child`` ticker (a nested phase: the scoring inside an evolution, the importance
    evaluations inside a training epoch) shares its parent's rate limit. With ``progress=None``
    nothing is reported and the clock is never read. ``clock`` defaults to ``progress_clock``.
    """

    def __init__(self, progress: Callable[[str], None] | None, what: str, total: int | None = None,
                 unit: str = "", every_s: float = PROGRESS_EVERY_S, clock: Callable[[], float] | None = None,
                 _last: list[float] | None = None):
        if not every_s > 0:
            raise ValueError(f"every_s must be > 0, got {every_s}")
        self.progress, self.what, self.total, self.unit = progress, what, total, unit
        self.every_s, self._clock = every_s, clock
        self.lines = 0  # lines this ticker reported
        self.start = self._now() if progress is not None else 0.0
        self._last = _last if _last is not None else [self.start]  # shared with children

    def _now(self) -> float:
        return (self._clock or progress_clock)()

    def child(self, what: str, total: int | None = None, unit: str = "") -> "Ticker":
        """A ticker for a nested phase: its own label, count and start, its parent's rate limit."""
        return Ticker(self.progress, what, total, unit, self.every_s, self._clock, _last=self._last)

    def line(self, done: int | None, note: str, now: float) -> str:
        text = self.what + ":"
        if done is not None:
            text += f" {done}" if self.total is None else f" {done}/{self.total}"
            text += f" {self.unit}" if self.unit else ""
        if note:
            text += ("," if done is not None else "") + " " + note
        return f"{text} ({now - self.start:.1f} s)"

    def tick(self, done: int | None = None, note: str = "") -> bool:
        """Report ``done`` (of ``total``) and ``note`` if ``every_s`` has passed; True if a line went out."""
        if self.progress is None:
            return False
        now = self._now()
        if now - self._last[0] < self.every_s:
            return False
        self._last[0] = now
        self.lines += 1
        self.progress(self.line(done, note, now))
        return True


def as_ticker(progress: Callable[[str], None] | Ticker | None, what: str, total: int | None = None,
              unit: str = "") -> Ticker:
    """A ``Ticker`` for a phase: a child of ``progress`` if it is one, else a new one on it."""
    if isinstance(progress, Ticker):
        return progress.child(what, total, unit)
    return Ticker(progress, what, total, unit)


# --------------------------------------------------------------------------- one-shot scoring


@contextlib.contextmanager
def preserved_bn_statistics(model: nn.Module) -> Iterator[None]:
    """Restore the model's BN running statistics on exit (scoring must never disturb training)."""
    saved = {k: v.clone() for k, v in model.state_dict().items() if "running" in k or "num_batches" in k}
    try:
        yield
    finally:
        model.load_state_dict(saved, strict=False)


def _bn_layers(model: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    return [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


@torch.inference_mode()
def one_shot_eval(
    model: nn.Module,
    forward: Callable[[torch.Tensor], torch.Tensor],
    calib: Sequence[Batch],
    valid: Sequence[Batch],
) -> tuple[float, float]:
    """Accuracy and loss of ``forward`` on ``valid`` after recalibrating BN on ``calib``.

    BN running statistics are reset and recomputed as a cumulative average (``momentum=None``)
    over the calibration batches with the model in train mode, then the model is evaluated in
    eval mode. The model's previous mode and BN momenta are restored; its running statistics
    are left as calibrated (callers that need the old ones save them).
    """
    was_training = model.training
    bns = _bn_layers(model)
    momenta = [bn.momentum for bn in bns]
    try:
        if calib:
            for bn in bns:
                bn.reset_running_stats()
                bn.momentum = None
            model.train()
            for x, _ in calib:
                forward(x)
        model.eval()
        loss_sum = torch.zeros((), device=valid[0][0].device)
        correct = torch.zeros((), device=valid[0][0].device)
        n = 0
        for x, y in valid:
            logits = forward(x)
            loss_sum += F.cross_entropy(logits.float(), y, reduction="sum")
            correct += (logits.argmax(1) == y).sum()
            n += y.shape[0]
        return float(correct) / n, float(loss_sum) / n
    finally:
        for bn, m in zip(bns, momenta):
            bn.momentum = m
        model.train(was_training)


CPU_VALID_BATCH = 64


def one_shot_scores(
    supernet: SuperNet,
    archs: Sequence[Arch],
    calib: Sequence[Batch],
    valid: Sequence[Batch],
    plan_of: Callable[[Arch], Plan] = path_plan,
    by: str = "acc",
    progress: Callable[[str], None] | Ticker | None = None,
) -> np.ndarray:
    """The shared one-shot score of each arch: accuracy (``by='acc'``) or minus loss (``'loss'``).

    Every arch is scored on the same calibration and validation batches; the supernet's own
    BN statistics are restored afterwards so scoring never disturbs training. On the CPU the
    batches run in NHWC layout (``SuperNet.memory_format``); the plain layout gives the same
    scores (a test holds both to each other). ``progress`` (``SearchSetup.progress``, or a
    ``Ticker`` of an enclosing phase) gets a line at most every 30 s: archs scored so far.
    """
    if by not in ("acc", "loss"):
        raise ValueError(f"one-shot score is 'acc' or 'loss', got {by!r}")
    if not valid:
        raise ValueError("one-shot scoring needs validation batches (SearchSetup.valid is empty)")
    if supernet.memory_format == "auto" and valid[0][0].device.type == "cpu":
        # The supernet would convert every batch to NHWC for every arch: convert them once.
        calib = [(x.contiguous(memory_format=torch.channels_last), y) for x, y in calib]
        # Validation runs in eval mode, image by image independent: on the CPU, batches of 64
        # stay in cache and run ~1.5x faster than 256 (measured on 2 cores, C=16). Calibration
        # keeps its batches: BN's batch statistics depend on them.
        xs, ys = torch.cat([x for x, _ in valid]), torch.cat([y for _, y in valid])
        valid = [(xs[i:i + CPU_VALID_BATCH].contiguous(memory_format=torch.channels_last), ys[i:i + CPU_VALID_BATCH])
                 for i in range(0, len(ys), CPU_VALID_BATCH)]
    out = np.empty(len(archs), dtype=np.float64)
    ticker = as_ticker(progress, "one-shot scoring", len(archs), "archs")
    with preserved_bn_statistics(supernet):
        for i, arch in enumerate(archs):
            plan = plan_of(arch)
            acc, loss = one_shot_eval(supernet, lambda x: supernet(x, plan), calib, valid)
            out[i] = acc if by == "acc" else -loss
            ticker.tick(i + 1)
    return out
