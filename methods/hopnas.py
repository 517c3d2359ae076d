"""HOPNAS — dynamically pruning a path-dropout supernet in hierarchical order (IJNS 2021). [interp]

RECONSTRUCTED: neither code nor full text of HOPNAS is reachable to us. What follows is the
harness's reading of its published description (METHODS.md, "HOPNAS"); every free choice
of that reading is a field of ``HOPNASConfig``.

Supernet training. Every alive op of an edge is summed (``none`` is never a term: it adds
zero). Path dropout zeroes *whole op outputs*: each alive op of each edge of each cell gets a
keep/drop draw per sample (``ghost_batch=0``) or per consecutive ghost batch of
``ghost_batch`` samples; the plan carries it as a ``(B, 1, 1, 1)`` 0/1 coefficient (divided by
the keep probability when ``rescale``). Parametrisation of the rate: ``drop_rate`` is the
target probability ``P`` that *all* alive ops of an edge drop at once (Bender et al. 2018's
``r``). ``P(t)`` ramps linearly from 0 at the start of training to ``drop_rate`` after
``ramp_frac * epochs`` epochs (per batch), and the per-op drop probability on an edge with
``k`` alive ops is ``p_k = P(t) ** (1 / k)``, so the all-drop probability stays ``P(t)`` as
ops are pruned (``renormalise=False`` keeps the full-edge rate ``P(t) ** (1/4)`` instead, an
ablation in which edges die more often as they shrink). Default ``P = 0.0625``: a full edge
drops each op with probability 0.5. SGD as NAS-Bench-201's reference (Nesterov 0.9, lr 0.025
cosine -> 0.001, wd 5e-4 on conv/linear weights, clipping 5, batch 64). ``lr_anneal='warmup'``
(default) anneals the cosine over the warm-up, so the snapshot scored below is a fully
trained supernet, then holds ``lr_min`` while pruning; ``'all'`` anneals over all epochs.

Importance of an alive op = rise of validation loss (``importance_by='loss'``) or drop of
accuracy (``'acc'``) when that op alone is masked, relative to the unmasked alive supernet,
with dropout off (the measuring plan has no random coefficient) and BN statistics
recalibrated on ``setup.calib`` before every evaluation (``methods.base.one_shot_eval``),
validation on ``setup.valid`` (only their first ``importance_calib_images`` /
``importance_valid_images`` images when set, to bound the cost: a run makes 72 such
evaluations); the supernet's training BN statistics are restored afterwards.

Hierarchical dynamic pruning. Warm up ``W = round(warmup_frac * epochs)`` epochs (at least
1). Then a fixed number of prune *events* (12) is spread over the remaining training:
evenly from the end of warm-up to the end of the last epoch (``prune_every_frac=0``), or
every ``prune_every_frac * epochs`` epochs. Events fire after the batch at which training
progress reaches their time (several can fire at once when they are closer than a batch).
One event works on one node only:

* ``order='forward'``: node 1 (edge 1<-0), then node 2 (2<-0, 2<-1), then node 3 (its three
  edges); ``'backward'``: node 3, then 2, then 1. At each event every undecided edge of the
  current node loses its weakest alive op (4 -> 3 -> 2 -> 1); at the next event an edge with
  one op left is decided: the op is kept if masking it raises the loss by more than
  ``none_margin``, otherwise the edge becomes ``none`` ("no remaining op helps"). So each
  node takes 4 events; the next node starts when all edges of the current one are decided.
* ``order='topology_first'``: first, node by node (forward), one event per node decides for
  each of its edges whether the edge is kept at all (importance = rise of loss when the whole
  edge is masked; ``<= none_margin`` -> ``none``); then ops, node by node, three events per
  node (4 -> 3 -> 2 -> 1) on the kept edges. Nodes with nothing left to do are skipped, so
  pruning can end before the last scheduled event.

Score (``score_by``): ``'oneshot_acc'`` / ``'oneshot_loss'`` — the shared one-shot score
(BN recalibrated, single path per arch) of the supernet snapshotted just before the first
prune (before the first prune event: the current supernet); ``'elimination'`` — the sum over
edges of the elimination value of the arch's op: the event number at which it was pruned
(pruned later = higher), ``events + 1`` for survivors; ``none`` gets the event at which its
edge was kept, ``events + 1`` if the edge became ``none``, and 0 while its edge is undecided.

``derive()``: the surviving op of each decided edge (or ``none``). If pruning did not finish
within ``epochs``, an undecided edge takes its alive op of highest last-measured importance
(measured now, without changing any state, for edges never measured); a lone alive op whose
importance is ``<= none_margin`` gives ``none``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar, Iterable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from common.config import BUDGETS
from methods.base import (
    Batch,
    Meter,
    SearchSetup,
    Ticker,
    check_finite,
    first_images,
    one_shot_eval,
    one_shot_scores,
    preserved_bn_statistics,
    length_or_none,
    set_lr,
    sgd,
)
from methods.schedules import HOPNASSchedule, dropout_plans
from spaces.nb201 import NONE, NUM_EDGES, OPS, Arch, SuperNet, Term, edge_name

CANDIDATES = tuple(range(1, len(OPS)))          # the summed ops: every op but `none`
NODE_EDGES = {1: (0,), 2: (1, 2), 3: (3, 4, 5)}  # edge indices entering each node
ORDERS = ("forward", "backward", "topology_first")
NUM_EVENTS = 12  # forward/backward: 3 nodes x (3 prunes + 1 decision); topology_first: 3 + 3 x 3
_EPS = 1e-9


@dataclass(frozen=True)
class HOPNASConfig(HOPNASSchedule):
    N_CANDIDATES: ClassVar[int] = len(CANDIDATES)

    epochs: int = 250
    batch_size: int = 64
    epoch_images: int = 0            # images per epoch from each search half at most (0 = all)
    lr: float = 0.025
    lr_min: float = 0.001
    momentum: float = 0.9
    nesterov: bool = True
    weight_decay: float = 5e-4
    grad_clip: float = 5.0
    lr_anneal: str = "warmup"        # 'warmup': cosine over the warm-up, then lr_min; 'all': over all epochs
    # path dropout
    drop_rate: float = 0.0625        # target P(all alive ops of an edge drop); per-op rate P**(1/k)
    ramp_frac: float = 0.6           # P ramps linearly 0 -> drop_rate over this fraction of epochs
    renormalise: bool = True         # hold the all-drop probability as ops are pruned
    ghost_batch: int = 0             # 0: one draw per sample; g > 0: one draw per ghost batch of g
    rescale: bool = False            # divide kept outputs by the keep probability
    # pruning
    warmup_frac: float = 0.6         # epochs before the first prune (and the scoring snapshot)
    prune_every_frac: float = 0.0    # epochs between events / epochs; 0 = spread to the end
    order: str = "forward"           # 'forward' | 'backward' | 'topology_first'
    importance_by: str = "loss"      # 'loss' (rise of loss) | 'acc' (drop of accuracy)
    none_margin: float = 0.0         # an edge is `none` if masking its last op raises it by <= this
    importance_calib_images: int = 0  # first n images of setup.calib recalibrate BN for importance (0 = all)
    importance_valid_images: int = 0  # first n images of setup.valid measure importance (0 = all)
    # scoring
    score_by: str = "oneshot_acc"    # 'oneshot_acc' | 'oneshot_loss' | 'elimination'

    def __post_init__(self) -> None:
        self.check_schedule()
        if not isinstance(self.batch_size, int) or self.batch_size < 1:
            raise ValueError(f"batch_size must be an int >= 1, got {self.batch_size!r}")
        if not 0.0 <= self.prune_every_frac <= 1.0:
            raise ValueError(f"prune_every_frac is a fraction of epochs in [0, 1], got {self.prune_every_frac}")
        if self.order not in ORDERS:
            raise ValueError(f"order must be one of {ORDERS}, got {self.order!r}")
        if self.score_by not in ("oneshot_acc", "oneshot_loss", "elimination"):
            raise ValueError(f"score_by must be 'oneshot_acc', 'oneshot_loss' or 'elimination', got {self.score_by!r}")

    # -- the schedule, always computed from `epochs` (the harness may override it)
    def event_times(self) -> tuple[float, ...]:
        """Training progress (in epochs) at which each of the 12 prune events fires."""
        w, e = self.warmup_epochs, self.epochs
        step = self.prune_every_frac * e if self.prune_every_frac > 0 else (e - w) / (NUM_EVENTS - 1)
        return tuple(w + i * step for i in range(NUM_EVENTS))

    @classmethod
    def preset(cls, budget: str) -> "HOPNASConfig":
        if budget == "paper":
            return cls()
        if budget == "cpu":
            # Equal compute (CPU_SEARCH_MACS, 1e13 multiply-adds): the 72 importance evaluations
            # (256 calibration + 512 validation images each) cost ~2.2e12 whatever the data, the
            # training ~0.82e9 per image of an epoch (5 epochs, all ops at ~165M per image until
            # pruning starts; measured 5.35e12 in all at 3,840), so 9,600 images per epoch. Warm-up 3 epochs, then the 12 prune events inside the last 2 epochs.
            # Scored by one-shot loss: at laptop budgets one-shot accuracy ranks poorly (SPOS on the
            # development sample, arch seed 0: tau -0.18 by accuracy; ANCHORS.md: 0.15 vs 0.34).
            return cls(epochs=5, epoch_images=9600, warmup_frac=0.6, ramp_frac=0.6, importance_calib_images=256,
                       importance_valid_images=512, score_by="oneshot_loss")
        if budget == "smoke":
            return cls(epochs=3, warmup_frac=1 / 3, ramp_frac=1 / 3, importance_calib_images=32,
                       importance_valid_images=32)
        raise ValueError(f"unknown budget {budget!r}; budgets: {', '.join(BUDGETS)}")


def _stages(order: str) -> tuple[tuple[str, int], ...]:
    if order == "forward":
        return (("ops", 1), ("ops", 2), ("ops", 3))
    if order == "backward":
        return (("ops", 3), ("ops", 2), ("ops", 1))
    return (("edges", 1), ("edges", 2), ("edges", 3), ("ops", 1), ("ops", 2), ("ops", 3))


class HOPNAS:
    name: ClassVar[str] = "hopnas"
    Config: ClassVar[type] = HOPNASConfig

    def __init__(self, cfg: HOPNASConfig, setup: SearchSetup):
        self.cfg, self.setup = cfg, setup
        self.supernet = SuperNet(setup.C, setup.N, setup.num_classes).to(setup.device)
        self.optimizer = sgd(self.supernet, cfg.lr, cfg.momentum, cfg.weight_decay, cfg.nesterov)
        self.generator = torch.Generator()  # dropout draws (CPU: the same masks on every device)
        self.generator.manual_seed(int(setup.seed) * 7_919 + 104_729)
        self.stages = _stages(cfg.order)
        self.times = cfg.event_times()
        self.epoch = 0
        # pruning state
        self.alive = torch.zeros(NUM_EDGES, len(OPS), dtype=torch.bool)
        self.alive[:, 1:] = True                       # `none` is never a summed term
        self.decided = torch.zeros(NUM_EDGES, dtype=torch.bool)   # final op (or none) fixed
        self.kept = torch.zeros(NUM_EDGES, dtype=torch.bool)      # topology_first: edge kept
        self.elim = torch.zeros(NUM_EDGES, len(OPS), dtype=torch.long)  # event that eliminated (e, o)
        self.importance = torch.full((NUM_EDGES, len(OPS)), float("nan"), dtype=torch.float64)
        self.events_done = 0
        self.stage_pos = 0
        self.snapshot: dict[str, torch.Tensor] | None = None
        self.snapshot_epoch: float | None = None
        self.history: list[dict] = []
        self.mask_draws = 0   # instrumentation: how many dropout draws were made
        self._score_net: SuperNet | None = None
        self._cache: dict[Arch, float] = {}

    # ------------------------------------------------------------------ plans
    def alive_ops(self, e: int, alive: torch.Tensor | None = None) -> list[int]:
        alive = self.alive if alive is None else alive
        return [o for o in CANDIDATES if bool(alive[e, o])]

    def static_plan(self, alive: torch.Tensor | None = None) -> list[list[Term]]:
        """Every alive op summed with weight 1: the dropout-free plan importance is measured on."""
        return [[Term(o) for o in self.alive_ops(e, alive)] for e in range(NUM_EDGES)]

    def draw_keep(self, batch: int, t: float) -> tuple[torch.Tensor, torch.Tensor] | None:
        """Keep masks ``(cells, 6, 5, batch)`` (bool, CPU) and per-op drop rates ``(6,)`` at progress ``t``.

        ``None`` when the drop rate is zero (nothing is drawn). Dead ops and ``none`` are never kept.
        """
        rates = torch.tensor([self.cfg.op_drop_prob(len(self.alive_ops(e)), t) for e in range(NUM_EDGES)],
                             dtype=torch.float64)
        if not bool((rates > 0).any()):
            return None
        g = self.cfg.ghost_batch
        groups = batch if g == 0 else math.ceil(batch / g)
        u = torch.rand((self.supernet.num_cells, NUM_EDGES, len(OPS), groups), generator=self.generator,
                       dtype=torch.float64)
        self.mask_draws += 1
        keep = u >= rates.view(1, NUM_EDGES, 1, 1)
        if g:
            keep = keep.repeat_interleave(g, dim=-1)[..., :batch]
        keep &= self.alive.view(1, NUM_EDGES, len(OPS), 1)
        return keep, rates

    def dropout_plan(self, batch: int, t: float) -> list[list[Term]] | list[list[list[Term]]]:
        """The training plan: alive ops with whole-output 0/1 coefficients, drawn per cell."""
        drawn = self.draw_keep(batch, t)
        if drawn is None:
            return self.static_plan()
        keep, rates = drawn
        scale = (1.0 / (1.0 - rates)) if self.cfg.rescale else torch.ones_like(rates)
        return dropout_plans(keep, scale.expand(keep.shape[0], NUM_EDGES), lambda _c, e: self.alive_ops(e),
                             self.cfg.rescale, self.setup.device)

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
        pruned_before = int((self.elim[:, 1:] > 0).sum())
        meter = Meter()
        self.supernet.train()
        for i, (x, y) in enumerate(train):
            t = self.epoch + (i / n if n else 0.0)
            plan = self.dropout_plan(x.shape[0], t)
            self.optimizer.zero_grad(set_to_none=True)
            logits = self.supernet(x, plan)
            loss = F.cross_entropy(logits, y)
            check_finite(loss, f"HOPNAS epoch {self.epoch}")
            loss.backward()
            if cfg.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(self.supernet.parameters(), cfg.grad_clip)
            self.optimizer.step()
            meter.update(loss, logits, y)
            if n:
                self.run_due_events(self.epoch + (i + 1) / n, ticker)
            ticker.tick(i + 1, f"{self.events_done}/{NUM_EVENTS} prune events done")
        self.epoch += 1
        self.run_due_events(float(self.epoch), ticker)
        return {
            **meter.result("train"), "lr": lr,
            "all_drop_prob": self.cfg.all_drop_prob(self.epoch),
            "alive_ops": int(self.alive.sum()),
            "pruned": int((self.elim[:, 1:] > 0).sum()) - pruned_before,
            "prune_events": self.events_done - events_before,
            "decided_edges": int(self.decided.sum()),
        }

    # ------------------------------------------------------------------ importance and pruning
    @property
    def finished(self) -> bool:
        return bool(self.decided.all())

    def run_due_events(self, now: float, ticker: Ticker | None = None) -> None:
        while self.events_done < NUM_EVENTS and self.times[self.events_done] <= now + _EPS:
            self.prune_event(now, ticker)

    def _progress(self, ticker: Ticker | None, what: str, total: int) -> Ticker:
        """A ticker for ``total`` importance evaluations, nested in ``ticker`` when given."""
        if ticker is not None:
            return ticker.child(what, total, "evaluations")
        return Ticker(self.setup.progress, what, total, "evaluations")

    def measure(self, candidates: Sequence[tuple[int, tuple[int, ...]]], ticker: Ticker | None = None) -> list[float]:
        """Importance of masking each candidate ``(edge, ops)``: dropout off, BN recalibrated.

        ``ticker`` reports the evaluations done (the unmasked one, then one per candidate).
        """
        calib = first_images(self.setup.calib, self.cfg.importance_calib_images)
        valid = first_images(self.setup.valid, self.cfg.importance_valid_images)
        if not valid:
            raise ValueError("HOPNAS measures importance on SearchSetup.valid, which is empty: give the "
                             "setup fixed validation (and calibration) batches")
        net = self.supernet
        with preserved_bn_statistics(net):
            def evaluate(alive: torch.Tensor) -> tuple[float, float]:
                plan = self.static_plan(alive)
                return one_shot_eval(net, lambda x: net(x, plan), calib, valid)

            acc0, loss0 = evaluate(self.alive)
            if ticker is not None:
                ticker.tick(1, "unmasked supernet")
            out = []
            for k, (e, ops) in enumerate(candidates):
                mask = self.alive.clone()
                mask[e, list(ops)] = False
                acc, loss = evaluate(mask)
                out.append(loss - loss0 if self.cfg.importance_by == "loss" else acc0 - acc)
                if ticker is not None:
                    ticker.tick(k + 2, f"masked {edge_name(e)} {'+'.join(OPS[o] for o in ops)}")
            return out

    def _needs_work(self, phase: str, e: int) -> bool:
        if phase == "edges":
            return not bool(self.decided[e]) and not bool(self.kept[e])
        return not bool(self.decided[e])

    def prune_event(self, now: float | None = None, ticker: Ticker | None = None) -> dict | None:
        """One prune event on the current node; returns its history record (None if all done).

        Its importance evaluations report progress through ``ticker`` (the training epoch's),
        or through ``setup.progress`` when none is given.
        """
        if self.snapshot is None:
            self.snapshot = {k: v.detach().clone() for k, v in self.supernet.state_dict().items()}
            self.snapshot_epoch = float(self.epoch if now is None else now)
            self._cache.clear()
        self.events_done += 1
        t = self.events_done
        margin = self.cfg.none_margin
        while self.stage_pos < len(self.stages):
            phase, node = self.stages[self.stage_pos]
            edges = [e for e in NODE_EDGES[node] if self._needs_work(phase, e)]
            if not edges:
                self.stage_pos += 1
                continue
            record: dict = {"event": t, "epoch": float(self.epoch if now is None else now), "phase": phase,
                            "node": node, "importance": {}, "pruned": [], "none_edges": [], "kept_edges": []}
            what = f"HOPNAS pruning event {t} ({phase} of node {node})"
            if phase == "edges":
                imps = self.measure([(e, tuple(self.alive_ops(e))) for e in edges],
                                    self._progress(ticker, what, len(edges) + 1))
                for e, imp in zip(edges, imps):
                    record["importance"][edge_name(e)] = {"edge": imp}
                    if imp <= margin:
                        self._make_none(e, t)
                        record["none_edges"].append(edge_name(e))
                    else:
                        self.kept[e] = True
                        self.elim[e, NONE] = t
                        record["kept_edges"].append(edge_name(e))
            else:
                cands = [(e, (o,)) for e in edges for o in self.alive_ops(e)]
                imps = self.measure(cands, self._progress(ticker, what, len(cands) + 1))
                for (e, (o,)), imp in zip(cands, imps):
                    self.importance[e, o] = imp
                    record["importance"].setdefault(edge_name(e), {})[OPS[o]] = imp
                for e in edges:
                    ops = self.alive_ops(e)
                    if len(ops) == 1 and not bool(self.kept[e]):
                        # the decision: does the edge's last op help at all?
                        if float(self.importance[e, ops[0]]) <= margin:
                            self._make_none(e, t)
                            record["none_edges"].append(edge_name(e))
                        else:
                            self.decided[e] = True
                            self.elim[e, NONE] = t
                            record["kept_edges"].append(edge_name(e))
                        continue
                    weakest = min(ops, key=lambda o: float(self.importance[e, o]))
                    self.alive[e, weakest] = False
                    self.elim[e, weakest] = t
                    record["pruned"].append([edge_name(e), OPS[weakest]])
                    if len(ops) == 2 and bool(self.kept[e]):
                        self.decided[e] = True  # topology_first: the edge is kept, its op is now fixed
            if not any(self._needs_work(phase, e) for e in NODE_EDGES[node]):
                self.stage_pos += 1
            self.history.append(record)
            return record
        return None

    def _make_none(self, e: int, t: int) -> None:
        for o in self.alive_ops(e):
            self.elim[e, o] = t
        self.alive[e] = False
        self.decided[e] = True

    # ------------------------------------------------------------------ scoring and deriving
    def elimination_values(self) -> torch.Tensor:
        """``(6, 5)`` value of each (edge, op): pruned later = higher; survivors highest."""
        top = NUM_EVENTS + 1
        v = torch.zeros(NUM_EDGES, len(OPS), dtype=torch.float64)
        for e in range(NUM_EDGES):
            for o in CANDIDATES:
                v[e, o] = float(self.elim[e, o]) if self.elim[e, o] > 0 else top
            if bool(self.decided[e]) and not self.alive_ops(e):
                v[e, NONE] = top                       # the edge became none: none survived
            else:
                v[e, NONE] = float(self.elim[e, NONE])  # event that kept the edge; 0 if undecided
        return v

    def _scoring_net(self) -> SuperNet:
        if self.snapshot is None:
            return self.supernet
        if self._score_net is None:
            self._score_net = SuperNet(self.setup.C, self.setup.N, self.setup.num_classes).to(self.setup.device)
            self._score_net.load_state_dict(self.snapshot)
        return self._score_net

    def score(self, archs: Sequence[Arch]) -> np.ndarray:
        if self.cfg.score_by == "elimination":
            v = self.elimination_values()
            return np.array([sum(float(v[e, i]) for e, i in enumerate(a.indices)) for a in archs], dtype=np.float64)
        missing = [a for a in dict.fromkeys(archs) if a not in self._cache]
        if missing:
            by = "acc" if self.cfg.score_by == "oneshot_acc" else "loss"
            values = one_shot_scores(self._scoring_net(), missing, self.setup.calib, self.setup.valid, by=by,
                                     progress=self.setup.progress)
            self._cache.update(zip(missing, values.tolist()))
        return np.array([self._cache[a] for a in archs], dtype=np.float64)

    def derive(self) -> Arch:
        importance = self.importance.clone()
        todo = [(e, (o,)) for e in range(NUM_EDGES) if not bool(self.decided[e])
                for o in self.alive_ops(e) if math.isnan(float(importance[e, o]))]
        if todo:  # pruning never reached these edges: measure now (no state changes)
            ticker = self._progress(None, "HOPNAS derive (importance of undecided edges)", len(todo) + 1)
            for (e, (o,)), imp in zip(todo, self.measure(todo, ticker)):
                importance[e, o] = imp
        ops = []
        for e in range(NUM_EDGES):
            alive = self.alive_ops(e)
            if not alive:
                ops.append("none")
            elif bool(self.decided[e]):
                ops.append(OPS[alive[0]])
            else:
                best = max(alive, key=lambda o: float(importance[e, o]))
                lone_useless = len(alive) == 1 and float(importance[e, best]) <= self.cfg.none_margin
                ops.append("none" if lone_useless and not bool(self.kept[e]) else OPS[best])
        return Arch(tuple(ops))

    def extras(self) -> dict:
        order: dict[str, list[str]] = {}
        for e in range(NUM_EDGES):
            gone = sorted((int(self.elim[e, o]), OPS[o]) for o in CANDIDATES if self.elim[e, o] > 0)
            order[edge_name(e)] = [name for _, name in gone]
        return {
            "reconstructed": True,
            "order": self.cfg.order,
            "event_times": list(self.times),
            "events_done": self.events_done,
            "finished": self.finished,
            "snapshot_epoch": self.snapshot_epoch,
            "elimination_order": order,
            "alive": {edge_name(e): [OPS[o] for o in self.alive_ops(e)] for e in range(NUM_EDGES)},
            "none_edges": [edge_name(e) for e in range(NUM_EDGES) if bool(self.decided[e]) and not self.alive_ops(e)],
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
            "decided": self.decided.clone(),
            "kept": self.kept.clone(),
            "elim": self.elim.clone(),
            "importance": self.importance.clone(),
            "events_done": self.events_done,
            "stage_pos": self.stage_pos,
            "snapshot": self.snapshot,
            "snapshot_epoch": self.snapshot_epoch,
            "history": [dict(r) for r in self.history],
            "mask_draws": self.mask_draws,
        }

    def load_state_dict(self, state: dict) -> None:
        self.supernet.load_state_dict(state["supernet"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.generator.set_state(torch.as_tensor(state["generator"]).cpu())
        self.epoch = int(state["epoch"])
        self.alive = state["alive"].clone().cpu().bool()
        self.decided = state["decided"].clone().cpu().bool()
        self.kept = state["kept"].clone().cpu().bool()
        self.elim = state["elim"].clone().cpu().long()
        self.importance = state["importance"].clone().cpu().double()
        self.events_done = int(state["events_done"])
        self.stage_pos = int(state["stage_pos"])
        self.snapshot = state["snapshot"]
        self.snapshot_epoch = state["snapshot_epoch"]
        self.history = [dict(r) for r in state["history"]]
        self.mask_draws = int(state.get("mask_draws", 0))
        self._score_net = None
        self._cache.clear()
