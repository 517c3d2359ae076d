"""Shared helpers of the DARTS-space search methods (P-DARTS, NAP, DNAL in ``methods.darts``).

* per-cell-type architecture tables: ``(14, 8)`` arrays in ``PRIMITIVES`` order, one per
  ``CELL_TYPES`` entry ("normal", "reduce"); ``table_dict`` turns one into a JSON-able
  ``{"dst<-src": {op: value}}`` dict;
* ``coef_plan``: the CellPlan of a coefficient table (every alive non-``none`` op with its
  coefficient, an optional transform for stride-1 skips);
* ``skip_dropout``: inverted element-wise dropout drawing its masks from a method-owned
  ``torch.Generator`` (checkpointed, so a resumed run is bit-identical);
* ``first_order_arch_step``: one architecture step of DARTS's first-order alternation (the
  gradient w.r.t. the architecture tensors only, clipped, one optimiser step);
* ``weight_step``: one weight step (SGD, clipped);
* ``top2_per_node``: the DARTS parse of one cell type — the op of each edge is given, each
  intermediate node keeps its 2 strongest incoming edges;
* ``make_genotype``: a ``Genotype`` from the chosen (edge, op) pairs of both cell types.
"""
from __future__ import annotations

import math
from typing import Callable, Iterable, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from methods.base import check_finite
from spaces.darts import CELL_TYPES, EDGES, NONE, NUM_EDGES, PRIMITIVES, SKIP, Genotype
from spaces.plan import Term

NUM_OPS = len(PRIMITIVES)
NODES = (2, 3, 4, 5)                       # intermediate nodes; 0 and 1 are the cell inputs
NODE_EDGES: dict[int, list[int]] = {n: [e for e, (_, dst) in enumerate(EDGES) if dst == n] for n in NODES}
EDGE_NAMES: tuple[str, ...] = tuple(f"{dst}<-{src}" for src, dst in EDGES)
CONCAT = tuple(NODES)


def edge_name(e: int) -> str:
    return EDGE_NAMES[e]


def stride_one(cell_type: str, e: int) -> bool:
    """Whether the ops of edge ``e`` run at stride 1 (every normal edge; reduce edges from nodes >= 2)."""
    return cell_type == "normal" or EDGES[e][0] >= 2


def table_dict(table: np.ndarray | torch.Tensor, ops: Sequence[Sequence[int]] | None = None) -> dict:
    """``{"dst<-src": {op name: value}}`` of a ``(14, 8)`` table (``ops[e]``: the ops to list; default all)."""
    t = table.detach().cpu().double().numpy() if isinstance(table, torch.Tensor) else np.asarray(table, np.float64)
    out = {}
    for e in range(NUM_EDGES):
        which = range(NUM_OPS) if ops is None else ops[e]
        out[EDGE_NAMES[e]] = {PRIMITIVES[o]: float(t[e, o]) for o in which}
    return out


def skip_dropout(p: float, gen: torch.Generator) -> Callable[[torch.Tensor], torch.Tensor]:
    """Inverted element-wise dropout whose masks come from ``gen`` (resumable, unlike F.dropout)."""
    scale = 1.0 / (1.0 - p)

    def drop(x: torch.Tensor) -> torch.Tensor:
        keep = torch.rand(x.shape, generator=gen, device=x.device, dtype=x.dtype) >= p
        return x * keep.to(x.dtype) * scale

    return drop


def coef_plan(coefs: torch.Tensor, alive: Sequence[Sequence[int]], cell_type: str,
              skip_transform: Callable[[torch.Tensor], torch.Tensor] | None = None) -> list[list[Term]]:
    """One CellPlan: ``Term(o, coefs[e][o])`` for every alive non-``none`` op ``o`` of every edge ``e``.

    ``skip_transform`` (e.g. ``skip_dropout``) goes on ``skip_connect`` where it is a stride-1
    identity (``stride_one``), as P-DARTS puts its dropout after every ``Identity``.
    """
    plan: list[list[Term]] = []
    for e in range(NUM_EDGES):
        terms = []
        for o in alive[e]:
            if o == NONE:
                continue
            tr = skip_transform if (o == SKIP and skip_transform is not None and stride_one(cell_type, e)) else None
            terms.append(Term(o, coefs[e, o], tr))
        plan.append(terms)
    return plan


def first_order_arch_step(forward: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, y: torch.Tensor,
                          params: Sequence[torch.Tensor], optimizer: torch.optim.Optimizer, clip: float,
                          where: str, grad_mask: Sequence[torch.Tensor | None] | None = None
                          ) -> tuple[torch.Tensor, torch.Tensor]:
    """One first-order architecture step on a validation batch; returns (loss, logits), detached.

    Only the architecture tensors ``params`` get a gradient (the weights' ``.grad`` is never
    touched); ``grad_mask`` (one bool/float tensor or ``None`` per param) zeroes the gradient of
    pruned entries before clipping. The caller keeps pruned values frozen if its optimiser has
    weight decay or momentum.
    """
    logits = forward(x)
    loss = F.cross_entropy(logits, y)
    check_finite(loss, where)
    grads = torch.autograd.grad(loss, list(params))
    optimizer.zero_grad(set_to_none=True)
    for i, (p, g) in enumerate(zip(params, grads)):
        m = grad_mask[i] if grad_mask is not None else None
        p.grad = g if m is None else g * m.to(g.dtype)
    if clip > 0:
        torch.nn.utils.clip_grad_norm_(list(params), clip)
    optimizer.step()
    return loss.detach(), logits.detach()


def weight_step(forward: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, y: torch.Tensor,
                params: Sequence[nn.Parameter], optimizer: torch.optim.Optimizer, clip: float, where: str,
                extra_loss: Callable[[], torch.Tensor] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """One optimiser step of ``params`` on a batch (CE [+ extra_loss]); returns (loss, logits), detached."""
    optimizer.zero_grad(set_to_none=True)
    logits = forward(x)
    loss = F.cross_entropy(logits, y)
    if extra_loss is not None:
        loss = loss + extra_loss()
    check_finite(loss, where)
    loss.backward()
    if clip > 0:
        torch.nn.utils.clip_grad_norm_(list(params), clip)
    optimizer.step()
    return loss.detach(), logits.detach()


def top2_per_node(strength: Sequence[float], tiebreak: Sequence[float] | None = None) -> list[int]:
    """The DARTS per-node rule: the 2 incoming edges of each intermediate node with the largest
    ``strength[e]`` (ties: larger ``tiebreak[e]``, then the earlier edge). Returns sorted edge indices (8)."""
    keep: list[int] = []
    for n in NODES:
        ranked = sorted(NODE_EDGES[n], key=lambda e: (-float(strength[e]),
                                                      -float(tiebreak[e]) if tiebreak is not None else 0.0, e))
        keep.extend(sorted(ranked[:2]))
    return keep


def best_op(row: Sequence[float], ops: Iterable[int], tiebreak: Sequence[float] | None = None) -> int:
    """The op of ``ops`` with the largest ``row[o]`` (ties: larger ``tiebreak[o]``, then the earlier op)."""
    return min(ops, key=lambda o: (-float(row[o]), -float(tiebreak[o]) if tiebreak is not None else 0.0, o))


def make_genotype(pairs: Mapping[str, Sequence[tuple[int, int]]]) -> Genotype:
    """A ``Genotype`` from ``{"normal": [(edge, op)] * 8, "reduce": [...]}`` (2 edges per node).

    Entries are ordered by target node, then source node (DARTS's order).
    """
    genes = {}
    for ct in CELL_TYPES:
        chosen = sorted(pairs[ct], key=lambda p: (EDGES[p[0]][1], EDGES[p[0]][0]))
        genes[ct] = tuple((PRIMITIVES[o], EDGES[e][0]) for e, o in chosen)
    return Genotype(normal=genes["normal"], normal_concat=CONCAT, reduce=genes["reduce"], reduce_concat=CONCAT)


def cell_channel_counts(C: int, layers: int) -> list[int]:
    """Output channels ``C_curr`` of each cell of a DARTS search network (doubling at the
    reduction cells at ``layers // 3`` and ``2 * layers // 3``)."""
    out, c = [], C
    for i in range(layers):
        if i in (layers // 3, 2 * layers // 3):
            c *= 2
        out.append(c)
    return out


def cell_types_of(layers: int) -> list[str]:
    return ["reduce" if i in (layers // 3, 2 * layers // 3) else "normal" for i in range(layers)]


def check_layers(layers: int, what: str) -> None:
    """A search depth with at least one cell of each type (both α tables get gradients)."""
    types = cell_types_of(int(layers))
    if int(layers) != layers or "normal" not in types or "reduce" not in types:
        raise ValueError(f"{what}={layers}: a DARTS search network needs a normal and a reduction cell "
                         f"(reductions at layers//3 and 2*layers//3): use layers >= 3")


def logsoftmax_table(alpha: torch.Tensor, alive: Sequence[Sequence[int]]) -> torch.Tensor:
    """``(14, 8)`` float64 log-softmax of ``alpha`` (14, k) over the alive ops (``-inf`` elsewhere), CPU."""
    ls = alpha.detach().double().log_softmax(dim=-1).cpu()
    out = torch.full((NUM_EDGES, NUM_OPS), -math.inf, dtype=torch.float64)
    idx = torch.tensor([list(a) for a in alive], dtype=torch.long)
    return out.scatter(1, idx, ls)
