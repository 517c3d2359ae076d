"""P-DARTS — Progressive Differentiable Architecture Search (Chen et al., ICCV 2019). [code]

Follows the authors' ``train_search.py`` (chenxin061/pdarts), mapped onto NB201:

* Stages: ``len(stage_cells)`` stages (3), each a FRESH ``SuperNet`` of ``stage_cells[s]`` cells
  per NB201 stage (1, 3, 5 → 5, 11, 17 layers with the two reduction blocks) with new
  weights and new α = ``alpha_init_std``·N(0, 1) over the ops still alive. Alive ops per edge
  ``stage_ops`` = 5 → 3 → 2, and 1 after the last stage. The config tuple decides the depth:
  ``setup.N`` is NOT used by P-DARTS (``stage_cells[-1]`` plays its role; the paper preset's 5
  is NB201's N). ``setup.C`` is the width of every stage (P-DARTS's ``add_width`` is 0 on CIFAR).
* Edge output = Σ_o softmax(α_e)_o · o(x) over the alive ops; ``none`` takes softmax mass but is
  never run (its output is zero).
* Epochs: ``epochs`` is split evenly over the stages (any remainder goes to the LAST stages);
  in each stage the first ``round(warmup_fraction · stage_epochs)`` epochs (10 of 25) train
  weights only (at most stage_epochs − 1, so every stage with ≥ 2 epochs trains α). Then each
  iteration does one α step on a ``valid`` batch (Adam lr 6e-4, betas (0.5, 0.999), wd 1e-3,
  first order, α gradient clipped at 5 as in the code) BEFORE one weight step on the ``train``
  batch (SGD lr 0.025, momentum 0.9, wd 3e-4 on conv/linear weights, clip 5; cosine to
  ``lr_min`` = 0.0 — the code's value — over each stage's epochs, restarting every stage).
* Skip dropout: element-wise (inverted) dropout after every identity skip, masks drawn from a
  ``torch.Generator`` this method owns (checkpointed) so runs resume bit-for-bit. Rate at
  0-based epoch e of a stage of S epochs with W warm-up epochs and base rate p₀ (0.0, 0.4,
  0.7): ``p₀·(S − e − 1)/S`` for e < W (the code's linear decay), then ``p₀·exp(−0.2·(e − W))``
  (reset to p₀ when α training starts). Dropout is on during α steps too (the model stays in
  train mode, as in the code). See ``skip_drop_rate``.
* Between stages: per edge keep the ``stage_ops[s+1]`` ops with the largest softmax (``none``
  included; ties → earlier op). After the last stage: drop ``none``, keep the best op per edge,
  then cap skip-connects at ``skip_cap`` (M=2 over the 6 edges) by iteratively replacing the
  selected skip with the smallest softmax weight by that edge's best non-skip, non-none op.
* Initialisation: every stage network is built under ``torch.random.fork_rng`` seeded from a
  CPU generator seeded by ``setup.seed``, and α is drawn from that generator too, so the
  global RNG is never consumed and a resumed run rebuilds the same networks.

Score (``score_by='level'``, higher = better): ``Σ_e [100·level(e, op) + ℓ(e, op)]``.
``level`` = the number of stages the op was alive in (1 = dropped after stage 1, 2 = after
stage 2, 3 = alive in the last stage but not chosen), 4 (= n_stages + 1) = the op of the final
arch (after the skip cap). ``none`` follows the same rule: it survives the between-stage drops
on its softmax like any op and, if alive in the last stage, is removed by the final 'drop none'
step, so it is at most level 3. A skip demoted by the cap is level 3; its replacement is level
4. ``ℓ`` = log-softmax of the op at the last stage it was alive in (the stage that decided it),
clamped at −99 so a level always outranks a lower one. Mid-search, the running stage's ℓ comes
from the current α and its alive ops are at its level. ``score_by='stage1'``: ``Σ_e`` stage-1
log-softmax (the current α while stage 1 runs).

``derive()``: the final arch after the skip cap; before the search ends, the same rule applied
to the current state (best non-``none`` op per edge by level then ℓ, then the skip cap).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, ClassVar, Iterable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from common.config import BUDGETS
from methods.base import Batch, Meter, SearchSetup, check_finite, cosine_lr, set_lr, sgd, table_scores, cycle
from methods.base import Ticker, length_or_none
from methods.schedules import PDARTSSchedule
from spaces.nb201 import EDGES, NONE, NUM_EDGES, OPS, SKIP, Arch, SuperNet, Term

LEVEL_SCALE = 100.0
LOGSM_FLOOR = -99.0


@dataclass(frozen=True)
class PDARTSConfig(PDARTSSchedule):
    NUM_OPS: ClassVar[int] = len(OPS)
    MIN_LAST_OPS: ClassVar[int] = 1
    EXAMPLE_CELLS: ClassVar[str] = "(1, 3, 5)"

    epochs: int = 75                              # split evenly over the stages (25 each)
    batch_size: int = 96
    epoch_images: int = 0            # images per epoch from each search half at most (0 = all)
    stage_cells: tuple[int, ...] = (1, 3, 5)      # cells per NB201 stage, per search stage
    stage_ops: tuple[int, ...] = (5, 3, 2)        # alive ops per edge (with `none`) in each stage
    dropout_rates: tuple[float, ...] = (0.0, 0.4, 0.7)  # skip dropout base rate per stage (CIFAR-10)
    warmup_fraction: float = 0.4                  # weights-only epochs per stage (10 of 25)
    dropout_decay: float = 0.2                    # p₀·exp(−decay·(e − W)) once α trains
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
    skip_cap: int = 2                             # M: at most this many skip-connects in the final cell
    score_by: str = "level"                       # 'level' or 'stage1'

    def __post_init__(self) -> None:
        if any(int(c) != c or c < 1 for c in self.stage_cells):
            raise ValueError(f"stage_cells must be positive ints, got {self.stage_cells}")
        self.check_schedule()
        if self.score_by not in ("level", "stage1"):
            raise ValueError(f"score_by must be 'level' or 'stage1', got {self.score_by!r}")

    @classmethod
    def preset(cls, budget: str) -> "PDARTSConfig":
        if budget == "paper":
            return cls()
        if budget == "cpu":
            # The smallest schedule that keeps every phase: 2 epochs per stage (1 warm-up + 1 with
            # α steps) at one cell per stage (the depth progression is dropped at this budget).
            # Equal compute (CPU_SEARCH_MACS, 1e13 multiply-adds): per image of an epoch, each
            # stage costs a warm-up pass plus a weight and an α pass over its alive ops, ~165M,
            # ~163M and ~134M per pass (forward + backward; the parameter-free ops go first):
            # ~1.39e9 in all (measured 8.64e12 at 6,240), so 7,200 images (75 batches of 96).
            return cls(epochs=6, epoch_images=7200, stage_cells=(1, 1, 1))
        if budget == "smoke":
            # every stage and phase happens (2 epochs per stage, 1 warm-up); the last stage is
            # deeper so the rebuild at a new depth is exercised.
            return cls(epochs=6, stage_cells=(1, 1, 2))
        raise ValueError(f"unknown budget {budget!r}; budgets: {', '.join(BUDGETS)}")


def _skip_dropout(p: float, gen: torch.Generator) -> Callable[[torch.Tensor], torch.Tensor]:
    """Inverted element-wise dropout whose masks come from ``gen`` (resumable, unlike F.dropout)."""
    scale = 1.0 / (1.0 - p)

    def drop(x: torch.Tensor) -> torch.Tensor:
        keep = torch.rand(x.shape, generator=gen, device=x.device, dtype=x.dtype) >= p
        return x * keep.to(x.dtype) * scale

    return drop


class PDARTS:
    name: ClassVar[str] = "pdarts"
    uses_setup_N: ClassVar[bool] = False  # depth comes from `stage_cells`; the harness refuses --N
    Config: ClassVar[type] = PDARTSConfig

    def __init__(self, cfg: PDARTSConfig, setup: SearchSetup):
        self.cfg, self.setup = cfg, setup
        self.device = setup.device
        self.init_gen = torch.Generator().manual_seed(int(setup.seed))            # nets and α
        self.drop_gen = torch.Generator(device=setup.device).manual_seed(int(setup.seed) + 1)  # dropout masks
        self.epoch = 0            # global epochs run
        self.stage = 0            # 0-based running stage (stays at the last one once done)
        self.stage_epoch = 0      # epochs run in the running stage
        self.done = False
        # alive[s][e]: op indices alive on edge e in stage s (one entry per started stage)
        self.alive: list[list[list[int]]] = [[list(range(len(OPS))) for _ in EDGES]]
        # logsm[s]: (6, 5) log-softmax at the end of finished stage s (-inf where not alive)
        self.logsm: list[torch.Tensor] = []
        self.final: Arch | None = None
        self.cap_info: dict = {}
        self._build_stage()

    # -- stage networks
    def _build_stage(self) -> None:
        cfg, s = self.cfg, self.stage
        seed = int(torch.randint(0, 2**62, (1,), generator=self.init_gen))
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            net = SuperNet(self.setup.C, cfg.stage_cells[s], self.setup.num_classes)
        self.supernet = net.to(self.device)
        k = cfg.stage_ops[s]
        alpha = cfg.alpha_init_std * torch.randn(NUM_EDGES, k, generator=self.init_gen)
        self.alpha = nn.Parameter(alpha.to(self.device))
        self.alive_idx = torch.tensor(self.alive[s], dtype=torch.long, device=self.device)  # (6, k)
        self.weight_opt = sgd(self.supernet, cfg.lr, cfg.momentum, cfg.weight_decay, nesterov=False)
        self.arch_opt = torch.optim.Adam([self.alpha], lr=cfg.arch_lr, betas=(cfg.arch_beta1, cfg.arch_beta2),
                                         weight_decay=cfg.arch_weight_decay)

    def _weights(self, alpha: torch.Tensor) -> torch.Tensor:
        """(6, 5) softmax over the alive ops scattered into OPS order (0 where not alive)."""
        probs = alpha.softmax(dim=-1)
        return torch.zeros(NUM_EDGES, len(OPS), dtype=probs.dtype, device=probs.device).scatter(1, self.alive_idx, probs)

    def _plan(self, alpha: torch.Tensor, drop_p: float) -> list[list[Term]]:
        w = self._weights(alpha)
        transform = _skip_dropout(drop_p, self.drop_gen) if drop_p > 0 else None
        return [[Term(o, w[e, o], transform if o == SKIP else None) for o in self.alive[self.stage][e] if o != NONE]
                for e in range(NUM_EDGES)]

    def current_logsm(self) -> torch.Tensor:
        """(6, 5) log-softmax of the running stage's α over its alive ops (-inf elsewhere), on CPU."""
        with torch.no_grad():
            ls = self.alpha.detach().double().log_softmax(dim=-1).cpu()
        out = torch.full((NUM_EDGES, len(OPS)), -math.inf, dtype=torch.float64)
        return out.scatter(1, self.alive_idx.cpu(), ls)

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
        ticker = Ticker(self.setup.progress, where, length_or_none(train), "batches")
        for i, (x, y) in enumerate(train):
            if train_arch:
                assert valid_batches is not None
                xv, yv = next(valid_batches)
                self.arch_opt.zero_grad(set_to_none=True)
                logits = self.supernet(xv, self._plan(self.alpha, drop_p))
                loss_a = F.cross_entropy(logits, yv)
                check_finite(loss_a, where + " (α step)")
                # first order: only α's gradient is needed (the weights' grads are not touched)
                (self.alpha.grad,) = torch.autograd.grad(loss_a, [self.alpha])
                if cfg.arch_grad_clip > 0:
                    torch.nn.utils.clip_grad_norm_([self.alpha], cfg.arch_grad_clip)
                self.arch_opt.step()
                arch_meter.update(loss_a, logits, yv)
            self.weight_opt.zero_grad(set_to_none=True)
            logits = self.supernet(x, self._plan(self.alpha.detach(), drop_p))
            loss = F.cross_entropy(logits, y)
            check_finite(loss, where)
            loss.backward()
            if cfg.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(weight_params, cfg.grad_clip)
            self.weight_opt.step()
            meter.update(loss, logits, y)
            ticker.tick(i + 1)
        metrics = {**meter.result("train"), **arch_meter.result("arch"), "lr": lr, "stage": float(s + 1),
                   "stage_epoch": float(e + 1), "skip_drop": drop_p, "arch_training": float(train_arch),
                   "alive_ops": float(cfg.stage_ops[s])}
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
            nxt = []
            for e in range(NUM_EDGES):
                ops = self.alive[s][e]
                ranked = sorted(ops, key=lambda o: (-float(logsm[e, o]), o))  # largest softmax first
                nxt.append(sorted(ranked[:keep]))
            self.alive.append(nxt)
            self.stage += 1
            self.stage_epoch = 0
            self._build_stage()
        else:
            self.done = True
            self.final, self.cap_info = self._decide()

    # -- levels, scores, decision
    def _level_table(self, with_final: bool = True) -> tuple[np.ndarray, np.ndarray]:
        """(level, ℓ) arrays (6, 5): stages alive in (n+1 for the final op) and the deciding log-softmax."""
        stages = list(self.logsm)
        if not self.done:
            stages.append(self.current_logsm())
        level = np.zeros((NUM_EDGES, len(OPS)))
        ell = np.full((NUM_EDGES, len(OPS)), LOGSM_FLOOR)
        for s, table in enumerate(stages):
            for e in range(NUM_EDGES):
                for o in self.alive[s][e]:
                    level[e, o] = s + 1
                    ell[e, o] = max(float(table[e, o]), LOGSM_FLOOR)
        if with_final and self.final is not None:
            for e, o in enumerate(self.final.indices):
                level[e, o] = self.cfg.num_stages + 1
        return level, ell

    def _decide(self) -> tuple[Arch, dict]:
        """Drop `none`, keep the best op per edge, then cap skip-connects at ``skip_cap``."""
        level, ell = self._level_table(with_final=False)
        key = LEVEL_SCALE * level + ell
        choice = []
        for e in range(NUM_EDGES):
            choice.append(max((o for o in range(len(OPS)) if o != NONE), key=lambda o: (key[e, o], -o)))
        before = sum(o == SKIP for o in choice)
        replaced = []
        while sum(o == SKIP for o in choice) > self.cfg.skip_cap:
            skips = [e for e in range(NUM_EDGES) if choice[e] == SKIP]
            weakest = min(skips, key=lambda e: (key[e, SKIP], e))
            choice[weakest] = max((o for o in range(len(OPS)) if o not in (NONE, SKIP)),
                                  key=lambda o: (key[weakest, o], -o))
            replaced.append(weakest)
        info = {"before": before, "after": sum(o == SKIP for o in choice), "replaced_edges": replaced}
        return Arch.from_indices(choice), info

    def score_table(self) -> np.ndarray:
        """(6, 5) per-edge score of each op; an arch scores the sum over its edges."""
        if self.cfg.score_by == "stage1":
            table = self.logsm[0] if self.logsm else self.current_logsm()
            return table.numpy().copy()
        level, ell = self._level_table()
        return LEVEL_SCALE * level + ell

    def score(self, archs: Sequence[Arch]) -> np.ndarray:
        return table_scores(self.score_table(), archs)

    def derive(self) -> Arch:
        if self.final is not None:
            return self.final
        return self._decide()[0]

    def extras(self) -> dict:
        cfg = self.cfg
        arch, info = (self.final, self.cap_info) if self.final is not None else self._decide()
        stages = list(self.logsm) + ([] if self.done else [self.current_logsm()])
        return {
            "done": self.done,
            "stage": self.stage + 1,
            "stage_cells": list(cfg.stage_cells),
            "stage_epochs": list(cfg.stage_epochs),
            "warmup_epochs": list(cfg.warmup_epochs),
            "alive_ops": [{f"{t}<-{src}": [OPS[o] for o in self.alive[s][e]] for e, (t, src) in enumerate(EDGES)}
                          for s in range(len(self.alive))],
            "stage_softmax": [{f"{t}<-{src}": {OPS[o]: float(math.exp(table[e, o])) for o in self.alive[s][e]}
                               for e, (t, src) in enumerate(EDGES)} for s, table in enumerate(stages)],
            "skip_count_before_cap": int(info["before"]),
            "skip_count_after_cap": int(info["after"]),
            "skip_replaced_edges": [int(e) for e in info["replaced_edges"]],
            "derived": arch.to_str(),
            "final": self.final is not None,
        }

    # -- checkpointing
    def state_dict(self) -> dict:
        return {
            "epoch": self.epoch,
            "stage": self.stage,
            "stage_epoch": self.stage_epoch,
            "done": self.done,
            "alive": [[list(ops) for ops in stage] for stage in self.alive],
            "logsm": [t.clone() for t in self.logsm],
            "final": self.final.to_str() if self.final is not None else None,
            "cap_info": dict(self.cap_info),
            "supernet": self.supernet.state_dict(),
            "alpha": self.alpha.detach().clone(),
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
        self.alive = [[[int(o) for o in ops] for ops in stage] for stage in state["alive"]]
        if len(self.alive) != self.stage + 1:
            raise ValueError(f"corrupt P-DARTS state: {len(self.alive)} alive-op sets for stage {self.stage + 1}")
        self.logsm = [torch.as_tensor(t, dtype=torch.float64).clone() for t in state["logsm"]]
        self.final = Arch.from_str(state["final"]) if state["final"] is not None else None
        self.cap_info = dict(state["cap_info"])
        self._build_stage()  # the running stage's network: its depth and alive ops; weights loaded next
        self.supernet.load_state_dict(state["supernet"])
        with torch.no_grad():
            self.alpha.copy_(state["alpha"])
        self.weight_opt.load_state_dict(state["weight_opt"])
        self.arch_opt.load_state_dict(state["arch_opt"])
        self.init_gen.set_state(state["init_gen"])
        self.drop_gen.set_state(state["drop_gen"])

