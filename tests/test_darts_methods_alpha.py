"""DARTS-space P-DARTS, NAP and DNAL: smoke runs, bit-identical resume, and each method's rules."""
from __future__ import annotations

import copy
import dataclasses
import json

import numpy as np
import pytest
import torch

from common.config import config_from_dict, config_to_dict
from methods.base import SearchSetup
from methods.gates import gate_parameters
from methods.darts.common import NODE_EDGES, cell_channel_counts, make_genotype
from methods.darts.dnal import DartsDNAL, DartsDNALConfig, dnal_parse
from methods.darts.nap import DartsNAP, DartsNAPConfig, NAPGenotype, nap_top_pairs, project_to_genotype_cell
from methods.darts.pdarts import DartsPDARTS, DartsPDARTSConfig, pdarts_parse
from spaces.darts import CELL_TYPES, EDGES, NONE, NUM_EDGES, PRIMITIVES, SKIP, Genotype, edge_index

METHODS = [DartsPDARTS, DartsNAP, DartsDNAL]
SEP3 = PRIMITIVES.index("sep_conv_3x3")
MAX3 = PRIMITIVES.index("max_pool_3x3")


def _setup(C: int = 4, seed: int = 0) -> SearchSetup:
    return SearchSetup(C=C, N=99, num_classes=10, device=torch.device("cpu"), seed=seed)


def _batches(n: int, seed: int, b: int = 4, hw: int = 16) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(b, 3, hw, hw, generator=g), torch.randint(0, 10, (b,), generator=g)) for _ in range(n)]


TRAIN, VALID = _batches(2, seed=1), _batches(2, seed=2)


def _run(cls, cfg, epochs: int | None = None, method=None):
    m = method if method is not None else cls(cfg, _setup())
    logs = []
    for _ in range(cfg.epochs if epochs is None else epochs):
        logs.append(m.train_epoch(TRAIN, VALID))
    return m, logs


def _arch_tables(m) -> dict:
    if isinstance(m, DartsPDARTS):
        return {"alpha": {ct: m.alpha[ct].detach().clone() for ct in CELL_TYPES},
                "logsm": [{ct: t[ct].clone() for ct in CELL_TYPES} for t in m.logsm]}
    if isinstance(m, DartsNAP):
        return {"strength": {ct: m.strength[ct].detach().clone() for ct in CELL_TYPES}}
    return {"gates": {k: v.clone() for k, v in m.gates.state_dict().items() if isinstance(v, torch.Tensor)}}


def _same(a, b) -> bool:
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, list):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    return bool(torch.equal(a, b))


def _num_params(mods) -> int:
    """Parameters of what ``op_modules`` returns (None, a module, or modules)."""
    if mods is None:
        return 0
    if isinstance(mods, torch.nn.Module):
        mods = [mods]
    return sum(p.numel() for mod in mods if mod is not None for p in mod.parameters())


def _smoke(cls):
    cfg = cls.Config.preset("smoke")
    if cls is DartsPDARTS:  # 2 epochs per stage: the warm-up epoch, then one with α steps
        return dataclasses.replace(cfg, epochs=6)
    return cfg


# --------------------------------------------------------------------------- interface and configs


@pytest.mark.parametrize("cls", METHODS)
def test_interface_and_configs_round_trip(cls):
    assert cls.space == "darts" and cls.name in ("pdarts", "nap", "dnal")
    for budget in ("smoke", "cpu", "paper"):
        cfg = cls.Config.preset(budget)
        assert cfg.epochs >= 1
        assert dataclasses.is_dataclass(cfg)
        data = config_to_dict(cfg)
        assert config_from_dict(cls.Config, json.loads(json.dumps(data))) == cfg
        with pytest.raises(dataclasses.FrozenInstanceError):
            setattr(cfg, "epochs", 1)
    with pytest.raises(ValueError):
        cls.Config.preset("huge")
    with pytest.raises(NotImplementedError):
        cls(_smoke(cls), _setup()).score([])


def test_paper_presets():
    p = DartsPDARTSConfig.preset("paper")
    assert (p.stage_cells, p.stage_ops, p.stage_epochs, p.warmup_epochs) == ((5, 11, 17), (8, 5, 3), (25,) * 3, (10,) * 3)
    assert (p.batch_size, p.arch_lr, p.lr, p.weight_decay, p.skip_cap, p.dropout_rates) == (96, 6e-4, 0.025, 3e-4, 2,
                                                                                            (0.0, 0.4, 0.7))
    d = DartsDNALConfig.preset("paper")
    assert [d.phase_of(e)[0] for e in (0, 49, 50, 59)] == ["weights", "weights", "arch", "arch"]
    assert d.delta_at(1) == pytest.approx(10 ** 0.4) and d.delta_at(10) == 1e4
    n = DartsNAPConfig.preset("paper")
    assert n.keep_pairs == 8 and len(n.prune_at) == 6
    with pytest.raises(ValueError):
        DartsPDARTSConfig(stage_cells=(2, 11, 17))  # 2 cells: both reductions, no normal cell


# --------------------------------------------------------------------------- smoke runs and resume


@pytest.mark.parametrize("cls", METHODS)
def test_smoke_runs_and_resumes_bit_identically(cls):
    cfg = _smoke(cls)
    full, logs = _run(cls, cfg)
    assert len(logs) == cfg.epochs and all(np.isfinite(v) for log in logs for v in log.values())
    geno = full.derive()
    assert isinstance(geno, Genotype)
    assert Genotype.from_str(geno.to_str()) == geno
    extras = full.extras()
    json.dumps(extras)
    assert extras["derived"] == geno.to_str()

    # interrupt inside a phase: P-DARTS after stage 2's warm-up epoch, NAP after its warm-up,
    # DNAL after the first arch epoch (δ and α mid-continuation)
    k = {DartsPDARTS: 3, DartsNAP: 1, DartsDNAL: 2}[cls]
    first, _ = _run(cls, cfg, epochs=k)
    state = copy.deepcopy(first.state_dict())
    del first
    resumed = cls(cfg, _setup())
    resumed.load_state_dict(state)
    _run(cls, cfg, epochs=cfg.epochs - k, method=resumed)
    assert resumed.derive() == geno
    assert _same(_arch_tables(resumed), _arch_tables(full))
    assert json.dumps(resumed.extras()) == json.dumps(extras)


# --------------------------------------------------------------------------- P-DARTS


def test_pdarts_stages_ops_and_dropped_ops_hold_no_parameters():
    cfg = _smoke(DartsPDARTS)
    m = DartsPDARTS(cfg, _setup())
    seen = []
    for s in range(cfg.num_stages):
        assert m.stage == s and m.supernet.num_cells == cfg.stage_cells[s]
        for ct in CELL_TYPES:
            assert all(len(ops) == cfg.stage_ops[s] for ops in m.alive[s][ct])
            assert tuple(m.alpha[ct].shape) == (NUM_EDGES, cfg.stage_ops[s])
        for ct in CELL_TYPES:
            for e in range(NUM_EDGES):
                for o in range(len(PRIMITIVES)):
                    n = _num_params(m.supernet.op_modules(ct, e, o))
                    if o not in m.alive[s][ct][e]:
                        assert n == 0, (s, ct, e, PRIMITIVES[o])
                    elif o == SEP3:
                        assert n > 0, (s, ct, e)  # an alive conv holds weights (the check is not vacuous)
        seen.append(sum(p.numel() for p in m.supernet.parameters()))
        for _ in range(cfg.stage_epochs[s]):
            m.train_epoch(TRAIN, VALID)
    assert m.done
    # later stages keep only a subset of the earlier stage's ops
    for ct in CELL_TYPES:
        for e in range(NUM_EDGES):
            assert set(m.alive[2][ct][e]) <= set(m.alive[1][ct][e]) <= set(m.alive[0][ct][e])
    normal = [op for op, _ in m.derive().normal]
    assert normal.count("skip_connect") <= cfg.skip_cap and "none" not in normal


def test_pdarts_skip_drop_schedule():
    cfg = DartsPDARTSConfig.preset("paper")
    assert cfg.skip_drop_rate(0, 0) == 0.0
    assert cfg.skip_drop_rate(1, 0) == pytest.approx(0.4 * 24 / 25)
    assert cfg.skip_drop_rate(2, 10) == pytest.approx(0.7)
    assert cfg.skip_drop_rate(2, 12) == pytest.approx(0.7 * np.exp(-0.4))


def _skip_heavy_probs() -> tuple[np.ndarray, list[list[int]]]:
    """Last-stage probs: skip best everywhere (distinct), sep_conv_3x3 second at 0.1, none the rest."""
    alive = [[NONE, SKIP, SEP3] for _ in range(NUM_EDGES)]
    p = np.zeros((NUM_EDGES, len(PRIMITIVES)))
    skip = 0.5 + 0.025 * np.arange(NUM_EDGES)[::-1]   # edge 0 strongest ... edge 13 weakest
    p[:, SKIP], p[:, SEP3] = skip, 0.1
    p[:, NONE] = 1 - p[:, SKIP] - p[:, SEP3]
    return p, alive


def test_pdarts_skip_cap_replaces_the_weakest_skips():
    p, alive = _skip_heavy_probs()
    uncapped, info0 = pdarts_parse(p, alive, None)
    assert sum(o == SKIP for _, o in uncapped) == 8 and info0["skips_before_cap"] == 8
    pairs, info = pdarts_parse(p, alive, 2)
    skips = sorted(e for e, o in pairs if o == SKIP)
    assert len(skips) == 2 and info["skips_after_cap"] == 2
    assert skips == [0, 1]  # the two strongest skips survive; every weaker selected one was zeroed
    assert len(pairs) == 8 and all(o in (SKIP, SEP3) for _, o in pairs)
    for n, edges in NODE_EDGES.items():  # still 2 inputs per node
        assert sum(e in edges for e, _ in pairs) == 2
    # the first one zeroed is the weakest selected skip
    sel = [e for e, o in uncapped if o == SKIP]
    assert info["skip_zeroed_edges"][0] == f"{EDGES[max(sel)][1]}<-{EDGES[max(sel)][0]}"
    # a weakest skip whose node has a better alternative edge is replaced by that edge
    p2, _ = _skip_heavy_probs()
    e_alt = edge_index(2, 5)
    p2[e_alt, SKIP], p2[e_alt, SEP3] = 0.05, 0.45        # node 5: a strong sep edge, unselected before
    p2[e_alt, NONE] = 0.5
    pairs2, _ = pdarts_parse(p2, alive, 2)
    assert (e_alt, SEP3) in pairs2
    # the reduce cell is never capped (the class passes None there)
    m = DartsPDARTS(_smoke(DartsPDARTS), _setup())
    m.stage = m.cfg.num_stages - 1
    m.alive.extend([{ct: alive for ct in CELL_TYPES}] * (m.cfg.num_stages - 1))
    logp = torch.from_numpy(np.log(np.where(p > 0, p, 1e-300)))
    geno, info3 = m._decide({ct: logp for ct in CELL_TYPES})
    assert [op for op, _ in geno.normal].count("skip_connect") == 2
    assert [op for op, _ in geno.reduce].count("skip_connect") == 8


# --------------------------------------------------------------------------- NAP


def test_nap_strengths_unnormalised_without_none():
    m = DartsNAP(_smoke(DartsNAP), _setup())
    for ct in CELL_TYPES:
        assert tuple(m.strength[ct].shape) == (NUM_EDGES, len(PRIMITIVES) - 1)  # no `none` strength
        assert torch.all(m.strength[ct] == 1.0)
    with torch.no_grad():
        for i, ct in enumerate(CELL_TYPES):
            m.strength[ct].copy_(torch.linspace(-1.0, 3.0, NUM_EDGES * 7).view(NUM_EDGES, 7) + i)
    plan = m.plan()
    for ct, cell in zip(CELL_TYPES, plan):
        for e, terms in enumerate(cell):
            assert [t.op for t in terms] == list(range(1, len(PRIMITIVES)))  # `none` never in a plan
            for t in terms:
                assert float(t.coef.detach()) == float(m.strength[ct][e, t.op - 1].detach())  # the raw strength, no softmax
    x, y = VALID[0]
    loss = torch.nn.functional.cross_entropy(m.supernet(x, plan), y)
    grads = torch.autograd.grad(loss, m.arch_parameters())
    # a softmax's gradient w.r.t. its logits sums to 0 over each edge: these do not
    sums = torch.cat([g.sum(dim=1) for g in grads])
    assert sums.abs().max() > 1e-6


def test_nap_global_top8_without_per_node_rule():
    s = np.zeros((NUM_EDGES, len(PRIMITIVES)))
    alive = np.zeros((NUM_EDGES, len(PRIMITIVES)), dtype=bool)
    alive[:, 1:] = True
    s[:, 1:] = 0.1
    strong = [(edge_index(0, 2), SEP3, 5.0), (edge_index(1, 2), MAX3, 4.9),
              (edge_index(0, 3), SEP3, 4.8), (edge_index(1, 3), SEP3, 4.7), (edge_index(2, 3), SKIP, 4.6),
              (edge_index(0, 5), SEP3, 4.5), (edge_index(3, 5), SEP3, 4.4), (edge_index(1, 3), MAX3, 4.3)]
    for e, o, v in strong:
        s[e, o] = v
    s[edge_index(1, 4), SEP3] = 0.2      # node 4's strongest pair, outside the top 8
    s[edge_index(0, 4), :] = -1.0        # non-positive: never kept, never a filler either when others exist
    pairs = nap_top_pairs(s, alive, 8, 0.0)
    assert sorted(pairs) == sorted((e, o) for e, o, _ in strong)
    nap = DartsNAP(_smoke(DartsNAP), _setup())
    with torch.no_grad():
        for ct in CELL_TYPES:
            nap.strength[ct].copy_(torch.from_numpy(s[:, 1:]).float())
    g = nap.derive_nap()
    deg = g.in_degree("normal")
    assert deg == {2: 2, 3: 4, 4: 0, 5: 2}  # node 3 has 4 inputs (two ops on one edge), node 4 none
    assert NAPGenotype.from_str(g.to_str()) == g
    # the projection: node 3 keeps its 2 strongest edges, node 4 is filled from its strongest edges
    proj, info = project_to_genotype_cell(pairs, s, alive)
    assert sorted(proj) == sorted([(edge_index(0, 2), SEP3), (edge_index(1, 2), MAX3),
                                   (edge_index(0, 3), SEP3), (edge_index(1, 3), SEP3),
                                   (edge_index(1, 4), SEP3), (edge_index(2, 4), 1),
                                   (edge_index(0, 5), SEP3), (edge_index(3, 5), SEP3)])
    assert len(info["added"]) == 2 and len(info["dropped"]) == 2 and not info["unchanged"]
    geno = nap.derive()
    assert geno == make_genotype({ct: proj for ct in CELL_TYPES})
    ex = nap.extras()
    assert ex["nap_genotype"] == g.to_str() and ex["nap_in_degree"]["normal"]["4"] == 0


def test_nap_prunes_per_cell_type():
    m = DartsNAP(dataclasses.replace(_smoke(DartsNAP), epochs=2, warmup_frac=0.0, prune_at=(0.5, 1.0)), _setup())
    with torch.no_grad():  # reduce strengths opposite to normal: each type prunes by its own table
        m.strength["normal"].copy_(torch.arange(7.0).expand(NUM_EDGES, 7) + 1)
        m.strength["reduce"].copy_(7 - torch.arange(7.0).expand(NUM_EDGES, 7) + 1)
    m.prune_event()
    assert not m.alive["normal"][:, 1].any() and m.alive["normal"][:, 2:].all()
    assert not m.alive["reduce"][:, 7].any() and m.alive["reduce"][:, 1:7].all()
    assert m.snapshot is not None and m.events_done == 1


# --------------------------------------------------------------------------- DNAL


def test_dnal_phases_delta_and_frozen_weights():
    cfg = _smoke(DartsDNAL)
    assert [cfg.phase_of(e) for e in range(cfg.epochs)] == [("weights", 1), ("arch", 1), ("arch", 2)]
    assert (cfg.delta_at(1), cfg.delta_at(2)) == (pytest.approx(100.0), 1e4)
    m = DartsDNAL(cfg, _setup())
    assert m.gates.gate(1, 0, 1).num_channels == cell_channel_counts(4, cfg.layers)[1] == 8
    m.train_epoch(TRAIN, VALID)
    assert m.gates.gate(0, 0, 1).mode == "bypass"
    before = {k: v.clone() for k, v in m.supernet.named_parameters()}
    log = m.train_epoch(TRAIN, VALID)
    assert log["delta"] == pytest.approx(100.0) and m.gates.gate(0, 3, 2).mode == "soft"
    head = {id(p) for p in m.classifier.parameters()}
    for name, p in m.supernet.named_parameters():
        if id(p) in head:
            assert not torch.equal(p, before[name])
        else:
            assert torch.equal(p, before[name]), name  # conv / BN frozen in the arch phase
    assert any(float(a.detach().abs().sum()) > 0 for a in gate_parameters(m.gates))
    m.train_epoch(TRAIN, VALID)
    assert m.delta == 1e4


def test_dnal_per_node_top2_rule():
    kept = np.zeros((NUM_EDGES, len(PRIMITIVES)))
    alpha = np.zeros((NUM_EDGES, len(PRIMITIVES)))
    kept[:, SEP3] = 0.5
    kept[edge_index(0, 3), MAX3] = 0.9       # op by largest kept fraction
    kept[edge_index(2, 3), SEP3] = 0.1       # node 3: edges 0->3 (0.9), 1->3 (0.5) beat 2->3 (0.1)
    kept[edge_index(0, 4), :] = 0.0          # node 4: an edge gated off completely
    alpha[edge_index(0, 4), SKIP] = 3.0
    kept[edge_index(1, 4), :] = 0.0
    kept[edge_index(2, 4), :] = 0.0
    kept[edge_index(3, 4), :] = 0.0
    alpha[edge_index(1, 4), MAX3] = 1.0      # all off: by mean α (0->4 skip 3.0, 1->4 max 1.0)
    for src in (0, 3, 4):                    # node 5: a three-way tie at 0.7 broken by α: 3->5, 4->5
        kept[edge_index(src, 5), SEP3] = 0.7
    alpha[edge_index(3, 5), SEP3] = 0.2
    alpha[edge_index(4, 5), SEP3] = 0.1
    pairs, forced = dnal_parse(kept, alpha)
    assert sorted(pairs) == sorted([(edge_index(0, 2), SEP3), (edge_index(1, 2), SEP3),
                                    (edge_index(0, 3), MAX3), (edge_index(1, 3), SEP3),
                                    (edge_index(0, 4), SKIP), (edge_index(1, 4), MAX3),
                                    (edge_index(3, 5), SEP3), (edge_index(4, 5), SEP3)])
    assert sorted(forced) == sorted([edge_index(0, 4), edge_index(1, 4)])
    assert all(o != NONE for _, o in pairs)


@pytest.mark.parametrize("cls", METHODS)
def test_max_batches_caps_an_epoch(cls):
    cfg = dataclasses.replace(_smoke(cls), max_batches=1)
    bogus = (torch.zeros(1), torch.zeros(1))  # would fail if it were used
    m = cls(cfg, _setup())
    m.train_epoch([TRAIN[0], bogus], [VALID[0], bogus])
