"""DARTS-space SPOS and HOPNAS: sampling, evolution operators, smoke runs, bit-identical resume, rules."""
from __future__ import annotations

import dataclasses
import json
import random

import numpy as np
import pytest
import torch

from common.config import config_from_dict, config_to_dict
from methods.base import SearchSetup
from methods.darts.common import NODES
from methods.darts.hopnas import DartsHOPNAS
from methods.darts.paths import CANDIDATES, cell_genes, crossover, mutate, sample_genotype
from methods.darts.spos import DartsSPOS
from spaces.darts import CELL_TYPES, EDGES, NONE, Genotype

METHODS = [DartsSPOS, DartsHOPNAS]


def _setup(C: int = 4, seed: int = 0, calib=None, valid=None) -> SearchSetup:
    torch.manual_seed(seed)  # the supernet's initial weights (the harness seeds torch likewise)
    return SearchSetup(C=C, N=99, num_classes=10, device=torch.device("cpu"), seed=seed,
                       calib=calib if calib is not None else CALIB, valid=valid if valid is not None else VALID)


def _batches(n: int, seed: int, b: int = 4, hw: int = 16) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(b, 3, hw, hw, generator=g), torch.randint(0, 10, (b,), generator=g)) for _ in range(n)]


TRAIN, VALID, CALIB = _batches(2, seed=1), _batches(1, seed=2), _batches(1, seed=3)


def _valid_genotype(g: Genotype) -> None:
    for ct in CELL_TYPES:
        pairs = g.edges(ct)
        assert len(pairs) == 8
        for n in NODES:
            mine = [(e, o) for e, o in pairs if EDGES[e][1] == n]
            assert len(mine) == 2 and len({EDGES[e][0] for e, _ in mine}) == 2
            assert all(EDGES[e][0] < n and o != NONE for e, o in mine)
    assert Genotype.from_str(g.to_str()) == g


def _fast(cls):
    cfg = cls.Config.preset("smoke")
    if cls is DartsSPOS:
        return dataclasses.replace(cfg, layers=3, epochs=2)
    return dataclasses.replace(cfg, layers=3, epochs=2, importance_calib_images=4, importance_valid_images=4)


def _op_params(net, ct: str, e: int, o: int) -> list[torch.nn.Parameter]:
    mods = net.op_modules(ct, e, o)
    mods = [mods] if isinstance(mods, torch.nn.Module) else list(mods or [])
    return [p for mod in mods if mod is not None for p in mod.parameters()]


def _cheap_importance(m: DartsHOPNAS) -> None:
    """Replace HOPNAS's importance (a BN-recalibrated evaluation per candidate, ~0.2 s each here)
    by a weight-dependent stand-in, so the pruning logic and resume are tested fast; the real
    measurement has its own test."""
    def measure(cands, alive=None, ticker=None):
        return [sum(float(p.detach().abs().sum()) for o in ops for p in _op_params(m.supernet, CELL_TYPES[ct], e, o))
                + 0.01 * e + 0.001 * sum(ops) for ct, e, ops in cands]
    m.measure = measure  # type: ignore[method-assign]


# --------------------------------------------------------------------------- sampling and operators


def test_sampling_valid_and_covers_every_choice():
    rng = random.Random(0)
    seen_ops: dict[str, set[int]] = {ct: set() for ct in CELL_TYPES}
    seen_inputs: dict[str, dict[int, set[int]]] = {ct: {n: set() for n in NODES} for ct in CELL_TYPES}
    for _ in range(400):
        g = sample_genotype(rng)
        _valid_genotype(g)
        for ct in CELL_TYPES:
            for e, o in g.edges(ct):
                seen_ops[ct].add(o)
                seen_inputs[ct][EDGES[e][1]].add(EDGES[e][0])
    for ct in CELL_TYPES:
        assert seen_ops[ct] == set(CANDIDATES)
        for n in NODES:
            assert seen_inputs[ct][n] == set(range(n))


def test_mutation_and_crossover_keep_validity():
    rng = random.Random(1)
    gs = [sample_genotype(rng) for _ in range(20)]
    changed = 0
    for i in range(200):
        a, b = gs[i % 20], gs[(i * 7 + 3) % 20]
        m = mutate(a, rng, 0.5)
        _valid_genotype(m)
        changed += m != a
        c = crossover(a, b, rng)
        _valid_genotype(c)
        for ct in CELL_TYPES:  # node-wise: each node comes whole from a parent
            for node_c, node_a, node_b in zip(cell_genes(c, ct), cell_genes(a, ct), cell_genes(b, ct)):
                assert node_c in (node_a, node_b)
    assert changed > 150
    assert mutate(gs[0], rng, 0.0) == gs[0]


# --------------------------------------------------------------------------- interface and configs


@pytest.mark.parametrize("cls", METHODS)
def test_configs_round_trip_and_presets(cls):
    for budget in ("smoke", "cpu", "paper"):
        cfg = cls.Config.preset(budget)
        d = config_to_dict(cfg)
        assert config_from_dict(cls.Config, json.loads(json.dumps(d))) == cfg
    assert cls.Config.preset("paper").layers == 8
    with pytest.raises(ValueError):
        cls.Config.preset("huge")
    assert cls.space == "darts" and cls.name in ("spos", "hopnas")


@pytest.mark.parametrize("cls", METHODS)
def test_smoke_runs_and_resumes_bit_identically(cls):
    cfg = _fast(cls)

    def make():
        m = cls(cfg, _setup())
        if isinstance(m, DartsHOPNAS):
            _cheap_importance(m)
        return m

    full = make()
    logs = [full.train_epoch(TRAIN, VALID) for _ in range(cfg.epochs)]
    assert all(np.isfinite(v) for log in logs for v in log.values())
    g_full = full.derive()
    _valid_genotype(g_full)

    part = make()
    part.train_epoch(TRAIN, VALID)
    state = part.state_dict()
    resumed = make()
    resumed.load_state_dict(state)
    for _ in range(cfg.epochs - 1):
        resumed.train_epoch(TRAIN, VALID)
    sd_a, sd_b = full.supernet.state_dict(), resumed.supernet.state_dict()
    assert all(torch.equal(sd_a[k], sd_b[k]) for k in sd_a)
    assert resumed.derive() == g_full
    json.dumps(full.extras())
    scores = full.score([g_full, sample_genotype(random.Random(5))])
    assert scores.shape == (2,) and np.isfinite(scores).all()


def test_spos_step_updates_only_sampled_ops():
    m = DartsSPOS(_fast(DartsSPOS), _setup())
    g = sample_genotype(random.Random(3))
    before = {k: v.clone() for k, v in m.supernet.named_parameters()}
    x, y = TRAIN[0]
    m.train_step(x, y, g)
    sampled = set()
    for ct in CELL_TYPES:
        for e, o in g.edges(ct):
            mods = m.supernet.op_modules(ct, e, o)
            mods = [mods] if isinstance(mods, torch.nn.Module) else list(mods or [])
            sampled |= {id(p) for mod in mods if mod is not None for p in mod.parameters()}
    op_params = set()
    for ct in CELL_TYPES:
        for e in range(len(EDGES)):
            for o in CANDIDATES:
                mods = m.supernet.op_modules(ct, e, o)
                mods = [mods] if isinstance(mods, torch.nn.Module) else list(mods or [])
                op_params |= {id(p) for mod in mods if mod is not None for p in mod.parameters()}
    moved_sampled = 0
    for k, p in m.supernet.named_parameters():
        if id(p) in op_params and id(p) not in sampled:
            assert torch.equal(p, before[k]), k
        elif id(p) in sampled and not torch.equal(p, before[k]):
            moved_sampled += 1
    assert moved_sampled > 0


def test_hopnas_prunes_node_by_node_whole_ops_to_two_inputs_one_op():
    cfg = _fast(DartsHOPNAS)
    m = DartsHOPNAS(cfg, _setup())
    _cheap_importance(m)
    stages = cfg.stages()
    assert [n for _, n in stages] == sorted(n for _, n in stages)           # topological node order
    for n in NODES:  # edges before ops within a node
        phases = [p for p, k in stages if k == n]
        assert phases == sorted(phases)  # "edges" < "ops"
    for _ in range(cfg.epochs):
        m.train_epoch(TRAIN, VALID)
    assert m.finished and m.events_done == len(stages)
    nodes_seen = [r["node"] for r in m.history]
    assert nodes_seen == sorted(nodes_seen)
    for ct in range(len(CELL_TYPES)):
        for n in NODES:
            edges = m.alive_edges(ct, n)
            assert len(edges) == 2
            assert all(len(m.alive_ops(ct, e)) == 1 for e in edges)
    assert not m.alive[:, :, NONE].any()
    _valid_genotype(m.derive())
    # dropout masks are whole ops: per-sample (B,1,1,1) 0/1 coefficients or None
    plan = m.dropout_plan(4, float(cfg.epochs))
    m2 = DartsHOPNAS(dataclasses.replace(cfg, drop_rate=0.5), _setup())
    plan = m2.dropout_plan(4, float(cfg.epochs))
    assert len(plan) == m2.supernet.num_cells
    coefs = [t.coef for cell in plan for edge in cell for t in edge]
    assert any(isinstance(c, torch.Tensor) for c in coefs)
    for c in coefs:
        if isinstance(c, torch.Tensor):
            assert c.shape == (4, 1, 1, 1) and set(c.flatten().tolist()) <= {0.0, 1.0}
        else:
            assert c is None


def test_hopnas_derive_before_pruning_finishes_is_valid_and_stateless():
    cfg = _fast(DartsHOPNAS)
    m = DartsHOPNAS(cfg, _setup())
    _cheap_importance(m)
    m.prune_event()
    m.prune_event()
    alive, done = m.alive.clone(), m.events_done
    g = m.derive()
    _valid_genotype(g)
    assert torch.equal(m.alive, alive) and m.events_done == done
    for _ in range(len(m.stages) - done):  # finishing the events for real gives the same genotype
        m.prune_event()
    assert m.finished and m.derive() == g


def test_hopnas_importance_is_measured_dropout_free_with_bn_preserved():
    m = DartsHOPNAS(_fast(DartsHOPNAS), _setup())
    bn = {k: v.clone() for k, v in m.supernet.state_dict().items() if "running" in k}
    cands = [(1, 2, tuple(m.alive_ops(1, 2)))]  # a whole edge of the reduction cell
    imps = m.measure(cands)
    assert np.isfinite(imps).all() and m.measure(cands) == imps   # deterministic: no dropout draws
    assert all(torch.equal(v, m.supernet.state_dict()[k]) for k, v in bn.items())
