"""NAP — neural architecture search with pruning (Neurocomputing 2022). [paper + interp]

No code of NAP is public and its full text is not reachable to us: this is the harness's
reconstruction (METHODS.md, "NAP"). Tags below say what comes from the published text
[paper] and what is our reading [interp]; every free choice is a field of ``NAPConfig``.

* [paper] An over-parameterised network with every candidate op is trained, with an
  *unnormalised* relaxation of operation strengths: edge output ``sum_o s[e,o] * o(x)`` over
  the alive non-``none`` ops, ``s`` free reals initialised to 1 (the all-ops network); no
  softmax, sigmoid or sum-to-one anywhere.
* [interp] ``none`` has no strength at all: the parameter is ``(6, 4)`` over
  ``OPS[1:]`` (``strength_matrix()`` shows it as ``(6, 5)`` with a constant 0 ``none``
  column), so it can neither get a gradient nor change. Strengths are shared by all cells
  (one cell type in NB201).
* [interp] DARTS first-order alternation, per training batch: one strength step on the next
  validation batch (Adam, lr 3e-4, betas (0.5, 0.999), weight decay 1e-3 acting as shrinkage
  towards 0; the gradient is taken w.r.t. the strengths only), then one weight step on the
  training batch with the strengths detached (SGD as NAS-Bench-201's reference: Nesterov 0.9,
  lr 0.025 cosine -> 0.001 over all epochs, wd 5e-4 on conv/linear weights, clipping 5).
  A weights-only warm-up of ``floor(warmup_frac * epochs)`` epochs comes first.
* [paper] Weaker ops are pruned during the search. [interp] At the end of epoch
  ``ceil(f * epochs)`` for each ``f`` in ``prune_at`` the weakest alive op of every edge is
  removed (NB201: 4 -> 3 -> 2 -> 1); with ``prune_edges`` an edge whose best alive strength
  is ``<= edge_threshold`` is removed whole (becomes ``none``) at the same events. Pruned
  strengths are frozen at their value when pruned.
* [paper] The final cell keeps the strongest ops and may discard inputs. [interp] ``derive()``
  takes the surviving (or, if pruning did not finish, the strongest alive) op of each edge;
  an edge whose strength is ``<= edge_threshold`` (default 0: a non-positive survivor) or
  that was removed is ``none``.
* [interp] Score (``score_by``): ``'strength'`` — the sum over edges of the strength of the
  arch's op in the snapshot taken just before the first prune (``none`` contributes 0; before
  the first prune, the current strengths); ``'elimination'`` — the sum over edges of the
  prune event at which the arch's op went (survivors ``events + 1``; ``none`` scores
  ``events + 2`` on an edge derive() discards and 0 elsewhere).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Iterable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from common.config import BUDGETS
from methods.base import (
    Batch,
    Meter,
    SearchSetup,
    Ticker,
    check_finite,
    cosine_lr,
    length_or_none,
    set_lr,
    sgd,
    table_scores,
)
from methods.schedules import NAPSchedule
from spaces.nb201 import NONE, NUM_EDGES, OPS, Arch, SuperNet, edge_name, weighted_plan

CANDIDATES = tuple(range(1, len(OPS)))  # ops that have a strength: every op but `none`


@dataclass(frozen=True)
class NAPConfig(NAPSchedule):
    N_CANDIDATES: ClassVar[int] = len(CANDIDATES)
    SPACE: ClassVar[str] = "NB201"

    epochs: int = 50
    batch_size: int = 64
    epoch_images: int = 0            # images per epoch from each search half at most (0 = all)
    lr: float = 0.025
    lr_min: float = 0.001
    momentum: float = 0.9
    nesterov: bool = True
    weight_decay: float = 5e-4
    grad_clip: float = 5.0
    arch_lr: float = 3e-4
    arch_betas: tuple = (0.5, 0.999)
    arch_weight_decay: float = 1e-3            # L2 on the strengths: shrinkage towards 0
    warmup_frac: float = 0.2                   # weights-only epochs / epochs (floor)
    prune_at: tuple = (0.5, 0.7, 0.9)          # prune after epoch ceil(f * epochs), one op per edge each
    prune_edges: bool = False                  # also remove whole edges whose best strength <= edge_threshold
    edge_threshold: float = 0.0                # derive: a survivor with strength <= this is `none`
    score_by: str = "strength"                 # 'strength' | 'elimination'

    def __post_init__(self) -> None:
        if not isinstance(self.batch_size, int) or self.batch_size < 1:
            raise ValueError(f"batch_size must be an int >= 1, got {self.batch_size!r}")
        self.check_schedule()
        if self.edge_threshold < 0:
            raise ValueError(f"edge_threshold must be >= 0 (a non-positive survivor is always `none`), "
                             f"got {self.edge_threshold}")
        if self.score_by not in ("strength", "elimination"):
            raise ValueError(f"score_by must be 'strength' or 'elimination', got {self.score_by!r}")

    @classmethod
    def preset(cls, budget: str) -> "NAPConfig":
        if budget == "paper":
            return cls()
        if budget == "cpu":
            # Equal compute (CPU_SEARCH_MACS, 1e13 multiply-adds): a warm-up image costs ~165M
            # (all ops, forward + backward), a later epoch's train + valid pair ~330M (pruning the
            # parameter-free ops first saves little): ~1.1e9 per image of an epoch (measured
            # 5.62e12 at 5,120), so 9,088 images (142 batches) per epoch.
            # One warm-up epoch, then a prune after each later epoch: 4 -> 3 -> 2 -> 1.
            return cls(epochs=4, epoch_images=9088, warmup_frac=0.25, prune_at=(0.5, 0.75, 1.0))
        if budget == "smoke":
            return cls(epochs=4, warmup_frac=0.25, prune_at=(0.5, 0.75, 1.0))
        raise ValueError(f"unknown budget {budget!r}; budgets: {', '.join(BUDGETS)}")


class NAP:
    name: ClassVar[str] = "nap"
    Config: ClassVar[type] = NAPConfig

    def __init__(self, cfg: NAPConfig, setup: SearchSetup):
        self.cfg, self.setup = cfg, setup
        self.supernet = SuperNet(setup.C, setup.N, setup.num_classes).to(setup.device)
        self.optimizer = sgd(self.supernet, cfg.lr, cfg.momentum, cfg.weight_decay, cfg.nesterov)
        # strengths of OPS[1:] on each edge; `none` has none
        self.strength = nn.Parameter(torch.ones(NUM_EDGES, len(CANDIDATES), device=setup.device))
        self.arch_optimizer = torch.optim.Adam([self.strength], lr=cfg.arch_lr, betas=cfg.arch_betas,
                                               weight_decay=cfg.arch_weight_decay)
        self.epoch = 0
        self.alive = torch.zeros(NUM_EDGES, len(OPS), dtype=torch.bool)
        self.alive[:, 1:] = True
        self.elim = torch.zeros(NUM_EDGES, len(OPS), dtype=torch.long)   # prune event of (e, o); 0 = alive
        self.removed = torch.zeros(NUM_EDGES, dtype=torch.bool)          # whole edge removed (threshold)
        self.events_done = 0
        self.snapshot: torch.Tensor | None = None   # (6, 5) strengths before the first prune
        self.snapshot_epoch: int | None = None
        self.history: list[dict] = []

    # ------------------------------------------------------------------ strengths and plans
    def strength_matrix(self, detach: bool = True) -> torch.Tensor:
        """``(6, 5)`` strengths with a constant 0 ``none`` column (never run, never trained)."""
        s = self.strength.detach() if detach else self.strength
        return torch.cat([torch.zeros_like(s[:, :1]), s], dim=1)

    def plan(self, detach: bool = False):
        """Every alive non-``none`` op with its raw strength as coefficient (no normalisation)."""
        return weighted_plan(self.strength_matrix(detach=detach), self.alive)

    def _alive_strength_mask(self) -> torch.Tensor:
        return self.alive[:, 1:].to(self.strength.device)

    # ------------------------------------------------------------------ training
    def arch_step(self, xv: torch.Tensor, yv: torch.Tensor) -> torch.Tensor:
        """One Adam step of the strengths on a validation batch (gradient w.r.t. strengths only)."""
        logits = self.supernet(xv, self.plan())
        loss = F.cross_entropy(logits, yv)
        check_finite(loss, f"NAP strength step, epoch {self.epoch}")
        (grad,) = torch.autograd.grad(loss, [self.strength])
        alive = self._alive_strength_mask()
        frozen = self.strength.detach().clone()
        self.arch_optimizer.zero_grad(set_to_none=True)
        self.strength.grad = grad * alive
        self.arch_optimizer.step()
        with torch.no_grad():  # pruned strengths stay as they were when pruned
            self.strength.copy_(torch.where(alive, self.strength, frozen))
        return loss.detach()

    def weight_step(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One SGD step of the supernet weights on a training batch (strengths detached)."""
        self.optimizer.zero_grad(set_to_none=True)
        logits = self.supernet(x, self.plan(detach=True))
        loss = F.cross_entropy(logits, y)
        check_finite(loss, f"NAP weight step, epoch {self.epoch}")
        loss.backward()
        if self.cfg.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(self.supernet.parameters(), self.cfg.grad_clip)
        self.optimizer.step()
        return loss.detach(), logits.detach()

    @property
    def in_warmup(self) -> bool:
        return self.epoch < self.cfg.warmup_epochs

    def train_epoch(self, train: Iterable[Batch], valid: Iterable[Batch]) -> dict[str, float]:
        cfg = self.cfg
        lr = cosine_lr(self.epoch, cfg.epochs, cfg.lr, cfg.lr_min)
        set_lr(self.optimizer, lr)
        warm = self.in_warmup
        self.supernet.train()
        meter = Meter()
        valid_iter = iter(valid)
        arch_loss: torch.Tensor | float = 0.0
        arch_steps = 0
        ticker = Ticker(self.setup.progress, f"NAP epoch {self.epoch + 1}" + (" (warm-up)" if warm else ""),
                        length_or_none(train), "batches")
        for i, (x, y) in enumerate(train):
            if not warm:
                try:
                    xv, yv = next(valid_iter)
                except StopIteration:
                    raise ValueError("NAP needs a validation batch for every training batch, but `valid` "
                                     "ran out first; give it at least as many batches as `train`") from None
                lv = self.arch_step(xv, yv)
                arch_loss = arch_loss + lv
                arch_steps += 1
            loss, logits = self.weight_step(x, y)
            meter.update(loss, logits, y)
            ticker.tick(i + 1)
        self.epoch += 1
        pruned_before = int((self.elim[:, 1:] > 0).sum())
        due = cfg.prune_epochs()
        while self.events_done < len(due) and due[self.events_done] <= self.epoch:
            self.prune_event()
        s = self.strength.detach()[self._alive_strength_mask()]
        out = {**meter.result("train"), "lr": lr, "warmup": float(warm),
               "alive_ops": int(self.alive.sum()),
               "pruned": int((self.elim[:, 1:] > 0).sum()) - pruned_before}
        if arch_steps:
            out["valid_loss"] = float(arch_loss) / arch_steps
        if s.numel():
            out.update(strength_min=float(s.min()), strength_max=float(s.max()))
        return out

    # ------------------------------------------------------------------ pruning
    def prune_event(self) -> dict:
        """Remove the weakest alive op of every edge (and, with ``prune_edges``, weak edges)."""
        s = self.strength_matrix().cpu().double()
        if self.snapshot is None:
            self.snapshot = s.clone()
            self.snapshot_epoch = self.epoch
        self.events_done += 1
        t = self.events_done
        record: dict = {"event": t, "epoch": self.epoch, "pruned": [], "removed_edges": [],
                        "strength": {edge_name(e): {OPS[o]: float(s[e, o]) for o in self.alive_ops(e)}
                                     for e in range(NUM_EDGES)}}
        for e in range(NUM_EDGES):
            ops = self.alive_ops(e)
            if not ops:
                continue
            if self.cfg.prune_edges and max(float(s[e, o]) for o in ops) <= self.cfg.edge_threshold:
                for o in ops:
                    self.elim[e, o] = t
                self.alive[e] = False
                self.removed[e] = True
                record["removed_edges"].append(edge_name(e))
                continue
            if len(ops) > 1:
                weakest = min(ops, key=lambda o: float(s[e, o]))
                self.alive[e, weakest] = False
                self.elim[e, weakest] = t
                record["pruned"].append([edge_name(e), OPS[weakest]])
        self.history.append(record)
        return record

    def alive_ops(self, e: int) -> list[int]:
        return [o for o in CANDIDATES if bool(self.alive[e, o])]

    # ------------------------------------------------------------------ deriving and scoring
    def _choice(self, e: int, s: torch.Tensor) -> int:
        """The op derive() picks on edge ``e`` (``NONE`` when the edge is discarded)."""
        ops = self.alive_ops(e)
        if not ops:
            return NONE
        best = max(ops, key=lambda o: float(s[e, o]))
        return NONE if float(s[e, best]) <= self.cfg.edge_threshold else best

    def derive(self) -> Arch:
        s = self.strength_matrix().cpu()
        return Arch.from_indices([self._choice(e, s) for e in range(NUM_EDGES)])

    def elimination_values(self) -> torch.Tensor:
        top = len(self.cfg.prune_at) + 1
        s = self.strength_matrix().cpu()
        v = torch.zeros(NUM_EDGES, len(OPS), dtype=torch.float64)
        for e in range(NUM_EDGES):
            for o in CANDIDATES:
                v[e, o] = float(self.elim[e, o]) if self.elim[e, o] > 0 else top
            v[e, NONE] = top + 1 if self._choice(e, s) == NONE else 0.0
        return v

    def score(self, archs: Sequence[Arch]) -> np.ndarray:
        if self.cfg.score_by == "elimination":
            table = self.elimination_values()
        else:
            table = (self.snapshot if self.snapshot is not None else self.strength_matrix().cpu()).double().clone()
            table[:, NONE] = 0.0
        return table_scores(table, archs)

    def extras(self) -> dict:
        def as_dict(m: torch.Tensor | None) -> dict | None:
            if m is None:
                return None
            return {edge_name(e): {OPS[o]: float(m[e, o]) for o in CANDIDATES} for e in range(NUM_EDGES)}

        order = {}
        for e in range(NUM_EDGES):
            gone = sorted((int(self.elim[e, o]), OPS[o]) for o in CANDIDATES if self.elim[e, o] > 0)
            order[edge_name(e)] = [name for _, name in gone]
        return {
            "reconstructed": True,
            "prune_epochs": list(self.cfg.prune_epochs()),
            "events_done": self.events_done,
            "snapshot_epoch": self.snapshot_epoch,
            "snapshot_strengths": as_dict(self.snapshot),
            "final_strengths": as_dict(self.strength_matrix().cpu()),
            "elimination_order": order,
            "alive": {edge_name(e): [OPS[o] for o in self.alive_ops(e)] for e in range(NUM_EDGES)},
            "removed_edges": [edge_name(e) for e in range(NUM_EDGES) if bool(self.removed[e])],
            "events": self.history,
        }

    # ------------------------------------------------------------------ checkpointing
    def state_dict(self) -> dict:
        return {
            "supernet": {k: v.detach().clone() for k, v in self.supernet.state_dict().items()},
            "optimizer": self.optimizer.state_dict(),
            "strength": self.strength.detach().clone(),
            "arch_optimizer": self.arch_optimizer.state_dict(),
            "epoch": self.epoch,
            "alive": self.alive.clone(),
            "elim": self.elim.clone(),
            "removed": self.removed.clone(),
            "events_done": self.events_done,
            "snapshot": None if self.snapshot is None else self.snapshot.clone(),
            "snapshot_epoch": self.snapshot_epoch,
            "history": [dict(r) for r in self.history],
        }

    def load_state_dict(self, state: dict) -> None:
        self.supernet.load_state_dict(state["supernet"])
        self.optimizer.load_state_dict(state["optimizer"])
        with torch.no_grad():
            self.strength.copy_(state["strength"].to(self.strength.device))
        self.arch_optimizer.load_state_dict(state["arch_optimizer"])
        self.epoch = int(state["epoch"])
        self.alive = state["alive"].clone().cpu().bool()
        self.elim = state["elim"].clone().cpu().long()
        self.removed = state["removed"].clone().cpu().bool()
        self.events_done = int(state["events_done"])
        self.snapshot = None if state["snapshot"] is None else state["snapshot"].clone().cpu()
        self.snapshot_epoch = state["snapshot_epoch"]
        self.history = [dict(r) for r in state["history"]]
