"""DNAL — Differentiable Neural Architecture Learning (Guo et al., Pattern Recognition 2022). [code + interp]

From the paper and its code [code]: a scaled-sigmoid gate ``sigmoid(δ·α)`` per channel after
each candidate op's output (``methods.gates.ScaledSigmoidGate``); decoupled training in phases:

1. weights — gates bypassed, the all-ops supernet (every candidate of every edge summed, no
   coefficient), SGD;
2. architecture — conv and BN weights frozen (``requires_grad=False`` on the stem, every cell
   op, the reduction blocks and the head BN; the final Linear classifier keeps training), α
   from 0, ``arch_epochs`` epochs with δ raised geometrically at the start of each epoch
   (continuation; see ``delta_at``), loss = CE + λ·Σ sigmoid(α) (penalty on the UNSCALED
   sigmoid), SGD lr 0.01, momentum 0.9, no weight decay, on the TRAINING data (``valid`` is
   not used by DNAL);
3. binarise at ``sigmoid(δ·α) > 0.9``; optional fine-tune with the hard masks
   (``finetune_epochs``, default 0: NB201 ranking needs no fine-tune).

The NB201 mapping [interp — ours, not the paper's]:

* one gate per (cell, edge, non-``none`` op) on that cell's channel count (C/2C/4C: per-cell
  plans), coefficient = the gate value ``(1, C, 1, 1)`` on the op output (NB201 convs end in
  BN, so this is "after the BN"; skip and pool have no BN and are gated on their raw output);
  ``gate_level='op'`` uses one scalar α per (cell, edge, op) instead;
* δ schedule: ``δ_k = delta_start · (delta_end/delta_start) ** (k / arch_epochs)`` at arch
  epoch k = 1 … arch_epochs (set at the *start* of epoch k). Defaults 1 → 10⁴ in 10 epochs:
  δ_1 = 10^0.4, δ_2 = 10^0.8, …, δ_10 = 10⁴, i.e. ×10^0.4 per epoch. With fewer arch epochs
  (presets) δ still ends at ``delta_end``;
* in the arch phase BN keeps using batch statistics (``arch_bn='batch'``, the supernet stays in
  train mode, as in phase 1; running statistics are buffers, not weights, and keep updating);
  ``arch_bn='frozen'`` uses the phase-1 running statistics instead (eval-mode BN);
* the classifier is trained by the arch-phase optimiser (lr 0.01, momentum 0.9, no decay);
* ``derive()``: per edge the op with the largest kept-channel fraction at the current δ and
  threshold (the fraction is averaged over cells, each cell weighing the same); ties go to the
  larger mean α, then to the earlier op; every op gated off (fraction 0) → ``none``. Before the
  arch phase (α = 0, δ = 1: every gate is 0.5 < 0.9) that is the all-``none`` cell;
* ``score()`` (higher = better), at δ = 1 whatever the current δ (at δ = 10⁴ the gates
  saturate and scores tie): per cell ``Σ_e log σ(ᾱ_{e,op})`` where ᾱ is the mean α of that
  (cell, edge, op) gate over its channels; a ``none`` edge scores the log-probability that
  every op of the edge is off, ``Σ_{o ≠ none} log(1 − σ(ᾱ_{e,o}))``; the arch's score is the
  MEAN over cells of these per-cell log-likelihoods (so it does not grow with depth).

Phase lengths: ``epochs`` is the total the harness runs; ``arch_epochs`` and
``finetune_epochs`` are fixed counts and the weight phase gets the rest
(``weight_epochs = epochs − arch_epochs − finetune_epochs``, at least 1). Defaults: 50 weight
epochs (NB201's reference for an all-ops, DARTS-style supernet) + 10 arch epochs = 60.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Iterable, Sequence, cast

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from common.config import BUDGETS
from methods.base import Batch, Meter, SearchSetup, check_finite, cosine_lr, set_lr, sgd, table_scores
from methods.base import Ticker, length_or_none
from methods.gates import ScaledSigmoidGate, gate_parameters, total_penalty
from methods.schedules import DNALSchedule
from spaces.nb201 import EDGES, NONE, NUM_EDGES, OPS, Arch, SuperNet, Term

_GATED_OPS = tuple(range(1, len(OPS)))  # every op but `none`
PHASES = ("weights", "arch", "finetune")


@dataclass(frozen=True)
class DNALConfig(DNALSchedule):
    epochs: int = 60                 # weight epochs (the rest) + arch_epochs + finetune_epochs
    batch_size: int = 64
    epoch_images: int = 0            # images per epoch from each search half at most (0 = all)
    arch_epochs: int = 10
    finetune_epochs: int = 0
    gate_level: str = "channel"      # 'channel' (one α per channel) or 'op' (one α per edge-op)
    # phase 1 — NB201 reference optimiser for weight-sharing search
    lr: float = 0.025
    lr_min: float = 0.001
    momentum: float = 0.9
    nesterov: bool = True
    weight_decay: float = 5e-4
    grad_clip: float = 5.0
    # phase 2 — architecture (gates) + classifier
    arch_lr: float = 0.01
    arch_momentum: float = 0.9
    arch_grad_clip: float = 0.0      # 0 = off (the paper clips nothing here)
    penalty: float = 5e-5            # λ of λ·Σ sigmoid(α); paper sweeps 1e-5 … 5e-4
    delta_start: float = 1.0
    delta_end: float = 1e4
    threshold: float = 0.9
    arch_bn: str = "batch"           # 'batch' (train-mode BN) or 'frozen' (phase-1 running stats)
    # phase 3 — fine-tune with hard masks (weights only; lr cosine lr → lr_min over these epochs)

    def __post_init__(self) -> None:
        self.check_schedule()

    @classmethod
    def preset(cls, budget: str) -> "DNALConfig":
        if budget == "paper":
            return cls()
        if budget == "cpu":
            # Equal compute (CPU_SEARCH_MACS, 1e13 multiply-adds): an all-ops weight step ~165M
            # per image (forward + backward), a gated arch step ~148M: 3 weight + 2 arch epochs are
            # ~0.79e9 per image of an epoch (measured 5.06e12 at 6,400), so 12,608 images.
            return cls(epochs=5, epoch_images=12608, arch_epochs=2)
        if budget == "smoke":
            return cls(epochs=3, arch_epochs=2)
        raise ValueError(f"unknown budget {budget!r}; budgets: {', '.join(BUDGETS)}")


class _Gates(nn.Module):
    """gates[cell][edge][op - 1]: one ScaledSigmoidGate per (cell, edge, non-none op)."""

    def __init__(self, cell_channels: Sequence[int], per_channel: bool, threshold: float):
        super().__init__()
        self.cells = nn.ModuleList(
            nn.ModuleList(
                nn.ModuleList(ScaledSigmoidGate(c if per_channel else 1, threshold) for _ in _GATED_OPS)
                for _ in EDGES)
            for c in cell_channels)

    def gate(self, cell: int, edge: int, op: int) -> ScaledSigmoidGate:
        gates = cast(nn.ModuleList, cast(nn.ModuleList, self.cells[cell])[edge])
        return cast(ScaledSigmoidGate, gates[op - 1])

    def table(self, fn) -> np.ndarray:
        """``fn(gate)`` for every (cell, edge, op) as a float64 array (cells, 6, 5); ``none`` column NaN."""
        out = np.full((len(self.cells), NUM_EDGES, len(OPS)), np.nan)
        for c in range(len(self.cells)):
            for e in range(NUM_EDGES):
                for o in _GATED_OPS:
                    out[c, e, o] = fn(self.gate(c, e, o))
        return out


class DNAL:
    name: ClassVar[str] = "dnal"
    Config: ClassVar[type] = DNALConfig

    def __init__(self, cfg: DNALConfig, setup: SearchSetup):
        self.cfg, self.setup = cfg, setup
        self.supernet = SuperNet(setup.C, setup.N, setup.num_classes).to(setup.device)
        self.gates = _Gates(self.supernet.cell_channels, cfg.gate_level == "channel", cfg.threshold).to(setup.device)
        self.weight_opt = sgd(self.supernet, cfg.lr, cfg.momentum, cfg.weight_decay, cfg.nesterov)
        # α and the classifier; no weight decay in the arch phase (the paper's rule).
        self.arch_opt = torch.optim.SGD(
            [*gate_parameters(self.gates), *self.supernet.classifier.parameters()],
            lr=cfg.arch_lr, momentum=cfg.arch_momentum, weight_decay=0.0)
        self.finetune_opt = sgd(self.supernet, cfg.lr, cfg.momentum, cfg.weight_decay, cfg.nesterov)
        self.epoch = 0

    # -- plans
    def _all_ops_plan(self) -> list[list[Term]]:
        return [[Term(o) for o in _GATED_OPS] for _ in EDGES]

    def _gated_plan(self) -> list[list[list[Term]]]:
        """Per-cell plans with each op's gate as its coefficient; a fully closed hard gate skips the op."""
        plans = []
        for c in range(self.supernet.num_cells):
            cell = []
            for e in range(NUM_EDGES):
                terms = []
                for o in _GATED_OPS:
                    coef = self.gates.gate(c, e, o).coef()
                    if coef is not None and self.gates.gate(c, e, o).mode == "hard" and not bool(coef.any()):
                        continue  # never run an op whose coefficient is zero
                    terms.append(Term(o, coef))
                cell.append(terms)
            plans.append(cell)
        return plans

    # -- phase set-up (idempotent: called at the start of every epoch)
    def _configure(self, phase: str, phase_epoch: int) -> None:
        cfg = self.cfg
        train_weights = phase != "arch"
        for p in self.supernet.parameters():
            p.requires_grad_(train_weights)
        for p in self.supernet.classifier.parameters():
            p.requires_grad_(True)
        for g in self.gates.modules():
            if isinstance(g, ScaledSigmoidGate):
                g.alpha.requires_grad_(phase == "arch")
                if phase == "weights":
                    g.set_mode("bypass")
                elif phase == "arch":
                    g.set_mode("soft")
                    g.set_delta(cfg.delta_at(phase_epoch))
                else:
                    g.set_mode("hard")
                    g.set_delta(cfg.delta_end)
        if phase == "arch" and phase_epoch == 1:
            for g in self.gates.modules():
                if isinstance(g, ScaledSigmoidGate):
                    g.reset(0.0)  # α from 0 at the start of the arch phase

    # -- training
    def train_epoch(self, train: Iterable[Batch], valid: Iterable[Batch]) -> dict[str, float]:
        cfg = self.cfg
        if self.epoch >= cfg.epochs:
            raise RuntimeError(f"DNAL has already run its {cfg.epochs} epochs")
        phase, k = cfg.phase_of(self.epoch)
        self._configure(phase, k)
        if phase == "weights":
            out = self._weight_epoch(train, k)
        elif phase == "arch":
            out = self._arch_epoch(train, k)
        else:
            out = self._finetune_epoch(train, k)
        self.epoch += 1
        return {**out, "phase": float(PHASES.index(phase)), "phase_epoch": float(k),
                "delta": float(self._delta()), **self._kept_summary()}

    def _step(self, x, y, plan, optimizer, params, clip: float, where: str, meter: Meter, penalty: bool = False):
        optimizer.zero_grad(set_to_none=True)
        logits = self.supernet(x, plan)
        loss = F.cross_entropy(logits, y)
        if penalty and self.cfg.penalty > 0:
            loss = loss + self.cfg.penalty * total_penalty(self.gates)
        check_finite(loss, where)
        loss.backward()
        if clip > 0:
            torch.nn.utils.clip_grad_norm_(params, clip)
        optimizer.step()
        meter.update(loss, logits, y)

    def _weight_epoch(self, train: Iterable[Batch], k: int) -> dict[str, float]:
        cfg = self.cfg
        lr = cosine_lr(k - 1, cfg.weight_epochs, cfg.lr, cfg.lr_min)
        set_lr(self.weight_opt, lr)
        self.supernet.train()
        plan = self._all_ops_plan()
        meter = Meter()
        params = list(self.supernet.parameters())
        ticker = Ticker(self.setup.progress, f"DNAL weight epoch {k}", length_or_none(train), "batches")
        for i, (x, y) in enumerate(train):
            self._step(x, y, plan, self.weight_opt, params, cfg.grad_clip, f"DNAL weight epoch {k}", meter)
            ticker.tick(i + 1)
        return {**meter.result("train"), "lr": lr}

    def _arch_epoch(self, train: Iterable[Batch], k: int) -> dict[str, float]:
        cfg = self.cfg
        self.supernet.train(cfg.arch_bn == "batch")
        meter = Meter()
        params = [p for g in self.arch_opt.param_groups for p in g["params"]]
        ticker = Ticker(self.setup.progress, f"DNAL arch epoch {k}", length_or_none(train), "batches")
        for i, (x, y) in enumerate(train):
            plan = self._gated_plan()  # gate values change every step
            self._step(x, y, plan, self.arch_opt, params, cfg.arch_grad_clip, f"DNAL arch epoch {k}", meter,
                       penalty=True)
            ticker.tick(i + 1)
        with torch.no_grad():
            pen = float(total_penalty(self.gates))
        return {**meter.result("train"), "lr": cfg.arch_lr, "penalty_sum": pen}

    def _finetune_epoch(self, train: Iterable[Batch], k: int) -> dict[str, float]:
        cfg = self.cfg
        lr = cosine_lr(k - 1, cfg.finetune_epochs, cfg.lr, cfg.lr_min)
        set_lr(self.finetune_opt, lr)
        self.supernet.train()
        plan = self._gated_plan()  # hard masks: fixed for the whole phase
        meter = Meter()
        params = list(self.supernet.parameters())
        ticker = Ticker(self.setup.progress, f"DNAL fine-tune epoch {k}", length_or_none(train), "batches")
        for i, (x, y) in enumerate(train):
            self._step(x, y, plan, self.finetune_opt, params, cfg.grad_clip, f"DNAL fine-tune epoch {k}", meter)
            ticker.tick(i + 1)
        return {**meter.result("train"), "lr": lr}

    # -- reading the gates
    def _delta(self) -> float:
        return self.gates.gate(0, 0, 1).delta

    def kept_fractions(self) -> np.ndarray:
        """(6, 5) kept-channel fraction per edge-op at the current δ, averaged over cells (``none``: 0)."""
        table = self.gates.table(lambda g: g.kept_fraction()).mean(axis=0)
        table[:, NONE] = 0.0
        return table

    def mean_alpha(self) -> np.ndarray:
        """(cells, 6, 5) mean α of each gate over its channels (``none`` column NaN)."""
        return self.gates.table(lambda g: float(g.alpha.detach().double().mean()))

    def _mean_alpha_over_cells(self) -> np.ndarray:
        out = np.full((NUM_EDGES, len(OPS)), np.nan)
        out[:, 1:] = self.mean_alpha()[:, :, 1:].mean(axis=0)
        return out

    def _kept_summary(self) -> dict[str, float]:
        kept = self.kept_fractions()[:, 1:]
        return {"kept_fraction_mean": float(kept.mean())}

    def derive(self) -> Arch:
        kept = self.kept_fractions()
        alpha = self._mean_alpha_over_cells()
        ops = []
        for e in range(NUM_EDGES):
            best = max(_GATED_OPS, key=lambda o: (kept[e, o], alpha[e, o], -o))
            ops.append(OPS[best] if kept[e, best] > 0 else "none")
        return Arch(tuple(ops))

    def score_table(self) -> np.ndarray:
        """(6, 5): the per-edge log-probability term of each op, at δ = 1, averaged over cells."""
        a = torch.from_numpy(self.mean_alpha()[:, :, 1:])          # (cells, 6, 4)
        on = F.logsigmoid(a)                                        # log σ(ᾱ)
        off = F.logsigmoid(-a).sum(dim=-1, keepdim=True)            # Σ_o log(1 − σ(ᾱ_o))
        per_cell = torch.cat([off, on], dim=-1)                     # (cells, 6, 5) in OPS order
        return per_cell.mean(dim=0).numpy()

    def score(self, archs: Sequence[Arch]) -> np.ndarray:
        return table_scores(self.score_table(), archs)

    def extras(self) -> dict:
        kept = self.kept_fractions()
        alpha = self._mean_alpha_over_cells()
        phase = self.cfg.phase_of(self.epoch - 1)[0] if self.epoch > 0 else "not started"
        return {
            "phase": phase,
            "epoch": self.epoch,
            "weight_epochs": self.cfg.weight_epochs,
            "delta": self._delta(),
            "gate_level": self.cfg.gate_level,
            "kept_fraction": {f"{t}<-{s}": {OPS[o]: float(kept[e, o]) for o in _GATED_OPS}
                              for e, (t, s) in enumerate(EDGES)},
            "mean_alpha": {f"{t}<-{s}": {OPS[o]: float(alpha[e, o]) for o in _GATED_OPS}
                           for e, (t, s) in enumerate(EDGES)},
            "derived": self.derive().to_str(),
        }

    # -- checkpointing
    def state_dict(self) -> dict:
        return {
            "supernet": self.supernet.state_dict(),
            "gates": self.gates.state_dict(),  # α plus each gate's mode / δ / threshold
            "weight_opt": self.weight_opt.state_dict(),
            "arch_opt": self.arch_opt.state_dict(),
            "finetune_opt": self.finetune_opt.state_dict(),
            "epoch": self.epoch,
        }

    def load_state_dict(self, state: dict) -> None:
        self.supernet.load_state_dict(state["supernet"])
        self.gates.load_state_dict(state["gates"])
        self.weight_opt.load_state_dict(state["weight_opt"])
        self.arch_opt.load_state_dict(state["arch_opt"])
        self.finetune_opt.load_state_dict(state["finetune_opt"])
        self.epoch = int(state["epoch"])
