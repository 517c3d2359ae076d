"""The schedules and config checks a method has in every space, written once.

Each method's ``Config`` is a frozen dataclass per space (``methods/<m>.py`` for NAS-Bench-201,
``methods/darts/<m>.py`` for the DARTS space): the fields and their defaults differ (the
space's published settings, the DARTS network's ``layers``), the schedule and the checks of the
shared fields do not. The mixins below hold that shared part; a config inherits from its
method's mixin, says what differs through class attributes, and keeps its own extra checks.
"""
from __future__ import annotations

import math
from typing import Callable, ClassVar, Iterable

import torch

from methods.base import cosine_lr
from methods.gates import continuation_delta
from spaces.plan import Term

_EPS = 1e-9


class HOPNASSchedule:
    """Warm-up, the path-dropout ramp and the shared checks of HOPNAS (``N_CANDIDATES``: the ops of
    an edge that can be dropped, the reference for ``renormalise=False``)."""

    N_CANDIDATES: ClassVar[int]
    epochs: int
    warmup_frac: float
    ramp_frac: float
    drop_rate: float
    renormalise: bool
    lr: float
    lr_min: float
    lr_anneal: str
    ghost_batch: int
    importance_by: str
    importance_calib_images: int
    importance_valid_images: int

    def check_schedule(self) -> None:
        if not isinstance(self.epochs, int) or self.epochs < 1:
            raise ValueError(f"epochs must be an int >= 1, got {self.epochs!r}")
        if not 0.0 <= self.drop_rate < 1.0:
            raise ValueError(f"drop_rate (the all-drop probability of an edge) must be in [0, 1), got {self.drop_rate}")
        if not 0.0 <= self.ramp_frac <= 1.0:
            raise ValueError(f"ramp_frac is a fraction of epochs in [0, 1], got {self.ramp_frac}")
        if not 0.0 < self.warmup_frac <= 1.0:
            raise ValueError(f"warmup_frac is a fraction of epochs in (0, 1] (the snapshot needs training), "
                             f"got {self.warmup_frac}")
        if self.importance_calib_images < 0 or self.importance_valid_images < 0:
            raise ValueError("importance_calib_images / importance_valid_images cap the images of the fixed "
                             "scoring sets used for importance (0 = all of them); they cannot be negative")
        if self.ghost_batch < 0:
            raise ValueError(f"ghost_batch must be >= 0 (0 = per-sample draws), got {self.ghost_batch}")
        if self.lr_anneal not in ("warmup", "all"):
            raise ValueError(f"lr_anneal must be 'warmup' or 'all', got {self.lr_anneal!r}")
        if self.importance_by not in ("loss", "acc"):
            raise ValueError(f"importance_by must be 'loss' or 'acc', got {self.importance_by!r}")
        if self.lr <= 0 or self.lr_min < 0 or self.lr_min > self.lr:
            raise ValueError(f"need 0 <= lr_min <= lr and lr > 0, got lr={self.lr}, lr_min={self.lr_min}")

    @property
    def warmup_epochs(self) -> int:
        return min(self.epochs, max(1, int(math.floor(self.warmup_frac * self.epochs + 0.5))))

    def lr_at(self, epoch: int) -> float:
        """``lr_anneal='warmup'``: cosine from lr to lr_min over the warm-up, then lr_min; 'all': over every epoch."""
        if self.lr_anneal == "all":
            return cosine_lr(epoch, self.epochs, self.lr, self.lr_min)
        w = self.warmup_epochs
        return cosine_lr(epoch, w, self.lr, self.lr_min) if epoch < w else self.lr_min

    def all_drop_prob(self, t: float) -> float:
        """Target probability that all alive ops of an edge drop, at training progress ``t`` epochs."""
        ramp = self.ramp_frac * self.epochs
        return self.drop_rate * (1.0 if ramp <= 0 else min(1.0, max(t, 0.0) / ramp))

    def op_drop_prob(self, k: int, t: float) -> float:
        """Per-op drop probability on an edge with ``k`` alive ops at progress ``t``."""
        big_p = self.all_drop_prob(t)
        if k <= 0 or big_p <= 0:
            return 0.0
        return big_p ** (1.0 / (k if self.renormalise else self.N_CANDIDATES))


class NAPSchedule:
    """Warm-up and prune epochs of NAP, and the checks of its shared fields (``N_CANDIDATES``: the
    ops of an edge that have a strength; ``SPACE``: the space's name for messages)."""

    N_CANDIDATES: ClassVar[int]
    SPACE: ClassVar[str]
    epochs: int
    warmup_frac: float
    prune_at: tuple
    arch_betas: tuple
    lr: float
    lr_min: float
    arch_lr: float

    def check_schedule(self) -> None:
        # JSON / the CLI may hand tuples over as lists of strings: normalise to float tuples.
        try:
            object.__setattr__(self, "arch_betas", tuple(float(b) for b in self.arch_betas))
            object.__setattr__(self, "prune_at", tuple(float(f) for f in self.prune_at))
        except (TypeError, ValueError) as err:
            raise ValueError(f"arch_betas and prune_at are sequences of numbers ({err})") from None
        if not isinstance(self.epochs, int) or self.epochs < 1:
            raise ValueError(f"epochs must be an int >= 1, got {self.epochs!r}")
        if len(self.arch_betas) != 2 or not all(0.0 <= b < 1.0 for b in self.arch_betas):
            raise ValueError(f"arch_betas must be two numbers in [0, 1), got {self.arch_betas}")
        if not 0.0 <= self.warmup_frac < 1.0:
            raise ValueError(f"warmup_frac is a fraction of epochs in [0, 1), got {self.warmup_frac}")
        if len(self.prune_at) > self.N_CANDIDATES - 1:
            raise ValueError(f"a {self.SPACE} edge has {self.N_CANDIDATES} ops with a strength, so at most "
                             f"{self.N_CANDIDATES - 1} prune events; got prune_at={self.prune_at}")
        if any(not self.warmup_frac < f <= 1.0 for f in self.prune_at):
            raise ValueError(f"prune_at are fractions of epochs in (warmup_frac={self.warmup_frac}, 1]: the "
                             f"strengths must train before a prune; got {self.prune_at}")
        if list(self.prune_at) != sorted(self.prune_at):
            raise ValueError(f"prune_at must be non-decreasing, got {self.prune_at}")
        if self.lr <= 0 or self.lr_min < 0 or self.lr_min > self.lr or self.arch_lr <= 0:
            raise ValueError(f"need lr > 0, 0 <= lr_min <= lr and arch_lr > 0; got lr={self.lr}, "
                             f"lr_min={self.lr_min}, arch_lr={self.arch_lr}")

    # -- the schedule, always computed from `epochs` (the harness may override it)
    @property
    def warmup_epochs(self) -> int:
        return int(math.floor(self.warmup_frac * self.epochs + _EPS))

    def prune_epochs(self) -> tuple[int, ...]:
        """After how many completed epochs each prune event fires (1..epochs)."""
        return tuple(min(self.epochs, max(1, math.ceil(f * self.epochs - _EPS))) for f in self.prune_at)


class DNALSchedule:
    """DNAL's three phases (weights, arch with the δ continuation, fine-tune) and their checks."""

    epochs: int
    arch_epochs: int
    finetune_epochs: int
    gate_level: str
    arch_bn: str
    threshold: float
    delta_start: float
    delta_end: float
    penalty: float

    def check_schedule(self) -> None:
        if self.gate_level not in ("channel", "op"):
            raise ValueError(f"gate_level must be 'channel' or 'op', got {self.gate_level!r}")
        if self.arch_bn not in ("batch", "frozen"):
            raise ValueError(f"arch_bn must be 'batch' or 'frozen', got {self.arch_bn!r}")
        if self.arch_epochs < 1:
            raise ValueError(f"DNAL needs arch_epochs >= 1 (the δ continuation), got {self.arch_epochs}")
        if self.finetune_epochs < 0:
            raise ValueError(f"finetune_epochs must be >= 0, got {self.finetune_epochs}")
        if self.weight_epochs < 1:
            raise ValueError(
                f"DNAL epochs={self.epochs} leaves no weight-training epoch: it needs epochs >= "
                f"arch_epochs ({self.arch_epochs}) + finetune_epochs ({self.finetune_epochs}) + 1; "
                "raise epochs or lower arch_epochs/finetune_epochs")
        if not 0.0 < self.threshold < 1.0:
            raise ValueError(f"threshold must be in (0, 1), got {self.threshold}")
        if not 0.0 < self.delta_start <= self.delta_end:
            raise ValueError(f"need 0 < delta_start <= delta_end, got {self.delta_start}, {self.delta_end}")
        if self.penalty < 0:
            raise ValueError(f"penalty (λ) must be >= 0, got {self.penalty}")

    @property
    def weight_epochs(self) -> int:
        return self.epochs - self.arch_epochs - self.finetune_epochs

    def phase_of(self, epoch: int) -> tuple[str, int]:
        """Phase of 0-based global ``epoch`` and the 1-based epoch number inside that phase."""
        if not 0 <= epoch < self.epochs:
            raise ValueError(f"epoch {epoch} outside [0, {self.epochs})")
        if epoch < self.weight_epochs:
            return "weights", epoch + 1
        epoch -= self.weight_epochs
        if epoch < self.arch_epochs:
            return "arch", epoch + 1
        return "finetune", epoch - self.arch_epochs + 1

    def delta_at(self, arch_epoch: int) -> float:
        """δ during arch epoch ``arch_epoch`` (1-based); ``delta_at(0)`` is ``delta_start``."""
        return continuation_delta(arch_epoch, self.arch_epochs, self.delta_start, self.delta_end)


class PDARTSSchedule:
    """P-DARTS's stages: epochs per stage, warm-up per stage, the skip-dropout schedule, and the
    checks of the per-stage tuples (``NUM_OPS``: an edge's ops, ``none`` included, the first
    stage's count; ``MIN_LAST_OPS``: the fewest ops the last stage may keep; ``EXAMPLE_CELLS``:
    a ``stage_cells`` for messages)."""

    NUM_OPS: ClassVar[int]
    MIN_LAST_OPS: ClassVar[int]
    EXAMPLE_CELLS: ClassVar[str]
    epochs: int
    stage_cells: tuple[int, ...]
    stage_ops: tuple[int, ...]
    dropout_rates: tuple[float, ...]
    warmup_fraction: float
    dropout_decay: float
    skip_cap: int
    alpha_init_std: float

    def check_schedule(self) -> None:
        object.__setattr__(self, "stage_cells", tuple(int(c) for c in self.stage_cells))
        object.__setattr__(self, "stage_ops", tuple(int(c) for c in self.stage_ops))
        object.__setattr__(self, "dropout_rates", tuple(float(p) for p in self.dropout_rates))
        n = len(self.stage_cells)
        if n < 1:
            raise ValueError(f"stage_cells needs at least one stage, e.g. {self.EXAMPLE_CELLS}")
        if len(self.stage_ops) != n or len(self.dropout_rates) != n:
            raise ValueError(f"stage_cells {self.stage_cells}, stage_ops {self.stage_ops} and dropout_rates "
                             f"{self.dropout_rates} must have one entry per stage (same length)")
        if self.stage_ops[0] != self.NUM_OPS:
            raise ValueError(f"the first stage searches all {self.NUM_OPS} ops: stage_ops[0] must be "
                             f"{self.NUM_OPS}, got {self.stage_ops}")
        if any(b > a for a, b in zip(self.stage_ops, self.stage_ops[1:])) or self.stage_ops[-1] < self.MIN_LAST_OPS:
            raise ValueError(f"stage_ops must be non-increasing and >= {self.MIN_LAST_OPS}, got {self.stage_ops}")
        if any(not 0.0 <= p < 1.0 for p in self.dropout_rates):
            raise ValueError(f"dropout_rates must be in [0, 1), got {self.dropout_rates}")
        if not 0.0 <= self.warmup_fraction < 1.0:
            raise ValueError(f"warmup_fraction must be in [0, 1), got {self.warmup_fraction}")
        if self.epochs < n:
            raise ValueError(f"P-DARTS needs at least one epoch per stage: epochs={self.epochs} < "
                             f"{n} stages; raise epochs (the paper runs 25 per stage)")
        if self.skip_cap < 0:
            raise ValueError(f"skip_cap must be >= 0, got {self.skip_cap}")
        if self.alpha_init_std < 0:
            raise ValueError(f"alpha_init_std must be >= 0, got {self.alpha_init_std}")

    @property
    def num_stages(self) -> int:
        return len(self.stage_cells)

    @property
    def stage_epochs(self) -> tuple[int, ...]:
        base, rem = divmod(self.epochs, self.num_stages)
        return tuple(base + (1 if s >= self.num_stages - rem else 0) for s in range(self.num_stages))

    @property
    def warmup_epochs(self) -> tuple[int, ...]:
        return tuple(max(0, min(math.floor(self.warmup_fraction * s + 0.5), s - 1)) for s in self.stage_epochs)

    def skip_drop_rate(self, stage: int, epoch: int) -> float:
        """Skip-dropout rate at 0-based ``epoch`` of 0-based ``stage`` (the released code's schedule)."""
        p0 = float(self.dropout_rates[stage])
        total, warm = self.stage_epochs[stage], self.warmup_epochs[stage]
        if epoch < warm:
            return p0 * (total - epoch - 1) / total
        return p0 * math.exp(-self.dropout_decay * (epoch - warm))


def dropout_plans(keep: torch.Tensor, scale: torch.Tensor, alive_ops: Callable[[int, int], Iterable[int]],
                  rescale: bool, device: torch.device) -> list[list[list[Term]]]:
    """Per-cell plans of a path-dropout step from its keep draws.

    ``keep``: bool (cells, edges, ops, batch), ``True`` where a sample keeps an op; ``scale``:
    (cells, edges), the factor kept outputs get when ``rescale``; ``alive_ops(cell, edge)``: the
    ops that may run there. An op every sample dropped never runs; one every sample kept runs
    with a scalar (or no) coefficient; the others get a per-sample 0/scale coefficient.
    """
    batch = keep.shape[-1]
    coefs = (keep.to(torch.float32) * scale[:, :, None, None].to(torch.float32)).to(device)
    kept_all, kept_any = keep.all(-1).tolist(), keep.any(-1).tolist()
    plans = []
    for c in range(keep.shape[0]):
        cell = []
        for e in range(keep.shape[1]):
            terms = []
            for o in alive_ops(c, e):
                if not kept_any[c][e][o]:
                    continue  # dropped for every sample: never run it
                coef: float | torch.Tensor | None
                if kept_all[c][e][o]:
                    coef = float(scale[c, e]) if rescale else None
                else:
                    coef = coefs[c, e, o].view(batch, 1, 1, 1)
                terms.append(Term(o, coef))
            cell.append(terms)
        plans.append(cell)
    return plans


def check_epoch_cap(max_batches: int) -> None:
    """The DARTS configs' per-epoch batch cap."""
    if max_batches < 0:
        raise ValueError(f"max_batches must be >= 0 (0 = no cap), got {max_batches}")
