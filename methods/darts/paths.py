"""Helpers shared by the path-based DARTS-space methods (``methods.darts.spos``, ``methods.darts.hopnas``).

* ``sample_genotype``: the constrained uniform single path — per intermediate node of each cell
  type, 2 distinct inputs drawn uniformly among the earlier nodes, each with one uniform
  non-``none`` op;
* ``mutate`` / ``crossover``: evolution operators that keep that constraint (a mutated gene
  redraws its input among the earlier nodes not used by the node's other gene; crossover
  swaps whole nodes, so a node's two inputs stay distinct);
* ``evolve``: SPOS's evolutionary search (as ``methods.spos.evolve``) over Genotypes;
* ``genotype_scores``: the one-shot score of each genotype (accuracy or minus loss on
  ``setup.valid`` after BN recalibration on ``setup.calib``, ``methods.base.one_shot_eval``),
  the supernet's own BN statistics restored afterwards.
"""
from __future__ import annotations

import random
from typing import Callable, Mapping, Sequence

import numpy as np
from torch import nn

from methods.base import Batch, Ticker, as_ticker, one_shot_eval, preserved_bn_statistics
from methods.darts.common import NODES, make_genotype
from spaces.darts import CELL_TYPES, EDGES, NONE, PRIMITIVES, Genotype, edge_index, path_plan

CANDIDATES: tuple[int, ...] = tuple(o for o in range(len(PRIMITIVES)) if o != NONE)  # every op but `none`

# A cell as genes: per intermediate node (2..5, in order) two (input node, op index) pairs.
Cell = tuple[tuple[tuple[int, int], tuple[int, int]], ...]


def cell_genes(genotype: Genotype, cell_type: str) -> Cell:
    """The genes of one cell type, node by node, each node's pair ordered by input node."""
    by_node: dict[int, list[tuple[int, int]]] = {n: [] for n in NODES}
    for e, o in genotype.edges(cell_type):
        src, dst = EDGES[e]
        by_node[dst].append((src, o))
    out: list[tuple[tuple[int, int], tuple[int, int]]] = []
    for n in NODES:
        pair = sorted(by_node[n])
        if len(pair) != 2:
            raise ValueError(f"node {n} of the {cell_type} cell has {len(pair)} inputs, not 2")
        out.append((pair[0], pair[1]))
    return tuple(out)


def from_cells(cells: Mapping[str, Sequence[Sequence[tuple[int, int]]]]) -> Genotype:
    """A Genotype from ``{cell type: per node, 2 (input node, op index) genes}``."""
    pairs = {}
    for ct in CELL_TYPES:
        pairs[ct] = [(edge_index(src, n), o) for n, genes in zip(NODES, cells[ct]) for src, o in genes]
    return make_genotype(pairs)


def sample_cell(rng: random.Random) -> list[list[tuple[int, int]]]:
    out = []
    for n in NODES:
        a, b = sorted(rng.sample(range(n), 2))
        out.append([(a, rng.choice(CANDIDATES)), (b, rng.choice(CANDIDATES))])
    return out


def sample_genotype(rng: random.Random) -> Genotype:
    """Uniform single path: per node 2 distinct inputs (uniform pair), each a uniform non-none op;
    the normal and the reduction cell drawn independently (normal first)."""
    return from_cells({ct: sample_cell(rng) for ct in CELL_TYPES})


def mutate(genotype: Genotype, rng: random.Random, prob: float) -> Genotype:
    """Each gene's input is redrawn with probability ``prob`` (among the earlier nodes other than
    the node's other input), and, independently, its op with probability ``prob``."""
    cells = {}
    for ct in CELL_TYPES:
        nodes = []
        for n, pair in zip(NODES, cell_genes(genotype, ct)):
            genes = [list(g) for g in pair]
            for i in range(2):
                if rng.random() < prob:
                    other = genes[1 - i][0]
                    genes[i][0] = rng.choice([s for s in range(n) if s != other])
                if rng.random() < prob:
                    genes[i][1] = rng.choice(CANDIDATES)
            nodes.append([(s, o) for s, o in genes])
        cells[ct] = nodes
    return from_cells(cells)


def crossover(a: Genotype, b: Genotype, rng: random.Random) -> Genotype:
    """Node-wise uniform crossover: each node of each cell type takes both its genes from ``a`` or ``b``."""
    cells = {}
    for ct in CELL_TYPES:
        ga, gb = cell_genes(a, ct), cell_genes(b, ct)
        cells[ct] = [list(ga[i] if rng.random() < 0.5 else gb[i]) for i in range(len(NODES))]
    return from_cells(cells)


def evolve(fitness: Callable[[list[Genotype]], np.ndarray], rng: random.Random, population: int, generations: int,
           parents: int, mutants: int, crossovers: int, mutation_prob: float,
           progress: Ticker | None = None) -> tuple[Genotype, list[dict]]:
    """SPOS's evolution over Genotypes (``fitness`` higher = better; duplicates never re-evaluated).

    Returns the best genotype seen and a JSON-able history (one record per generation).
    """
    seen: dict[Genotype, float] = {}
    history: list[dict] = []

    def draw(make: Callable[[], Genotype], limit: int, taken: list[Genotype]) -> list[Genotype]:
        keys = set(taken)
        out: list[Genotype] = []
        for _ in range(limit * 20):
            if len(out) == limit:
                break
            g = make()
            if g not in seen and g not in keys:
                keys.add(g)
                out.append(g)
        return out

    def evaluate(gs: list[Genotype]) -> None:
        if gs:
            for g, f in zip(gs, fitness(gs)):
                seen[g] = float(f)

    evaluate(draw(lambda: sample_genotype(rng), population, []))
    for generation in range(generations):
        ranked = sorted(seen.items(), key=lambda t: -t[1])
        top = [g for g, _ in ranked[:parents]]
        children = draw(lambda: mutate(rng.choice(top), rng, mutation_prob), mutants, [])
        children += draw(lambda: crossover(rng.choice(top), rng.choice(top), rng), crossovers, children)
        evaluate(children)
        best_g, best_f = max(seen.items(), key=lambda t: t[1])
        history.append({"generation": generation + 1, "evaluated": len(seen), "best_fitness": best_f,
                        "best": best_g.to_str()})
        if progress is not None:
            progress.tick(generation + 1, f"{len(seen)} genotypes evaluated, best fitness {best_f:.4f}")
    return max(seen.items(), key=lambda t: t[1])[0], history


def genotype_scores(supernet: nn.Module, genotypes: Sequence[Genotype], calib: Sequence[Batch],
                    valid: Sequence[Batch], by: str = "acc",
                    progress: Callable[[str], None] | Ticker | None = None) -> np.ndarray:
    """One-shot score of each genotype's single path: accuracy (``by='acc'``) or minus loss
    (``'loss'``) on ``valid`` after BN recalibration on ``calib``; BN statistics preserved."""
    if by not in ("acc", "loss"):
        raise ValueError(f"one-shot score is 'acc' or 'loss', got {by!r}")
    if not valid:
        raise ValueError("one-shot scoring needs validation batches (SearchSetup.valid is empty)")
    out = np.empty(len(genotypes), dtype=np.float64)
    ticker = as_ticker(progress, "one-shot scoring", len(genotypes), "genotypes")
    with preserved_bn_statistics(supernet):
        for i, g in enumerate(genotypes):
            plan = path_plan(g)
            acc, loss = one_shot_eval(supernet, lambda x: supernet(x, plan), calib, valid)
            out[i] = acc if by == "acc" else -loss
            ticker.tick(i + 1)
    return out
