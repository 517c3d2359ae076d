"""DNAL in the DARTS space — Differentiable Neural Architecture Learning (Guo et al., PR 2022). [code + interp]

From the paper and its code [code] (as ``methods.dnal``): a scaled-sigmoid gate
``sigmoid(δ·α)`` per channel after each candidate op's output (``methods.gates``), and three
DECOUPLED phases:

1. weights — gates bypassed, the all-ops supernet (every non-``none`` candidate of every edge
   summed, no coefficient), SGD;
2. architecture — conv and BN weights frozen (``requires_grad=False`` on the whole supernet but
   its final Linear classifier, which keeps training), α from 0, ``arch_epochs`` (10) epochs with
   δ raised geometrically at the start of each epoch 1 → 10⁴ (×10^0.4 per epoch with the
   defaults, ``methods.gates.continuation_delta``), loss = CE + λ·Σ sigmoid(α) (UNSCALED
   sigmoid, λ = 5e-5), SGD lr 0.01, momentum 0.9, no weight decay, on the TRAINING data
   (``valid`` is not used);
3. binarise at ``sigmoid(δ·α) > 0.9``; optional fine-tune with hard masks (``finetune_epochs``,
   default 0).

The DARTS-space mapping [interp — ours, DNAL never searched this space]:

* one gate per (cell, edge, non-``none`` op) over that cell's channels (C, 2C, 4C as the
  reductions double it), ``(1, C, 1, 1)`` coefficient on the op output — after the final BN of
  sep/dil convs, after the BN of the pools (``pool_bn``), on the raw identity of a stride-1
  skip and after the BN of a stride-2 skip (FactorizedReduce); ``gate_level='op'``: one
  scalar α per (cell, edge, op);
* search network ``layers`` = 8 cells at width ``setup.C``; phase-1 optimiser = DARTS's search
  SGD (lr 0.025 cosine → 0.001, momentum 0.9, wd 3e-4 on conv/linear weights, clip 5);
  defaults 50 weight + 10 arch epochs;
* derive, per cell type: kept-channel fraction and mean α of each (edge, op) averaged over
  the cells of that type (each cell weighs the same; types never mixed); the op of an edge =
  the largest kept fraction (ties: larger mean α, then the earlier op); the DARTS constraint:
  each intermediate node keeps the 2 incoming edges with the largest kept fraction of their
  op (ties: larger mean α, then the earlier edge). ``none`` is never chosen: an edge whose ops
  are all gated off still ranks by mean α, and ``extras()["forced_edges"]`` lists the selected
  edges with kept fraction 0 (before the arch phase every gate is 0.5 < 0.9 and the choice is
  by α alone, i.e. the first ops).
* ``score`` raises ``NotImplementedError`` (no tabular ground truth in this space).
* ``max_batches`` (harness knob, 0 = off) caps the batches of every epoch: the smoke and cpu
  presets use it, as an all-ops DARTS supernet costs ~0.2 CPU-s per 32x32 image at C=16.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Iterable, Sequence, cast

import numpy as np
import torch
from torch import nn

from common.config import BUDGETS
from methods.base import Batch, Meter, SearchSetup, Ticker, cosine_lr, length_or_none, set_lr, sgd
from methods.darts.common import (NUM_OPS, best_op, cell_channel_counts, check_layers, edge_name, make_genotype,
                                  table_dict, top2_per_node, weight_step)
from methods.gates import ScaledSigmoidGate, gate_parameters, total_penalty
from methods.schedules import DNALSchedule, check_epoch_cap
from spaces.darts import CELL_TYPES, NONE, NUM_EDGES, PRIMITIVES, Genotype, SuperNet
from spaces.plan import Term

_GATED_OPS = tuple(range(1, NUM_OPS))  # every op but `none`
PHASES = ("weights", "arch", "finetune")


@dataclass(frozen=True)
class DartsDNALConfig(DNALSchedule):
    epochs: int = 60                 # weight epochs (the rest) + arch_epochs + finetune_epochs
    batch_size: int = 64
    max_batches: int = 0                 # batches per epoch at most (0 = all the harness gives)
    layers: int = 8                  # cells of the search network
    arch_epochs: int = 10
    finetune_epochs: int = 0
    gate_level: str = "channel"      # 'channel' (one α per channel) or 'op' (one α per cell-edge-op)
    lr: float = 0.025
    lr_min: float = 0.001
    momentum: float = 0.9
    nesterov: bool = False
    weight_decay: float = 3e-4
    grad_clip: float = 5.0
    arch_lr: float = 0.01
    arch_momentum: float = 0.9
    arch_grad_clip: float = 0.0      # 0 = off
    penalty: float = 5e-5            # λ of λ·Σ sigmoid(α)
    delta_start: float = 1.0
    delta_end: float = 1e4
    threshold: float = 0.9
    arch_bn: str = "batch"           # 'batch' (train-mode BN) or 'frozen' (phase-1 running stats)

    def __post_init__(self) -> None:
        check_layers(self.layers, "layers")
        check_epoch_cap(self.max_batches)
        self.check_schedule()

    @classmethod
    def preset(cls, budget: str) -> "DartsDNALConfig":
        if budget == "paper":
            return cls()
        if budget == "cpu":
            return cls(epochs=5, layers=5, arch_epochs=2, max_batches=4)
        if budget == "smoke":
            return cls(epochs=3, batch_size=16, layers=3, arch_epochs=2, max_batches=2)
        raise ValueError(f"unknown budget {budget!r}; budgets: {', '.join(BUDGETS)}")


def _classifier(net: nn.Module) -> nn.Module:
    """The supernet's final classifier (``.classifier``, else its last ``nn.Linear``)."""
    head = getattr(net, "classifier", None)
    if isinstance(head, nn.Module):
        return head
    linears = [m for m in net.modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise ValueError("the supernet has no Linear classifier")
    return linears[-1]


class _Gates(nn.Module):
    """gates[cell][edge][op - 1]: one ScaledSigmoidGate per (cell, edge, non-none op)."""

    def __init__(self, cell_channels: Sequence[int], per_channel: bool, threshold: float):
        super().__init__()
        self.cells = nn.ModuleList(
            nn.ModuleList(
                nn.ModuleList(ScaledSigmoidGate(c if per_channel else 1, threshold) for _ in _GATED_OPS)
                for _ in range(NUM_EDGES))
            for c in cell_channels)

    def gate(self, cell: int, edge: int, op: int) -> ScaledSigmoidGate:
        gates = cast(nn.ModuleList, cast(nn.ModuleList, self.cells[cell])[edge])
        return cast(ScaledSigmoidGate, gates[op - 1])

    def table(self, cells: Sequence[int], fn) -> np.ndarray:
        """``fn(gate)`` averaged over ``cells`` for every (edge, op): (14, 8) float64, ``none`` column NaN."""
        out = np.full((NUM_EDGES, NUM_OPS), np.nan)
        for e in range(NUM_EDGES):
            for o in _GATED_OPS:
                out[e, o] = float(np.mean([fn(self.gate(c, e, o)) for c in cells]))
        return out


def dnal_parse(kept: np.ndarray, alpha: np.ndarray) -> tuple[list[tuple[int, int]], list[int]]:
    """DNAL's DARTS rule for one cell type: op per edge by kept fraction (ties: mean α, earlier op),
    then per node the 2 edges with the largest kept fraction (ties: mean α, earlier edge). Returns
    ((edge, op) pairs, selected edges whose kept fraction is 0)."""
    ops = [best_op(kept[e], _GATED_OPS, alpha[e]) for e in range(NUM_EDGES)]
    keep = top2_per_node([kept[e, ops[e]] for e in range(NUM_EDGES)], [alpha[e, ops[e]] for e in range(NUM_EDGES)])
    return [(e, ops[e]) for e in keep], [e for e in keep if not kept[e, ops[e]] > 0]


class DartsDNAL:
    name: ClassVar[str] = "dnal"
    space: ClassVar[str] = "darts"
    uses_setup_N: ClassVar[bool] = False  # depth comes from `layers`
    Config: ClassVar[type] = DartsDNALConfig

    def __init__(self, cfg: DartsDNALConfig, setup: SearchSetup):
        self.cfg, self.setup = cfg, setup
        gen = torch.Generator().manual_seed(int(setup.seed))
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(torch.randint(0, 2**62, (1,), generator=gen)))
            net = SuperNet(setup.C, cfg.layers, setup.num_classes)
        self.supernet = net.to(setup.device)
        self.cell_types = list(getattr(self.supernet, "cell_types", None) or
                               ["reduce" if i in (cfg.layers // 3, 2 * cfg.layers // 3) else "normal"
                                for i in range(cfg.layers)])
        channels = cell_channel_counts(setup.C, cfg.layers)
        self.gates = _Gates(channels, cfg.gate_level == "channel", cfg.threshold).to(setup.device)
        self.classifier = _classifier(self.supernet)
        self.weight_opt = sgd(self.supernet, cfg.lr, cfg.momentum, cfg.weight_decay, cfg.nesterov)
        self.arch_opt = torch.optim.SGD([*gate_parameters(self.gates), *self.classifier.parameters()],
                                        lr=cfg.arch_lr, momentum=cfg.arch_momentum, weight_decay=0.0)
        self.finetune_opt = sgd(self.supernet, cfg.lr, cfg.momentum, cfg.weight_decay, cfg.nesterov)
        self.epoch = 0

    def cells_of(self, ct: str) -> list[int]:
        return [i for i, t in enumerate(self.cell_types) if t == ct]

    # -- plans
    def _all_ops_plan(self) -> tuple:
        cell = [[Term(o) for o in _GATED_OPS] for _ in range(NUM_EDGES)]
        return cell, cell

    def _gated_plan(self) -> list[list[list[Term]]]:
        plans = []
        for c in range(len(self.cell_types)):
            cell = []
            for e in range(NUM_EDGES):
                terms = []
                for o in _GATED_OPS:
                    g = self.gates.gate(c, e, o)
                    coef = g.coef()
                    if coef is not None and g.mode == "hard" and not bool(coef.any()):
                        continue  # never run an op whose coefficient is zero
                    terms.append(Term(o, coef))
                cell.append(terms)
            plans.append(cell)
        return plans

    def _configure(self, phase: str, phase_epoch: int) -> None:
        cfg = self.cfg
        for p in self.supernet.parameters():
            p.requires_grad_(phase != "arch")
        for p in self.classifier.parameters():
            p.requires_grad_(True)
        for g in self.gates.modules():
            if isinstance(g, ScaledSigmoidGate):
                g.alpha.requires_grad_(phase == "arch")
                if phase == "weights":
                    g.set_mode("bypass")
                elif phase == "arch":
                    g.set_mode("soft")
                    g.set_delta(cfg.delta_at(phase_epoch))
                    if phase_epoch == 1:
                        g.reset(0.0)  # α from 0 at the start of the arch phase
                else:
                    g.set_mode("hard")
                    g.set_delta(cfg.delta_end)

    # -- training
    def train_epoch(self, train: Iterable[Batch], valid: Iterable[Batch]) -> dict[str, float]:
        cfg = self.cfg
        if self.epoch >= cfg.epochs:
            raise RuntimeError(f"DNAL has already run its {cfg.epochs} epochs")
        phase, k = cfg.phase_of(self.epoch)
        self._configure(phase, k)
        where = f"DNAL {phase} epoch {k}"
        meter = Meter()
        ticker = Ticker(self.setup.progress, where, length_or_none(train), "batches")
        out: dict[str, float] = {}
        if phase == "arch":
            self.supernet.train(cfg.arch_bn == "batch")
            params = [p for g in self.arch_opt.param_groups for p in g["params"]]
            penalty = (lambda: cfg.penalty * total_penalty(self.gates)) if cfg.penalty > 0 else None
            for i, (x, y) in enumerate(train):
                if cfg.max_batches and i >= cfg.max_batches:
                    break
                plan = self._gated_plan()  # gate values change every step
                loss, logits = weight_step(lambda t: self.supernet(t, plan), x, y, params, self.arch_opt,
                                           cfg.arch_grad_clip, where, extra_loss=penalty)
                meter.update(loss, logits, y)
                ticker.tick(i + 1)
            with torch.no_grad():
                out["penalty_sum"] = float(total_penalty(self.gates))
            out["lr"] = cfg.arch_lr
        else:
            total = cfg.weight_epochs if phase == "weights" else cfg.finetune_epochs
            opt = self.weight_opt if phase == "weights" else self.finetune_opt
            lr = cosine_lr(k - 1, total, cfg.lr, cfg.lr_min)
            set_lr(opt, lr)
            self.supernet.train()
            fixed = self._all_ops_plan() if phase == "weights" else self._gated_plan()
            params = list(self.supernet.parameters())
            for i, (x, y) in enumerate(train):
                if cfg.max_batches and i >= cfg.max_batches:
                    break
                loss, logits = weight_step(lambda t: self.supernet(t, fixed), x, y, params, opt, cfg.grad_clip, where)
                meter.update(loss, logits, y)
                ticker.tick(i + 1)
            out["lr"] = lr
        self.epoch += 1
        kept = np.concatenate([self.kept_fractions(ct)[:, 1:].ravel() for ct in CELL_TYPES])
        return {**meter.result("train"), **out, "phase": float(PHASES.index(phase)), "phase_epoch": float(k),
                "delta": float(self.delta), "kept_fraction_mean": float(kept.mean())}

    # -- reading the gates
    @property
    def delta(self) -> float:
        return self.gates.gate(0, 0, 1).delta

    def kept_fractions(self, ct: str) -> np.ndarray:
        """(14, 8) kept-channel fraction per (edge, op) at the current δ, averaged over the cells of
        type ``ct`` (``none``: 0)."""
        t = self.gates.table(self.cells_of(ct), lambda g: g.kept_fraction())
        t[:, NONE] = 0.0
        return t

    def mean_alpha(self, ct: str) -> np.ndarray:
        """(14, 8) mean α per (edge, op) over channels and the cells of type ``ct`` (``none``: NaN)."""
        return self.gates.table(self.cells_of(ct), lambda g: float(g.alpha.detach().double().mean()))

    def _decide(self) -> tuple[Genotype, dict[str, list[str]]]:
        pairs, forced = {}, {}
        for ct in CELL_TYPES:
            pairs[ct], f = dnal_parse(self.kept_fractions(ct), self.mean_alpha(ct))
            forced[ct] = [edge_name(e) for e in f]
        return make_genotype(pairs), forced

    def derive(self) -> Genotype:
        return self._decide()[0]

    def score(self, archs: Sequence[object]) -> np.ndarray:
        raise NotImplementedError("the DARTS space has no tabular ground truth: DARTS-space DNAL has no score(); "
                                  "use derive()")

    def extras(self) -> dict:
        geno, forced = self._decide()
        ops = [list(_GATED_OPS)] * NUM_EDGES
        return {
            "phase": self.cfg.phase_of(self.epoch - 1)[0] if self.epoch > 0 else "not started",
            "epoch": self.epoch,
            "weight_epochs": self.cfg.weight_epochs,
            "delta": self.delta,
            "gate_level": self.cfg.gate_level,
            "cell_types": list(self.cell_types),
            "kept_fraction": {ct: table_dict(self.kept_fractions(ct), ops) for ct in CELL_TYPES},
            "mean_alpha": {ct: table_dict(self.mean_alpha(ct), ops) for ct in CELL_TYPES},
            "forced_edges": forced,
            "derived": geno.to_str(),
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


__all__ = ["DartsDNAL", "DartsDNALConfig", "dnal_parse", "PRIMITIVES"]
