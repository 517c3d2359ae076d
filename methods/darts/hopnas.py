"""HOPNAS in the DARTS space (IJNS 2021). [interp]

RECONSTRUCTED, as ``methods.hopnas`` (read its docstring and METHODS.md, "HOPNAS"): published are
only path dropout over whole ops in supernet training and pruning the supernet during the
search in hierarchical order; everything below is the harness's reading, carried over from
the NB201 version to the DARTS cell (7 non-``none`` candidate ops per edge, 14 edges, nodes
2..5, normal and reduction cell types).

Supernet training (as NB201): every alive op of an edge is summed (``none`` never runs); path
dropout zeroes whole op outputs with a per-sample (``ghost_batch=0``) or per-ghost-batch 0/1
``(B, 1, 1, 1)`` coefficient, drawn independently for every cell (each cell of a type shares
the type's alive ops, not its masks). ``drop_rate`` is the target probability ``P`` that all
alive ops of an edge drop; ``P(t)`` ramps linearly 0 -> ``drop_rate`` over ``ramp_frac *
epochs``; an edge with ``k`` alive ops drops each with ``P(t) ** (1/k)`` (renormalised as ops
go; ``renormalise=False``: ``P(t) ** (1/7)`` always). Default ``P = 0.5 ** 7``: a full
edge drops each op with probability 0.5, as NB201 HOPNAS's default on its 4-op edges. SGD as NB201 HOPNAS (``lr_anneal``).
Search network: ``layers`` cells (8, DARTS's search depth), width ``setup.C``; ``setup.N`` ignored.

Importance (as NB201): rise of validation loss (or drop of accuracy) when a candidate is
masked — one op of one edge, or a whole input edge (all its alive ops) — in one cell type
only, relative to the unmasked alive supernet; dropout off, BN recalibrated on ``setup.calib``
before every evaluation, the training BN statistics restored afterwards.

Pruning order (our DARTS decision): node by node in topological order, nodes 2 -> 5; normal
and reduction cells are pruned in the same events (each measured in its own cell type).
Within a node: first *edges* — one event per extra input removes the input edge whose masking
hurts least, until the node keeps 2 inputs (node n: n - 2 events) —, then *ops* on the 2 kept
edges — each event removes the ``ops_per_event`` weakest alive ops of each kept edge (at most
down to 1) — until each kept edge has exactly 1 op. Edges before ops: the DARTS constraint is
about inputs, and measuring ops on an edge that will be cut would waste evaluations.
``none`` is never a candidate, so the derived genotype never holds it. Events: after
``W = round(warmup_frac * epochs)`` epochs (>= 1) they are spread evenly to the end of
training (``num_events()`` of them), firing after the batch at which progress reaches them.
When pruning has not finished by ``derive()``, the rest is done greedily without training
(the same rule, measured now, state untouched).

Score (``score_by``): one-shot accuracy / minus loss of a genotype's single path on the
supernet snapshotted just before the first prune event (``methods.darts.paths``).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar, Iterable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from common.config import BUDGETS
from methods.base import (Batch, Meter, SearchSetup, Ticker, check_finite, first_images, length_or_none,
                          one_shot_eval, preserved_bn_statistics, set_lr, sgd)
from methods.darts.common import NODE_EDGES, NODES, check_layers, edge_name, make_genotype
from methods.darts.paths import CANDIDATES, genotype_scores
from methods.schedules import HOPNASSchedule, dropout_plans
from spaces.darts import CELL_TYPES, NONE, NUM_EDGES, PRIMITIVES, Genotype, SuperNet
from spaces.plan import Term

NUM_OPS = len(PRIMITIVES)
_EPS = 1e-9


@dataclass(frozen=True)
class DartsHOPNASConfig(HOPNASSchedule):
    N_CANDIDATES: ClassVar[int] = len(CANDIDATES)

    epochs: int = 250
    layers: int = 8
    batch_size: int = 64
    lr: float = 0.025
    lr_min: float = 0.001
    momentum: float = 0.9
    nesterov: bool = True
    weight_decay: float = 5e-4
    grad_clip: float = 5.0
    lr_anneal: str = "warmup"
    drop_rate: float = 0.5 ** 7            # P(all alive ops of an edge drop): a full 7-op edge drops each op w.p. 0.5
    ramp_frac: float = 0.6
    renormalise: bool = True
    ghost_batch: int = 0
    rescale: bool = False
    warmup_frac: float = 0.6
    ops_per_event: int = 1                 # ops removed per kept edge per event (1 = the NB201 reading)
    importance_by: str = "loss"
    importance_calib_images: int = 0
    importance_valid_images: int = 0
    score_by: str = "oneshot_acc"          # 'oneshot_acc' | 'oneshot_loss'

    def __post_init__(self) -> None:
        check_layers(self.layers, "layers")
        self.check_schedule()
        if self.ops_per_event < 1:
            raise ValueError(f"ops_per_event must be >= 1, got {self.ops_per_event}")
        if self.score_by not in ("oneshot_acc", "oneshot_loss"):
            raise ValueError(f"score_by must be 'oneshot_acc' or 'oneshot_loss', got {self.score_by!r}")

    def stages(self) -> list[tuple[str, int]]:
        """One entry per prune event: ("edges", node) or ("ops", node)."""
        out: list[tuple[str, int]] = []
        for n in NODES:
            out += [("edges", n)] * (len(NODE_EDGES[n]) - 2)
            out += [("ops", n)] * math.ceil((len(CANDIDATES) - 1) / self.ops_per_event)
        return out

    def num_events(self) -> int:
        return len(self.stages())

    def event_times(self) -> tuple[float, ...]:
        w, e, k = self.warmup_epochs, self.epochs, self.num_events()
        step = (e - w) / (k - 1) if k > 1 else 0.0
        return tuple(w + i * step for i in range(k))

    @classmethod
    def preset(cls, budget: str) -> "DartsHOPNASConfig":
        if budget == "paper":
            return cls()
        if budget == "cpu":
            return cls(epochs=4, layers=5, warmup_frac=0.5, ramp_frac=0.5, ops_per_event=3,
                       importance_calib_images=128, importance_valid_images=256, score_by="oneshot_loss")
        if budget == "smoke":
            return cls(epochs=2, layers=3, warmup_frac=0.5, ramp_frac=0.5, ops_per_event=6,
                       importance_calib_images=16, importance_valid_images=16)
        raise ValueError(f"unknown budget {budget!r}; budgets: {', '.join(BUDGETS)}")


class DartsHOPNAS:
    name: ClassVar[str] = "hopnas"
    space: ClassVar[str] = "darts"
    Config: ClassVar[type] = DartsHOPNASConfig

    def __init__(self, cfg: DartsHOPNASConfig, setup: SearchSetup):
        self.cfg, self.setup = cfg, setup
        self.supernet = SuperNet(setup.C, cfg.layers, setup.num_classes).to(setup.device)
        self.optimizer = sgd(self.supernet, cfg.lr, cfg.momentum, cfg.weight_decay, cfg.nesterov)
        self.generator = torch.Generator()
        self.generator.manual_seed(int(setup.seed) * 7_919 + 104_729)
        self.stages = cfg.stages()
        self.times = cfg.event_times()
        self.epoch = 0
        self.alive = torch.zeros(len(CELL_TYPES), NUM_EDGES, NUM_OPS, dtype=torch.bool)
        self.alive[:, :, list(CANDIDATES)] = True
        self.elim = torch.zeros(len(CELL_TYPES), NUM_EDGES, NUM_OPS, dtype=torch.long)
        self.edge_elim = torch.zeros(len(CELL_TYPES), NUM_EDGES, dtype=torch.long)
        self.importance = torch.full((len(CELL_TYPES), NUM_EDGES, NUM_OPS), float("nan"), dtype=torch.float64)
        self.edge_importance = torch.full((len(CELL_TYPES), NUM_EDGES), float("nan"), dtype=torch.float64)
        self.events_done = 0
        self.snapshot: dict[str, torch.Tensor] | None = None
        self.snapshot_epoch: float | None = None
        self.history: list[dict] = []
        self._score_net: SuperNet | None = None
        self._cache: dict[Genotype, float] = {}
        self._cell_ct = [CELL_TYPES.index(t) for t in self.supernet.cell_types]

    # ------------------------------------------------------------------ plans
    def alive_ops(self, ct: int, e: int, alive: torch.Tensor | None = None) -> list[int]:
        a = self.alive if alive is None else alive
        return [o for o in CANDIDATES if bool(a[ct, e, o])]

    def alive_edges(self, ct: int, node: int, alive: torch.Tensor | None = None) -> list[int]:
        return [e for e in NODE_EDGES[node] if self.alive_ops(ct, e, alive)]

    def static_plan(self, alive: torch.Tensor | None = None) -> tuple[list[list[Term]], ...]:
        """Every alive op with weight 1 (no dropout): the plan importance is measured on."""
        return tuple([[Term(o) for o in self.alive_ops(ct, e, alive)] for e in range(NUM_EDGES)]
                     for ct in range(len(CELL_TYPES)))

    def dropout_plan(self, batch: int, t: float) -> tuple[list[list[Term]], ...] | list[list[list[Term]]]:
        rates = torch.tensor([[self.cfg.op_drop_prob(len(self.alive_ops(ct, e)), t) for e in range(NUM_EDGES)]
                              for ct in range(len(CELL_TYPES))], dtype=torch.float64)
        if not bool((rates > 0).any()):
            return self.static_plan()
        g = self.cfg.ghost_batch
        groups = batch if g == 0 else math.ceil(batch / g)
        cells = len(self._cell_ct)
        u = torch.rand((cells, NUM_EDGES, NUM_OPS, groups), generator=self.generator, dtype=torch.float64)
        cell_rates = rates[self._cell_ct]                                      # (cells, 14)
        keep = u >= cell_rates.view(cells, NUM_EDGES, 1, 1)
        if g:
            keep = keep.repeat_interleave(g, dim=-1)[..., :batch]
        keep &= self.alive[self._cell_ct].view(cells, NUM_EDGES, NUM_OPS, 1)
        scale = (1.0 / (1.0 - cell_rates)) if self.cfg.rescale else torch.ones_like(cell_rates)
        return dropout_plans(keep, scale, lambda c, e: self.alive_ops(self._cell_ct[c], e), self.cfg.rescale,
                             self.setup.device)

    # ------------------------------------------------------------------ training
    def lr_at(self, epoch: int) -> float:
        return self.cfg.lr_at(epoch)

    def train_epoch(self, train: Iterable[Batch], valid: Iterable[Batch]) -> dict[str, float]:
        cfg = self.cfg
        if self.snapshot is None:
            self._cache.clear()
        lr = self.lr_at(self.epoch)
        set_lr(self.optimizer, lr)
        n = length_or_none(train)
        ticker = Ticker(self.setup.progress, f"HOPNAS epoch {self.epoch + 1}", n, "batches")
        events_before = self.events_done
        meter = Meter()
        self.supernet.train()
        for i, (x, y) in enumerate(train):
            t = self.epoch + (i / n if n else 0.0)
            plan = self.dropout_plan(x.shape[0], t)
            self.optimizer.zero_grad(set_to_none=True)
            logits = self.supernet(x, plan)
            loss = F.cross_entropy(logits, y)
            check_finite(loss, f"HOPNAS (DARTS) epoch {self.epoch}")
            loss.backward()
            if cfg.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(self.supernet.parameters(), cfg.grad_clip)
            self.optimizer.step()
            meter.update(loss, logits, y)
            if n:
                self.run_due_events(self.epoch + (i + 1) / n, ticker)
            ticker.tick(i + 1, f"{self.events_done}/{len(self.stages)} prune events done")
        self.epoch += 1
        self.run_due_events(float(self.epoch), ticker)
        return {**meter.result("train"), "lr": lr, "all_drop_prob": cfg.all_drop_prob(self.epoch),
                "alive_ops": int(self.alive.sum()), "prune_events": self.events_done - events_before}

    # ------------------------------------------------------------------ importance and pruning
    @property
    def finished(self) -> bool:
        return self.events_done >= len(self.stages)

    def run_due_events(self, now: float, ticker: Ticker | None = None) -> None:
        while self.events_done < len(self.stages) and self.times[self.events_done] <= now + _EPS:
            self.prune_event(now, ticker)

    def measure(self, candidates: Sequence[tuple[int, int, tuple[int, ...]]], alive: torch.Tensor | None = None,
                ticker: Ticker | None = None) -> list[float]:
        """Importance of masking each ``(cell type index, edge, ops)``: dropout off, BN recalibrated."""
        base_alive = self.alive if alive is None else alive
        calib = first_images(self.setup.calib, self.cfg.importance_calib_images)
        valid = first_images(self.setup.valid, self.cfg.importance_valid_images)
        if not valid:
            raise ValueError("HOPNAS measures importance on SearchSetup.valid, which is empty")
        net = self.supernet
        with preserved_bn_statistics(net):
            def evaluate(mask: torch.Tensor) -> tuple[float, float]:
                plan = self.static_plan(mask)
                return one_shot_eval(net, lambda x: net(x, plan), calib, valid)

            acc0, loss0 = evaluate(base_alive)
            out = []
            for k, (ct, e, ops) in enumerate(candidates):
                mask = base_alive.clone()
                mask[ct, e, list(ops)] = False
                acc, loss = evaluate(mask)
                out.append(loss - loss0 if self.cfg.importance_by == "loss" else acc0 - acc)
                if ticker is not None:
                    ticker.tick(k + 1)
            return out

    def _step(self, alive: torch.Tensor, phase: str, node: int, ticker: Ticker | None
              ) -> tuple[list[tuple[int, int, int, float]], dict]:
        """One pruning step of ``node`` on ``alive`` (not modified): the removals
        ``(ct, edge, op or -1 for a whole edge, importance)`` and the importance record."""
        record: dict = {}
        removals: list[tuple[int, int, int, float]] = []
        if phase == "edges":
            cands = [(ct, e, tuple(self.alive_ops(ct, e, alive))) for ct in range(len(CELL_TYPES))
                     for e in self.alive_edges(ct, node, alive)]
            cands = [c for c in cands if len(self.alive_edges(c[0], node, alive)) > 2]
            imps = self.measure(cands, alive, ticker)
            for ct in range(len(CELL_TYPES)):
                mine = [(e, imp) for (c, e, _), imp in zip(cands, imps) if c == ct]
                for e, imp in mine:
                    record.setdefault(CELL_TYPES[ct], {})[edge_name(e)] = imp
                if mine:
                    e, imp = min(mine, key=lambda p: (p[1], -p[0]))
                    removals.append((ct, e, -1, imp))
        else:
            cands = [(ct, e, (o,)) for ct in range(len(CELL_TYPES)) for e in self.alive_edges(ct, node, alive)
                     for o in self.alive_ops(ct, e, alive) if len(self.alive_ops(ct, e, alive)) > 1]
            imps = self.measure(cands, alive, ticker)
            per_edge: dict[tuple[int, int], list[tuple[int, float]]] = {}
            for (ct, e, (o,)), imp in zip(cands, imps):
                per_edge.setdefault((ct, e), []).append((o, imp))
                record.setdefault(CELL_TYPES[ct], {}).setdefault(edge_name(e), {})[PRIMITIVES[o]] = imp
            for (ct, e), ops in per_edge.items():
                ranked = sorted(ops, key=lambda p: (p[1], -p[0]))
                for o, imp in ranked[:min(self.cfg.ops_per_event, len(ops) - 1)]:
                    removals.append((ct, e, o, imp))
        return removals, record

    def prune_event(self, now: float | None = None, ticker: Ticker | None = None) -> dict | None:
        if self.finished:
            return None
        if self.snapshot is None:
            self.snapshot = {k: v.detach().clone() for k, v in self.supernet.state_dict().items()}
            self.snapshot_epoch = float(self.epoch if now is None else now)
            self._cache.clear()
        phase, node = self.stages[self.events_done]
        self.events_done += 1
        t = self.events_done
        sub = ticker.child(f"HOPNAS pruning event {t} ({phase} of node {node})", None, "evaluations") \
            if ticker is not None else Ticker(self.setup.progress, f"HOPNAS pruning event {t}")
        removals, imps = self._step(self.alive, phase, node, sub)
        pruned = []
        for ct, e, o, imp in removals:
            if o < 0:
                for op in self.alive_ops(ct, e):
                    self.elim[ct, e, op] = t
                self.alive[ct, e] = False
                self.edge_elim[ct, e] = t
                self.edge_importance[ct, e] = imp
                pruned.append([CELL_TYPES[ct], edge_name(e), "edge"])
            else:
                self.alive[ct, e, o] = False
                self.elim[ct, e, o] = t
                self.importance[ct, e, o] = imp
                pruned.append([CELL_TYPES[ct], edge_name(e), PRIMITIVES[o]])
        record = {"event": t, "epoch": float(self.epoch if now is None else now), "phase": phase, "node": node,
                  "importance": imps, "pruned": pruned}
        self.history.append(record)
        return record

    # ------------------------------------------------------------------ scoring and deriving
    def _scoring_net(self) -> SuperNet:
        if self.snapshot is None:
            return self.supernet
        if self._score_net is None:
            self._score_net = SuperNet(self.setup.C, self.cfg.layers, self.setup.num_classes).to(self.setup.device)
            self._score_net.load_state_dict(self.snapshot)
        return self._score_net

    def score(self, genotypes: Sequence[Genotype]) -> np.ndarray:
        missing = [g for g in dict.fromkeys(genotypes) if g not in self._cache]
        if missing:
            by = "acc" if self.cfg.score_by == "oneshot_acc" else "loss"
            values = genotype_scores(self._scoring_net(), missing, self.setup.calib, self.setup.valid, by=by,
                                     progress=self.setup.progress)
            self._cache.update(zip(missing, values.tolist()))
        return np.array([self._cache[g] for g in genotypes], dtype=np.float64)

    def final_alive(self) -> torch.Tensor:
        """The alive mask after the remaining events, done greedily now (state untouched)."""
        alive = self.alive.clone()
        ticker = Ticker(self.setup.progress, "HOPNAS derive (remaining pruning)")
        for phase, node in self.stages[self.events_done:]:
            removals, _ = self._step(alive, phase, node, ticker)
            for ct, e, o, _imp in removals:
                if o < 0:
                    alive[ct, e] = False
                else:
                    alive[ct, e, o] = False
        return alive

    def derive(self) -> Genotype:
        alive = self.alive if self.finished else self.final_alive()
        pairs: dict[str, list[tuple[int, int]]] = {}
        for ct, name in enumerate(CELL_TYPES):
            chosen = []
            for n in NODES:
                edges = self.alive_edges(ct, n, alive)
                if len(edges) != 2:
                    raise RuntimeError(f"HOPNAS: node {n} of the {name} cell kept {len(edges)} inputs")
                for e in edges:
                    ops = self.alive_ops(ct, e, alive)
                    if len(ops) != 1 or ops[0] == NONE:
                        raise RuntimeError(f"HOPNAS: edge {edge_name(e)} of the {name} cell kept ops {ops}")
                    chosen.append((e, ops[0]))
            pairs[name] = chosen
        return make_genotype(pairs)

    def extras(self) -> dict:
        order = {}
        for ct, name in enumerate(CELL_TYPES):
            gone = sorted((int(self.elim[ct, e, o]), edge_name(e), PRIMITIVES[o]) for e in range(NUM_EDGES)
                          for o in CANDIDATES if self.elim[ct, e, o] > 0)
            order[name] = [[t, e, o] for t, e, o in gone]
        return {
            "reconstructed": True,
            "event_times": list(self.times),
            "stages": [list(s) for s in self.stages],
            "events_done": self.events_done,
            "finished": self.finished,
            "snapshot_epoch": self.snapshot_epoch,
            "elimination_order": order,
            "alive": {name: {edge_name(e): [PRIMITIVES[o] for o in self.alive_ops(ct, e)]
                             for e in range(NUM_EDGES) if self.alive_ops(ct, e)}
                      for ct, name in enumerate(CELL_TYPES)},
            "events": self.history,
        }

    # ------------------------------------------------------------------ checkpointing
    def state_dict(self) -> dict:
        return {
            "supernet": {k: v.detach().clone() for k, v in self.supernet.state_dict().items()},
            "optimizer": self.optimizer.state_dict(),
            "generator": self.generator.get_state(),
            "epoch": self.epoch,
            "alive": self.alive.clone(),
            "elim": self.elim.clone(),
            "edge_elim": self.edge_elim.clone(),
            "importance": self.importance.clone(),
            "edge_importance": self.edge_importance.clone(),
            "events_done": self.events_done,
            "snapshot": self.snapshot,
            "snapshot_epoch": self.snapshot_epoch,
            "history": [dict(r) for r in self.history],
        }

    def load_state_dict(self, state: dict) -> None:
        self.supernet.load_state_dict(state["supernet"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.generator.set_state(torch.as_tensor(state["generator"]).cpu())
        self.epoch = int(state["epoch"])
        self.alive = state["alive"].clone().cpu().bool()
        self.elim = state["elim"].clone().cpu().long()
        self.edge_elim = state["edge_elim"].clone().cpu().long()
        self.importance = state["importance"].clone().cpu().double()
        self.edge_importance = state["edge_importance"].clone().cpu().double()
        self.events_done = int(state["events_done"])
        self.snapshot = state["snapshot"]
        self.snapshot_epoch = state["snapshot_epoch"]
        self.history = [dict(r) for r in state["history"]]
        self._score_net = None
        self._cache.clear()
