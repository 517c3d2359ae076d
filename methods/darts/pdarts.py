"""P-DARTS in the DARTS space (Chen et al., ICCV 2019). [code]

What follows the authors' ``train_search.py`` (chenxin061/pdarts) [code]:

* Three stages, each a FRESH ``spaces.darts.SuperNet`` (new weights, new α =
  ``alpha_init_std``·N(0, 1) over the ops still alive, one α table per cell type) of
  ``stage_cells`` = 5 → 11 → 17 cells with ``stage_ops`` = 8 → 5 → 3 ops per edge (``none``
  included). A stage network is built with ``candidates`` = its alive ops, so dropped ops
  allocate no parameters. ``setup.C`` is the search width (16 in the paper; ``add_width`` 0 on
  CIFAR); ``setup.N`` is ignored.
* Edge output = Σ_o softmax(α_e)_o · o(x) over the alive ops (``none`` takes softmax mass and
  is never run).
* Per stage the first ``round(warmup_fraction · stage_epochs)`` epochs (10 of 25) train weights
  only; then each iteration does one α step on a ``valid`` batch (Adam lr 6e-4, betas
  (0.5, 0.999), wd 1e-3, first order, both α tables in one optimiser, their gradient clipped at
  5) BEFORE one weight step on the ``train`` batch (SGD lr 0.025 cosine → 0 per stage,
  momentum 0.9, wd 3e-4 on conv/linear weights, clip 5). Batch 96.
* Skip dropout after every stride-1 identity skip (every normal-cell skip, and reduce-cell
  skips between intermediate nodes — the code wraps every ``Identity``), in α steps too; base
  rate per stage 0.0, 0.4, 0.7 (CIFAR-10); at 0-based epoch e of a stage of S epochs with W
  warm-up epochs: ``p₀·(S − e − 1)/S`` for e < W, then ``p₀·exp(−0.2·(e − W))``.
* Between stages: per edge and cell type drop the ops with the lowest softmax (``none``
  included) down to the next stage's count.
* After the last stage (the code's ``get_min_k_no_zero`` / ``keep_2_branches`` /
  ``delete_min_sk_prob``, re-written): drop ``none``; the op of each edge is its largest-softmax
  op; each intermediate node keeps the 2 edges whose chosen op has the largest softmax; then,
  in the NORMAL cell only, while more than ``skip_cap`` (M=2) skip-connects are selected, the
  selected skip with the smallest softmax gets probability 0 and the op choice and the per-node
  top-2 are recomputed from the modified probabilities (so that edge takes its next-best op, or
  another edge of its node takes its place).

Our reading / harness choices [interp]:

* ``epochs`` is split evenly over the stages (remainder to the last ones); dropout masks come
  from a method-owned ``torch.Generator`` (bit-identical resume); every stage network is built
  under ``torch.random.fork_rng`` seeded from a generator seeded by ``setup.seed``.
* Ties: the earlier op / the earlier edge wins (the code's ``sorted`` picks the later edge of a
  tie; real softmax values never tie).
* ``derive()`` before the search ends applies the final rule to the running stage's α.
* There is no tabular ground truth in this space: ``score`` raises ``NotImplementedError``.
* ``max_batches`` (harness knob, 0 = off) caps the batches of every epoch: the smoke and cpu
  presets use it, as an all-ops DARTS supernet costs ~0.2 CPU-s per 32x32 image at C=16.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Iterable, Sequence

import numpy as np
import torch
from torch import nn

from common.config import BUDGETS
from methods.base import Batch, Meter, SearchSetup, Ticker, cosine_lr, cycle, length_or_none, set_lr, sgd
from methods.darts.common import (NODE_EDGES, NODES, NUM_OPS, best_op, check_layers, coef_plan, edge_name,
                                  first_order_arch_step, logsoftmax_table, make_genotype, skip_dropout, table_dict,
                                  top2_per_node, weight_step)
from methods.schedules import PDARTSSchedule, check_epoch_cap
from spaces.darts import CELL_TYPES, NONE, NUM_EDGES, PRIMITIVES, SKIP, Genotype, SuperNet


@dataclass(frozen=True)
class DartsPDARTSConfig(PDARTSSchedule):
    NUM_OPS: ClassVar[int] = NUM_OPS
    MIN_LAST_OPS: ClassVar[int] = 2  # the last stage needs a non-none op
    EXAMPLE_CELLS: ClassVar[str] = "(5, 11, 17)"

    epochs: int = 75                                # split evenly over the stages (25 each)
    batch_size: int = 96
    max_batches: int = 0                            # batches per epoch at most (0 = all the harness gives)
    stage_cells: tuple[int, ...] = (5, 11, 17)      # cells of each stage's network
    stage_ops: tuple[int, ...] = (8, 5, 3)          # alive ops per edge (with `none`) in each stage
    dropout_rates: tuple[float, ...] = (0.0, 0.4, 0.7)  # skip dropout base rate per stage (CIFAR-10)
    warmup_fraction: float = 0.4                    # weights-only epochs per stage (10 of 25)
    dropout_decay: float = 0.2                      # p₀·exp(−decay·(e − W)) once α trains
    lr: float = 0.025
    lr_min: float = 0.0
    momentum: float = 0.9
    weight_decay: float = 3e-4
    grad_clip: float = 5.0
    arch_lr: float = 6e-4
    arch_beta1: float = 0.5
    arch_beta2: float = 0.999
    arch_weight_decay: float = 1e-3
    arch_grad_clip: float = 5.0
    alpha_init_std: float = 1e-3
    skip_cap: int = 2                               # M: at most this many skip-connects in the normal cell

    def __post_init__(self) -> None:
        self.check_schedule()
        for c in self.stage_cells:
            check_layers(c, "a stage_cells entry")
        check_epoch_cap(self.max_batches)

    @classmethod
    def preset(cls, budget: str) -> "DartsPDARTSConfig":
        if budget == "paper":
            return cls()
        if budget == "cpu":
            # the smallest schedule that keeps every phase (2 epochs per stage: 1 warm-up, 1 with α
            # steps) at a real depth progression 3 -> 4 -> 5 cells
            return cls(epochs=6, batch_size=64, stage_cells=(3, 4, 5), max_batches=4)
        if budget == "smoke":
            # every stage runs (1 epoch each, with α steps: warm-up rounds to 0 at 1 epoch) at depth
            # 3 -> 3 -> 4 (3 is the least depth with a normal and a reduction cell; the last stage
            # rebuilds at a new depth)
            return cls(epochs=3, batch_size=16, stage_cells=(3, 3, 4), max_batches=2)
        raise ValueError(f"unknown budget {budget!r}; budgets: {', '.join(BUDGETS)}")


def pdarts_parse(probs: np.ndarray, alive: Sequence[Sequence[int]], skip_cap: int | None
                 ) -> tuple[list[tuple[int, int]], dict]:
    """P-DARTS's final rule for one cell type.

    ``probs`` (14, 8): the last stage's softmax over its alive ops (0 elsewhere); ``alive[e]``: the
    ops alive on edge e. Drop ``none``; op of an edge = its largest-probability op; per node the
    2 edges with the largest chosen probability; then, if ``skip_cap`` is not ``None``, while more
    than ``skip_cap`` selected edges are skips, set the weakest selected skip's probability to 0
    and re-select (op per edge, then per-node top-2). Returns ((edge, op) pairs, info).
    """
    p = np.array(probs, dtype=np.float64, copy=True)
    p[:, NONE] = 0.0
    cand = [[o for o in alive[e] if o != NONE] for e in range(NUM_EDGES)]
    for e, ops in enumerate(cand):
        if not ops:
            raise ValueError(f"edge {edge_name(e)} has no non-none op alive: cannot parse")

    def select() -> list[tuple[int, int]]:
        ops = [best_op(p[e], cand[e]) for e in range(NUM_EDGES)]
        keep = top2_per_node([p[e, ops[e]] for e in range(NUM_EDGES)])
        return [(e, ops[e]) for e in keep]

    pairs = select()
    before = sum(o == SKIP for _, o in pairs)
    zeroed: list[str] = []
    if skip_cap is not None:
        while sum(o == SKIP for _, o in pairs) > skip_cap:
            skips = [e for e, o in pairs if o == SKIP]
            weakest = min(skips, key=lambda e: (p[e, SKIP], e))
            p[weakest, SKIP] = 0.0
            zeroed.append(edge_name(weakest))
            pairs = select()
    info = {"skips_before_cap": int(before), "skips_after_cap": int(sum(o == SKIP for _, o in pairs)),
            "skip_zeroed_edges": zeroed}
    return pairs, info


class DartsPDARTS:
    name: ClassVar[str] = "pdarts"
    space: ClassVar[str] = "darts"
    uses_setup_N: ClassVar[bool] = False  # depth comes from `stage_cells`
    Config: ClassVar[type] = DartsPDARTSConfig

    def __init__(self, cfg: DartsPDARTSConfig, setup: SearchSetup):
        self.cfg, self.setup = cfg, setup
        self.device = setup.device
        self.init_gen = torch.Generator().manual_seed(int(setup.seed))                     # nets and α
        self.drop_gen = torch.Generator(device=setup.device).manual_seed(int(setup.seed) + 1)  # dropout masks
        self.epoch = 0
        self.stage = 0
        self.stage_epoch = 0
        self.done = False
        # alive[s][cell type][e]: op indices alive on edge e in stage s
        self.alive: list[dict[str, list[list[int]]]] = [{ct: [list(range(NUM_OPS)) for _ in range(NUM_EDGES)]
                                                         for ct in CELL_TYPES}]
        # logsm[s][cell type]: (14, 8) log-softmax at the end of finished stage s (-inf where not alive)
        self.logsm: list[dict[str, torch.Tensor]] = []
        self.final: Genotype | None = None
        self.final_info: dict = {}
        self._build_stage()

    # -- stage networks
    def _build_stage(self) -> None:
        cfg, s = self.cfg, self.stage
        seed = int(torch.randint(0, 2**62, (1,), generator=self.init_gen))
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            net = SuperNet(self.setup.C, cfg.stage_cells[s], self.setup.num_classes,
                           candidates={ct: [list(ops) for ops in self.alive[s][ct]] for ct in CELL_TYPES})
        self.supernet = net.to(self.device)
        k = cfg.stage_ops[s]
        self.alpha = {ct: nn.Parameter((cfg.alpha_init_std * torch.randn(NUM_EDGES, k, generator=self.init_gen))
                                       .to(self.device)) for ct in CELL_TYPES}
        self.alive_idx = {ct: torch.tensor(self.alive[s][ct], dtype=torch.long, device=self.device)
                          for ct in CELL_TYPES}
        self.weight_opt = sgd(self.supernet, cfg.lr, cfg.momentum, cfg.weight_decay, nesterov=False)
        self.arch_opt = torch.optim.Adam(self.arch_parameters(), lr=cfg.arch_lr,
                                         betas=(cfg.arch_beta1, cfg.arch_beta2), weight_decay=cfg.arch_weight_decay)

    def arch_parameters(self) -> list[nn.Parameter]:
        return [self.alpha[ct] for ct in CELL_TYPES]

    def _weights(self, ct: str, alpha: torch.Tensor) -> torch.Tensor:
        """(14, 8) softmax over the alive ops scattered into PRIMITIVES order (0 where not alive)."""
        probs = alpha.softmax(dim=-1)
        return torch.zeros(NUM_EDGES, NUM_OPS, dtype=probs.dtype, device=probs.device).scatter(
            1, self.alive_idx[ct], probs)

    def _plan(self, detach: bool, drop_p: float) -> tuple:
        transform = skip_dropout(drop_p, self.drop_gen) if drop_p > 0 else None
        plans = []
        for ct in CELL_TYPES:
            a = self.alpha[ct].detach() if detach else self.alpha[ct]
            w = self._weights(ct, a)
            plans.append(coef_plan(w, self.alive[self.stage][ct], ct, transform))
        return tuple(plans)

    def current_logsm(self) -> dict[str, torch.Tensor]:
        return {ct: logsoftmax_table(self.alpha[ct], self.alive[self.stage][ct]) for ct in CELL_TYPES}

    # -- training
    def train_epoch(self, train: Iterable[Batch], valid: Iterable[Batch]) -> dict[str, float]:
        cfg = self.cfg
        if self.done:
            raise RuntimeError(f"P-DARTS has already run its {cfg.epochs} epochs ({cfg.num_stages} stages)")
        s, e = self.stage, self.stage_epoch
        total, warm = cfg.stage_epochs[s], cfg.warmup_epochs[s]
        train_arch = e >= warm
        drop_p = cfg.skip_drop_rate(s, e)
        lr = cosine_lr(e, total, cfg.lr, cfg.lr_min)
        set_lr(self.weight_opt, lr)
        self.supernet.train()
        meter, arch_meter = Meter(), Meter()
        where = f"P-DARTS stage {s + 1} epoch {e + 1}"
        valid_batches = cycle(valid, "P-DARTS") if train_arch else None
        weight_params = list(self.supernet.parameters())
        arch_params = self.arch_parameters()
        ticker = Ticker(self.setup.progress, where, length_or_none(train), "batches")
        for i, (x, y) in enumerate(train):
            if cfg.max_batches and i >= cfg.max_batches:
                break
            if valid_batches is not None:
                xv, yv = next(valid_batches)
                plan = self._plan(False, drop_p)
                loss_a, logits_a = first_order_arch_step(lambda t: self.supernet(t, plan), xv, yv, arch_params,
                                                         self.arch_opt, cfg.arch_grad_clip, where + " (α step)")
                arch_meter.update(loss_a, logits_a, yv)
            wplan = self._plan(True, drop_p)
            loss, logits = weight_step(lambda t: self.supernet(t, wplan), x, y, weight_params, self.weight_opt,
                                       cfg.grad_clip, where)
            meter.update(loss, logits, y)
            ticker.tick(i + 1)
        metrics = {**meter.result("train"), **arch_meter.result("arch"), "lr": lr, "stage": float(s + 1),
                   "stage_epoch": float(e + 1), "skip_drop": drop_p, "arch_training": float(train_arch),
                   "alive_ops": float(cfg.stage_ops[s]), "cells": float(cfg.stage_cells[s])}
        self.epoch += 1
        self.stage_epoch += 1
        if self.stage_epoch == total:
            self._finish_stage()
        return metrics

    def _finish_stage(self) -> None:
        cfg, s = self.cfg, self.stage
        logsm = self.current_logsm()
        self.logsm.append(logsm)
        if s + 1 < cfg.num_stages:
            keep = cfg.stage_ops[s + 1]
            nxt: dict[str, list[list[int]]] = {}
            for ct in CELL_TYPES:
                nxt[ct] = []
                for e in range(NUM_EDGES):
                    ranked = sorted(self.alive[s][ct][e], key=lambda o: (-float(logsm[ct][e, o]), o))
                    nxt[ct].append(sorted(ranked[:keep]))
            self.alive.append(nxt)
            self.stage += 1
            self.stage_epoch = 0
            self._build_stage()
        else:
            self.done = True
            self.final, self.final_info = self._decide(logsm)

    def _decide(self, logsm: dict[str, torch.Tensor]) -> tuple[Genotype, dict]:
        pairs, info = {}, {}
        for ct in CELL_TYPES:
            probs = logsm[ct].exp().numpy()
            pairs[ct], info[ct] = pdarts_parse(probs, self.alive[self.stage][ct],
                                               self.cfg.skip_cap if ct == "normal" else None)
        return make_genotype(pairs), info

    # -- results
    def derive(self) -> Genotype:
        if self.final is not None:
            return self.final
        return self._decide(self.current_logsm())[0]

    def score(self, archs: Sequence[object]) -> np.ndarray:
        raise NotImplementedError("the DARTS space has no tabular ground truth: DARTS-space P-DARTS has no "
                                  "score(); use derive() and train the genotype")

    def extras(self) -> dict:
        cfg = self.cfg
        geno, info = (self.final, self.final_info) if self.final is not None else self._decide(self.current_logsm())
        stages = list(self.logsm) + ([] if self.done else [self.current_logsm()])
        return {
            "done": self.done,
            "stage": self.stage + 1,
            "stage_cells": list(cfg.stage_cells),
            "stage_ops": list(cfg.stage_ops),
            "stage_epochs": list(cfg.stage_epochs),
            "warmup_epochs": list(cfg.warmup_epochs),
            "alive_ops": [{ct: {edge_name(e): [PRIMITIVES[o] for o in self.alive[s][ct][e]] for e in range(NUM_EDGES)}
                           for ct in CELL_TYPES} for s in range(len(self.alive))],
            "stage_softmax": [{ct: table_dict(t[ct].exp(), self.alive[s][ct]) for ct in CELL_TYPES}
                              for s, t in enumerate(stages)],
            "skip_cap": cfg.skip_cap,
            "final_rule": info,
            "derived": geno.to_str(),
            "final": self.final is not None,
        }

    # -- checkpointing
    def state_dict(self) -> dict:
        return {
            "epoch": self.epoch,
            "stage": self.stage,
            "stage_epoch": self.stage_epoch,
            "done": self.done,
            "alive": [{ct: [list(ops) for ops in a[ct]] for ct in CELL_TYPES} for a in self.alive],
            "logsm": [{ct: t[ct].clone() for ct in CELL_TYPES} for t in self.logsm],
            "final": self.final.to_str() if self.final is not None else None,
            "final_info": self.final_info,
            "supernet": self.supernet.state_dict(),
            "alpha": {ct: self.alpha[ct].detach().clone() for ct in CELL_TYPES},
            "weight_opt": self.weight_opt.state_dict(),
            "arch_opt": self.arch_opt.state_dict(),
            "init_gen": self.init_gen.get_state(),
            "drop_gen": self.drop_gen.get_state(),
        }

    def load_state_dict(self, state: dict) -> None:
        self.epoch = int(state["epoch"])
        self.stage = int(state["stage"])
        self.stage_epoch = int(state["stage_epoch"])
        self.done = bool(state["done"])
        self.alive = [{ct: [[int(o) for o in ops] for ops in a[ct]] for ct in CELL_TYPES} for a in state["alive"]]
        if len(self.alive) != self.stage + 1:
            raise ValueError(f"corrupt P-DARTS state: {len(self.alive)} alive-op sets for stage {self.stage + 1}")
        self.logsm = [{ct: torch.as_tensor(t[ct], dtype=torch.float64).clone() for ct in CELL_TYPES}
                      for t in state["logsm"]]
        self.final = Genotype.from_str(state["final"]) if state["final"] is not None else None
        self.final_info = dict(state["final_info"])
        self._build_stage()  # the running stage's network (depth, alive ops); its state is loaded next
        self.supernet.load_state_dict(state["supernet"])
        with torch.no_grad():
            for ct in CELL_TYPES:
                self.alpha[ct].copy_(state["alpha"][ct])
        self.weight_opt.load_state_dict(state["weight_opt"])
        self.arch_opt.load_state_dict(state["arch_opt"])
        self.init_gen.set_state(state["init_gen"])
        self.drop_gen.set_state(state["drop_gen"])


__all__ = ["DartsPDARTS", "DartsPDARTSConfig", "pdarts_parse", "NODES", "NODE_EDGES"]
