"""What a supernet's forward takes, shared by every space: per edge, the candidates to run.

A *plan* names, for each edge of a cell, the candidate ops to compute and how to weight each;
the supernet itself holds no mode and no architecture parameters. NAS-Bench-201
(``spaces.nb201``) and the DARTS space (``spaces.darts``) take the same ``Term``s.
"""
from __future__ import annotations

from typing import Callable, NamedTuple, Sequence, Union

import torch

Coef = Union[None, float, torch.Tensor]


class Term(NamedTuple):
    """One active candidate of an edge: ``coef * transform(op(x))``.

    ``coef`` is ``None`` (weight 1, the single-path case), a float, or a tensor broadcastable
    to the op output ``(B, C, H, W)``: a 0-d learnable scalar, ``(1, C, 1, 1)`` per channel,
    ``(B, 1, 1, 1)`` per sample. A literal ``0`` / ``0.0`` coefficient skips the op entirely.
    ``transform`` (e.g. dropout after a skip) is applied to the op output before the coef.
    """

    op: int
    coef: Coef = None
    transform: Callable[[torch.Tensor], torch.Tensor] | None = None


EdgePlan = Sequence[Term]          # an empty plan = the edge outputs zero (none)
CellPlan = Sequence[EdgePlan]      # one per edge of the cell


def skipped(term: Term) -> bool:
    """A literal zero coefficient: the op is never run."""
    return isinstance(term.coef, (int, float)) and term.coef == 0


def apply_term(module: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, term: Term) -> torch.Tensor:
    out = module(x)
    if term.transform is not None:
        out = term.transform(out)
    return out if term.coef is None else out * term.coef


def sum_terms(terms: list[torch.Tensor], like: torch.Tensor) -> torch.Tensor:
    """The node's value: its terms summed in order. A node whose every input is ``none`` is an
    all-zero tensor shaped like ``like``, exactly as a Zero op computes it; ops downstream still
    run on it."""
    if not terms:
        return torch.zeros_like(like)
    out = terms[0]
    for t in terms[1:]:
        out = out + t
    return out
