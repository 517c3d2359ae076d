"""NAP in the DARTS space — neural architecture search with pruning (Neurocomputing 2022). [paper + interp]

No code of NAP is public and its full text is not reachable to us: this is the harness's
reconstruction (METHODS.md, "NAP"); [paper] = the published description, [interp] = ours.

* [paper] An over-parameterised network with every candidate op, an UNNORMALISED relaxation of
  op strengths: edge output ``Σ_o s[ct, e, o] · o(x)`` over the alive non-``none`` ops, ``s``
  free reals initialised to 1 (the all-ops network); no softmax, sigmoid or sum-to-one.
* [interp] one strength table per cell type (normal, reduce), ``(14, 7)`` over
  ``PRIMITIVES[1:]``: ``none`` has no strength (no gradient, never run). Strengths of the two
  cell types are never compared with each other.
* [interp] DARTS first-order alternation per training batch after a weights-only warm-up of
  ``floor(warmup_frac · epochs)`` epochs: one strength step on the next ``valid`` batch (Adam lr
  3e-4, betas (0.5, 0.999), wd 1e-3 — the DARTS search values; the decay acts as shrinkage),
  then one weight step on the ``train`` batch with strengths detached (DARTS's search SGD: lr
  0.025 cosine → 0.001, momentum 0.9, wd 3e-4 on conv/linear weights, clip 5). Search network:
  ``layers`` = 8 cells (DARTS's search depth) at width ``setup.C``; ``setup.N`` is ignored.
* [paper] weaker ops are pruned during the search; [interp] at the end of epoch
  ``ceil(f · epochs)`` for each ``f`` in ``prune_at`` the weakest alive op of every edge of
  each cell type is removed (defaults: 6 events, 7 → 1 op per edge); pruned strengths freeze.
* [paper] the final cell keeps only the strongest ops and may discard input nodes; [interp]
  the NAP result of a cell type = the global top ``keep_pairs`` (8) alive (edge, op) pairs by
  strength, pairs with strength ``<= pair_threshold`` excluded — NO per-node top-2: an
  intermediate node may get 0, 1 or more than 2 inputs, and a cell input may go unused.

The genotype decision [interp, ours]: that result does not fit ``spaces.darts.Genotype``
(exactly 2 distinct inputs per node). ``derive_nap()`` returns it as a ``NAPGenotype`` (per cell
type a list of (op, src, dst) edges, with ``to_str`` / ``from_str``); it is recorded in
``extras()["nap_genotype"]`` with ``extras()["projection"]``. ``derive()`` returns the
``Genotype`` PROJECTION used for evaluation, per node of each cell type:

1. the node's NAP pairs, one per edge (the strongest op where an edge has several), the 2
   strongest kept (a node with > 2 inputs loses the weakest);
2. a node with < 2 NAP inputs is filled with the strongest alive op of its other incoming
   edges, strongest first (strength only ranks within one cell type).

With full pruning (one op per edge) and ≥ 2 NAP inputs on every node, the projection equals
the NAP cell; otherwise ``extras()["projection"]`` lists every added and dropped edge.
``score`` raises ``NotImplementedError`` (no tabular ground truth in this space).
``max_batches`` (harness knob, 0 = off) caps the batches of every epoch: the smoke and cpu
presets use it, as an all-ops DARTS supernet costs ~0.2 CPU-s per 32x32 image at C=16.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Iterable, Mapping, Sequence

import numpy as np
import torch
from torch import nn

from common.config import BUDGETS
from methods.base import Batch, Meter, SearchSetup, Ticker, cosine_lr, length_or_none, set_lr, sgd
from methods.darts.common import (NODE_EDGES, NODES, NUM_OPS, check_layers, coef_plan, edge_name,
                                  first_order_arch_step, make_genotype, table_dict, weight_step)
from methods.schedules import NAPSchedule, check_epoch_cap
from spaces.darts import CELL_TYPES, EDGES, NONE, NUM_EDGES, PRIMITIVES, Genotype, SuperNet

CANDIDATES = tuple(range(1, NUM_OPS))  # every op but `none`


@dataclass(frozen=True)
class DartsNAPConfig(NAPSchedule):
    N_CANDIDATES: ClassVar[int] = len(CANDIDATES)
    SPACE: ClassVar[str] = "DARTS"

    epochs: int = 50
    batch_size: int = 64
    max_batches: int = 0                 # batches per epoch at most (0 = all the harness gives)
    layers: int = 8                            # cells of the search network
    lr: float = 0.025
    lr_min: float = 0.001
    momentum: float = 0.9
    nesterov: bool = False
    weight_decay: float = 3e-4
    grad_clip: float = 5.0
    arch_lr: float = 3e-4
    arch_betas: tuple = (0.5, 0.999)
    arch_weight_decay: float = 1e-3
    warmup_frac: float = 0.3                   # weights-only epochs / epochs (floor)
    prune_at: tuple = (0.4, 0.5, 0.6, 0.7, 0.8, 0.9)  # prune after epoch ceil(f·epochs), one op per edge each
    keep_pairs: int = 8                        # global top-k (edge, op) pairs per cell type
    pair_threshold: float = 0.0                # a pair with strength <= this is never kept

    def __post_init__(self) -> None:
        self.check_schedule()
        check_layers(self.layers, "layers")
        check_epoch_cap(self.max_batches)
        if not 1 <= self.keep_pairs <= NUM_EDGES * len(CANDIDATES):
            raise ValueError(f"keep_pairs must be in [1, {NUM_EDGES * len(CANDIDATES)}], got {self.keep_pairs}")

    @classmethod
    def preset(cls, budget: str) -> "DartsNAPConfig":
        if budget == "paper":
            return cls()
        if budget == "cpu":
            # 1 warm-up epoch, then strength steps; prunes after epochs 2, 3, 4 (7 -> 4 ops per edge)
            return cls(epochs=4, layers=5, warmup_frac=0.25, prune_at=(0.5, 0.75, 1.0), max_batches=4)
        if budget == "smoke":
            # 1 warm-up epoch + 1 with strength steps, one prune at the end (7 -> 6 ops per edge)
            return cls(epochs=2, batch_size=16, layers=3, warmup_frac=0.5, prune_at=(1.0,), max_batches=2)
        raise ValueError(f"unknown budget {budget!r}; budgets: {', '.join(BUDGETS)}")


@dataclass(frozen=True)
class NAPGenotype:
    """NAP's own cell result: per cell type the kept edges as (op name, src node, dst node).

    Unlike ``Genotype`` a node may have 0, 1 or more than 2 inputs (and an edge more than one op
    when pruning did not finish). ``to_str`` / ``from_str`` round-trip.
    """

    normal: tuple[tuple[str, int, int], ...]
    reduce: tuple[tuple[str, int, int], ...]

    def cell(self, cell_type: str) -> tuple[tuple[str, int, int], ...]:
        return self.normal if cell_type == "normal" else self.reduce

    def to_str(self) -> str:
        return repr({"normal": [list(t) for t in self.normal], "reduce": [list(t) for t in self.reduce]})

    @classmethod
    def from_str(cls, text: str) -> "NAPGenotype":
        import ast
        data = ast.literal_eval(text)
        return cls(**{ct: tuple((str(o), int(s), int(d)) for o, s, d in data[ct]) for ct in CELL_TYPES})

    def in_degree(self, cell_type: str) -> dict[int, int]:
        return {n: sum(1 for _, _, d in self.cell(cell_type) if d == n) for n in NODES}


def nap_top_pairs(strength: np.ndarray, alive: np.ndarray, k: int, threshold: float) -> list[tuple[int, int]]:
    """The global top-``k`` alive (edge, op) pairs of one cell type by strength (> ``threshold``),
    no per-node rule; ties go to the earlier edge, then the earlier op. ``strength`` / ``alive``: (14, 8)."""
    pairs = [(e, o) for e in range(NUM_EDGES) for o in CANDIDATES if alive[e, o] and strength[e, o] > threshold]
    pairs.sort(key=lambda p: (-float(strength[p[0], p[1]]), p[0], p[1]))
    return sorted(pairs[:k])


def project_to_genotype_cell(pairs: Sequence[tuple[int, int]], strength: np.ndarray, alive: np.ndarray
                             ) -> tuple[list[tuple[int, int]], dict]:
    """The documented projection of one cell type's NAP pairs onto exactly 2 inputs per node."""
    out: list[tuple[int, int]] = []
    added, dropped = [], []
    for n in NODES:
        mine: dict[int, int] = {}
        for e, o in sorted(pairs, key=lambda p: (-float(strength[p]), p)):
            if EDGES[e][1] == n and e not in mine:
                mine[e] = o
        ranked = sorted(mine.items(), key=lambda p: (-float(strength[p]), p))
        keep = ranked[:2]
        for e, o in pairs:
            if EDGES[e][1] == n and (e, o) not in keep:
                dropped.append([PRIMITIVES[o], EDGES[e][0], n])
        if len(keep) < 2:
            fill = []
            for e in NODE_EDGES[n]:
                if e in mine:
                    continue
                ops = [o for o in CANDIDATES if alive[e, o]] or list(CANDIDATES)
                o = min(ops, key=lambda q: (-float(strength[e, q]), q))
                fill.append((e, o))
            fill.sort(key=lambda p: (-float(strength[p]), p))
            for p in fill[:2 - len(keep)]:
                keep.append(p)
                added.append([PRIMITIVES[p[1]], EDGES[p[0]][0], n])
        out.extend(keep)
    return sorted(out), {"added": added, "dropped": dropped, "unchanged": not added and not dropped}


class DartsNAP:
    name: ClassVar[str] = "nap"
    space: ClassVar[str] = "darts"
    uses_setup_N: ClassVar[bool] = False  # depth comes from `layers`
    Config: ClassVar[type] = DartsNAPConfig

    def __init__(self, cfg: DartsNAPConfig, setup: SearchSetup):
        self.cfg, self.setup = cfg, setup
        gen = torch.Generator().manual_seed(int(setup.seed))
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(torch.randint(0, 2**62, (1,), generator=gen)))
            net = SuperNet(setup.C, cfg.layers, setup.num_classes)
        self.supernet = net.to(setup.device)
        self.optimizer = sgd(self.supernet, cfg.lr, cfg.momentum, cfg.weight_decay, cfg.nesterov)
        # strengths of PRIMITIVES[1:] per cell type; `none` has none
        self.strength = {ct: nn.Parameter(torch.ones(NUM_EDGES, len(CANDIDATES), device=setup.device))
                         for ct in CELL_TYPES}
        self.arch_optimizer = torch.optim.Adam(self.arch_parameters(), lr=cfg.arch_lr, betas=cfg.arch_betas,
                                               weight_decay=cfg.arch_weight_decay)
        self.epoch = 0
        self.alive = {ct: torch.zeros(NUM_EDGES, NUM_OPS, dtype=torch.bool) for ct in CELL_TYPES}
        for ct in CELL_TYPES:
            self.alive[ct][:, 1:] = True
        self.elim = {ct: torch.zeros(NUM_EDGES, NUM_OPS, dtype=torch.long) for ct in CELL_TYPES}
        self.events_done = 0
        self.snapshot: dict[str, torch.Tensor] | None = None   # strengths before the first prune
        self.history: list[dict] = []

    def arch_parameters(self) -> list[nn.Parameter]:
        return [self.strength[ct] for ct in CELL_TYPES]

    # ------------------------------------------------------------------ strengths and plans
    def strength_matrix(self, ct: str, detach: bool = True) -> torch.Tensor:
        """``(14, 8)`` strengths with a constant 0 ``none`` column (never run, never trained)."""
        s = self.strength[ct].detach() if detach else self.strength[ct]
        return torch.cat([torch.zeros_like(s[:, :1]), s], dim=1)

    def alive_ops(self, ct: str, e: int) -> list[int]:
        return [o for o in CANDIDATES if bool(self.alive[ct][e, o])]

    def plan(self, detach: bool = False) -> tuple:
        """Every alive non-``none`` op with its raw strength as coefficient (no normalisation)."""
        return tuple(coef_plan(self.strength_matrix(ct, detach), [self.alive_ops(ct, e) for e in range(NUM_EDGES)],
                               ct) for ct in CELL_TYPES)

    # ------------------------------------------------------------------ training
    def train_epoch(self, train: Iterable[Batch], valid: Iterable[Batch]) -> dict[str, float]:
        cfg = self.cfg
        if self.epoch >= cfg.epochs:
            raise RuntimeError(f"NAP has already run its {cfg.epochs} epochs")
        lr = cosine_lr(self.epoch, cfg.epochs, cfg.lr, cfg.lr_min)
        set_lr(self.optimizer, lr)
        warm = self.epoch < cfg.warmup_epochs
        self.supernet.train()
        meter, arch_meter = Meter(), Meter()
        valid_iter = iter(valid)
        where = f"NAP epoch {self.epoch + 1}"
        params = list(self.supernet.parameters())
        arch_params = self.arch_parameters()
        ticker = Ticker(self.setup.progress, where + (" (warm-up)" if warm else ""), length_or_none(train), "batches")
        for i, (x, y) in enumerate(train):
            if cfg.max_batches and i >= cfg.max_batches:
                break
            if not warm:
                try:
                    xv, yv = next(valid_iter)
                except StopIteration:
                    raise ValueError("NAP needs a validation batch for every training batch, but `valid` ran out "
                                     "first; give it at least as many batches as `train`") from None
                masks = [self.alive[ct][:, 1:].to(self.strength[ct].device) for ct in CELL_TYPES]
                frozen = [p.detach().clone() for p in arch_params]
                plan = self.plan()
                lv, logits_v = first_order_arch_step(lambda t: self.supernet(t, plan), xv, yv, arch_params,
                                                     self.arch_optimizer, 0.0, where + " (strength step)", masks)
                with torch.no_grad():  # pruned strengths stay as they were when pruned
                    for p, m, f in zip(arch_params, masks, frozen):
                        p.copy_(torch.where(m, p, f))
                arch_meter.update(lv, logits_v, yv)
            wplan = self.plan(detach=True)
            loss, logits = weight_step(lambda t: self.supernet(t, wplan), x, y, params, self.optimizer,
                                       cfg.grad_clip, where)
            meter.update(loss, logits, y)
            ticker.tick(i + 1)
        self.epoch += 1
        due = cfg.prune_epochs()
        pruned = 0
        while self.events_done < len(due) and due[self.events_done] <= self.epoch:
            pruned += sum(len(v) for v in self.prune_event()["pruned"].values())
        out = {**meter.result("train"), **arch_meter.result("valid"), "lr": lr, "warmup": float(warm),
               "alive_ops": float(sum(int(self.alive[ct].sum()) for ct in CELL_TYPES)), "pruned": float(pruned)}
        for ct in CELL_TYPES:
            s = self.strength[ct].detach()[self.alive[ct][:, 1:].to(self.strength[ct].device)]
            out[f"{ct}_strength_min"], out[f"{ct}_strength_max"] = float(s.min()), float(s.max())
        return out

    # ------------------------------------------------------------------ pruning
    def prune_event(self) -> dict:
        """Remove the weakest alive op of every edge, per cell type (ties: the later op goes)."""
        if self.snapshot is None:
            self.snapshot = {ct: self.strength_matrix(ct).cpu().double().clone() for ct in CELL_TYPES}
        self.events_done += 1
        t = self.events_done
        record: dict = {"event": t, "epoch": self.epoch, "pruned": {}, "strength": {}}
        for ct in CELL_TYPES:
            s = self.strength_matrix(ct).cpu().double()
            record["strength"][ct] = {edge_name(e): {PRIMITIVES[o]: float(s[e, o]) for o in self.alive_ops(ct, e)}
                                      for e in range(NUM_EDGES)}
            record["pruned"][ct] = []
            for e in range(NUM_EDGES):
                ops = self.alive_ops(ct, e)
                if len(ops) > 1:
                    weakest = min(ops, key=lambda o: (float(s[e, o]), -o))
                    self.alive[ct][e, weakest] = False
                    self.elim[ct][e, weakest] = t
                    record["pruned"][ct].append([edge_name(e), PRIMITIVES[weakest]])
        self.history.append(record)
        return record

    # ------------------------------------------------------------------ deriving
    def _tables(self, ct: str) -> tuple[np.ndarray, np.ndarray]:
        return self.strength_matrix(ct).cpu().double().numpy(), self.alive[ct].numpy()

    def nap_pairs(self) -> dict[str, list[tuple[int, int]]]:
        out = {}
        for ct in CELL_TYPES:
            s, alive = self._tables(ct)
            out[ct] = nap_top_pairs(s, alive, self.cfg.keep_pairs, self.cfg.pair_threshold)
        return out

    def derive_nap(self) -> NAPGenotype:
        pairs = self.nap_pairs()
        return NAPGenotype(**{ct: tuple((PRIMITIVES[o], EDGES[e][0], EDGES[e][1])
                                        for e, o in sorted(pairs[ct], key=lambda p: (EDGES[p[0]][1], EDGES[p[0]][0], p[1])))
                              for ct in CELL_TYPES})

    def _project(self) -> tuple[Genotype, dict]:
        pairs = self.nap_pairs()
        proj, info = {}, {}
        for ct in CELL_TYPES:
            s, alive = self._tables(ct)
            proj[ct], info[ct] = project_to_genotype_cell(pairs[ct], s, alive)
        return make_genotype(proj), info

    def derive(self) -> Genotype:
        return self._project()[0]

    def score(self, archs: Sequence[object]) -> np.ndarray:
        raise NotImplementedError("the DARTS space has no tabular ground truth: DARTS-space NAP has no score(); "
                                  "use derive() / derive_nap()")

    def extras(self) -> dict:
        nap = self.derive_nap()
        geno, info = self._project()
        order: dict[str, dict[str, list[str]]] = {}
        for ct in CELL_TYPES:
            order[ct] = {}
            for e in range(NUM_EDGES):
                gone = sorted((int(self.elim[ct][e, o]), o) for o in CANDIDATES if self.elim[ct][e, o] > 0)
                order[ct][edge_name(e)] = [PRIMITIVES[o] for _, o in gone]
        return {
            "reconstructed": True,
            "epoch": self.epoch,
            "prune_epochs": list(self.cfg.prune_epochs()),
            "events_done": self.events_done,
            "snapshot_strengths": None if self.snapshot is None else
            {ct: table_dict(self.snapshot[ct], [CANDIDATES] * NUM_EDGES) for ct in CELL_TYPES},
            "final_strengths": {ct: table_dict(self.strength_matrix(ct), [CANDIDATES] * NUM_EDGES)
                                for ct in CELL_TYPES},
            "alive": {ct: {edge_name(e): [PRIMITIVES[o] for o in self.alive_ops(ct, e)] for e in range(NUM_EDGES)}
                      for ct in CELL_TYPES},
            "elimination_order": order,
            "nap_genotype": nap.to_str(),
            "nap_in_degree": {ct: {str(n): d for n, d in nap.in_degree(ct).items()} for ct in CELL_TYPES},
            "projection": info,
            "derived": geno.to_str(),
            "events": self.history,
        }

    # ------------------------------------------------------------------ checkpointing
    def state_dict(self) -> dict:
        return {
            "supernet": {k: v.detach().clone() for k, v in self.supernet.state_dict().items()},
            "optimizer": self.optimizer.state_dict(),
            "strength": {ct: self.strength[ct].detach().clone() for ct in CELL_TYPES},
            "arch_optimizer": self.arch_optimizer.state_dict(),
            "epoch": self.epoch,
            "alive": {ct: self.alive[ct].clone() for ct in CELL_TYPES},
            "elim": {ct: self.elim[ct].clone() for ct in CELL_TYPES},
            "events_done": self.events_done,
            "snapshot": None if self.snapshot is None else {ct: self.snapshot[ct].clone() for ct in CELL_TYPES},
            "history": [dict(r) for r in self.history],
        }

    def load_state_dict(self, state: Mapping) -> None:
        self.supernet.load_state_dict(state["supernet"])
        self.optimizer.load_state_dict(state["optimizer"])
        with torch.no_grad():
            for ct in CELL_TYPES:
                self.strength[ct].copy_(state["strength"][ct].to(self.strength[ct].device))
        self.arch_optimizer.load_state_dict(state["arch_optimizer"])
        self.epoch = int(state["epoch"])
        self.alive = {ct: state["alive"][ct].clone().cpu().bool() for ct in CELL_TYPES}
        self.elim = {ct: state["elim"][ct].clone().cpu().long() for ct in CELL_TYPES}
        self.events_done = int(state["events_done"])
        snap = state["snapshot"]
        self.snapshot = None if snap is None else {ct: snap[ct].clone().cpu() for ct in CELL_TYPES}
        self.history = [dict(r) for r in state["history"]]


__all__ = ["DartsNAP", "DartsNAPConfig", "NAPGenotype", "nap_top_pairs", "project_to_genotype_cell", "NONE"]
