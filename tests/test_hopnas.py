"""HOPNAS (reconstructed): whole-op path dropout, its ramp and renormalisation, hierarchical
pruning order, dropout-free importance with recalibrated BN, resume, smoke run."""
from __future__ import annotations

import dataclasses
import io
import json
import math

import numpy as np
import pytest
import torch
from torch import nn

from common.config import config_from_dict, config_to_dict
from methods.base import SearchSetup, one_shot_eval
from methods.registry import get_method
from methods.hopnas import HOPNAS, HOPNASConfig, NUM_EVENTS
from spaces.nb201 import NONE, NUM_EDGES, OPS, SKIP, Arch, Term, all_archs
from helpers import random_batches

CPU = torch.device("cpu")







def batches(n: int, size: int = 8, res: int = 8, seed: int = 0):
    return random_batches(n, size=size, res=res, seed=seed)


def make(res: int = 8, C: int = 8, seed: int = 0, **changes) -> HOPNAS:
    cfg = dataclasses.replace(HOPNASConfig.preset("smoke"), **changes)
    setup = SearchSetup(C=C, N=1, num_classes=10, device=CPU, seed=seed,
                        calib=batches(1, res=res, seed=101), valid=batches(1, res=res, seed=202))
    torch.manual_seed(seed)
    return HOPNAS(cfg, setup)


# --------------------------------------------------------------------------- config


def test_config_presets_round_trip_and_schedule():
    assert get_method("hopnas") is HOPNAS
    for budget in ("smoke", "cpu", "paper"):
        cfg = HOPNASConfig.preset(budget)
        assert config_from_dict(HOPNASConfig, json.loads(json.dumps(config_to_dict(cfg)))) == cfg
        for epochs in (1, 2, 3, 7, cfg.epochs):
            c = dataclasses.replace(cfg, epochs=epochs)
            times = c.event_times()
            assert len(times) == NUM_EVENTS and list(times) == sorted(times)
            assert 1 <= c.warmup_epochs <= epochs
            assert times[0] == c.warmup_epochs and math.isclose(times[-1], epochs)  # all fit in `epochs`
    paper = HOPNASConfig.preset("paper")
    assert (paper.epochs, paper.batch_size, paper.lr, paper.lr_min, paper.weight_decay) == (250, 64, 0.025, 0.001, 5e-4)
    with pytest.raises(ValueError, match="budget"):
        HOPNASConfig.preset("huge")
    for bad in ({"order": "sideways"}, {"drop_rate": 1.0}, {"warmup_frac": 0.0}, {"ramp_frac": 1.5},
                {"score_by": "acc"}, {"ghost_batch": -1}, {"importance_by": "flops"}, {"epochs": 0}):
        with pytest.raises(ValueError):
            HOPNASConfig(**bad)


# --------------------------------------------------------------------------- path dropout


def test_dropout_drops_whole_op_outputs_per_sample():
    m = make(res=8, drop_rate=0.3, ramp_frac=0.0)
    B = 32
    plan = m.dropout_plan(B, t=1.0)
    assert len(plan) == m.supernet.num_cells
    partial = 0
    for cell in plan:
        for e, terms in enumerate(cell):
            assert all(t.op != NONE for t in terms)
            for t in terms:
                if isinstance(t.coef, torch.Tensor):
                    assert tuple(t.coef.shape) == (B, 1, 1, 1)  # one number per sample: whole output
                    assert set(t.coef.unique().tolist()) <= {0.0, 1.0}
                    partial += 1
                else:
                    assert t.coef is None  # kept for every sample (no rescale)
    assert partial > 0
    # Functionally: node 1 of a cell is the sum of the kept ops' full outputs, per sample.
    cell = m.supernet.cells[0].eval()
    x = torch.randn(B, 8, 8, 8)
    edge0 = plan[0][0]
    probe = [list(edge0), [], [], [], [Term(SKIP)], []]  # cell output = node 1
    with torch.no_grad():
        out = cell(x, probe)
        full = {t.op: cell.edges[0][t.op](x) for t in edge0}
        for b in range(B):
            expect = torch.zeros_like(x[b])
            for t in edge0:
                kept = t.coef is None or bool(t.coef[b, 0, 0, 0] == 1)
                if kept:
                    expect += full[t.op][b]
            torch.testing.assert_close(out[b], expect)


def test_ghost_batch_masks_are_constant_within_each_ghost_batch():
    m = make(drop_rate=0.3, ramp_frac=0.0, ghost_batch=8)
    keep, _ = m.draw_keep(32, t=1.0)
    groups = keep.view(*keep.shape[:-1], 4, 8)
    assert bool((groups == groups[..., :1]).all())
    assert not bool((keep == keep[..., :1]).all())  # but ghost batches differ


def test_rescale_divides_kept_outputs_by_the_keep_probability():
    m = make(drop_rate=0.3, ramp_frac=0.0, rescale=True)
    p = 0.3 ** 0.25
    for cell in m.dropout_plan(64, t=1.0):
        for terms in cell:
            for t in terms:
                values = {round(v, 6) for v in (t.coef.unique().tolist() if isinstance(t.coef, torch.Tensor) else [t.coef])}
                assert values <= {0.0, round(1 / (1 - p), 6)}


def _rates(m: HOPNAS, t: float, B: int = 4096) -> tuple[float, float]:
    """Measured per-op drop rate and per-edge all-drop rate over the alive ops."""
    drawn = m.draw_keep(B, t)
    if drawn is None:
        return 0.0, 0.0
    keep, _ = drawn
    alive = m.alive.view(1, NUM_EDGES, len(OPS), 1).expand_as(keep)
    op_rate = 1.0 - keep[alive].float().mean().item()
    edges = [e for e in range(NUM_EDGES) if m.alive_ops(e)]
    all_drop = (~keep[:, edges].any(dim=2)).float().mean().item()
    return op_rate, all_drop


def test_drop_rate_ramps_linearly_to_the_target():
    m = make(epochs=10, drop_rate=0.3, ramp_frac=0.5)  # ramp over 5 epochs
    assert m.draw_keep(64, t=0.0) is None  # rate 0 at the start: nothing is even drawn
    for t in (1.25, 2.5, 3.75, 5.0, 8.0):
        P = 0.3 * min(1.0, t / 5.0)
        assert math.isclose(m.cfg.all_drop_prob(t), P)
        op_rate, all_drop = _rates(m, t)
        assert abs(all_drop - P) < 0.012, (t, all_drop, P)
        assert abs(op_rate - P ** 0.25) < 0.01, (t, op_rate, P ** 0.25)


@pytest.mark.parametrize("renormalise", [True, False])
def test_all_drop_probability_is_held_as_ops_are_pruned(renormalise):
    m = make(drop_rate=0.2, ramp_frac=0.0, renormalise=renormalise)
    for k in (4, 3, 2, 1):
        m.alive[:, 1 + k:] = False
        assert all(len(m.alive_ops(e)) == k for e in range(NUM_EDGES))
        op_rate, all_drop = _rates(m, t=1.0)
        if renormalise:
            assert abs(all_drop - 0.2) < 0.012, (k, all_drop)
            assert abs(op_rate - 0.2 ** (1 / k)) < 0.012, (k, op_rate)
        else:  # the ablation: the full-edge per-op rate stays, so shrinking edges die more often
            assert abs(op_rate - 0.2 ** 0.25) < 0.012
            assert abs(all_drop - 0.2 ** (k / 4)) < 0.012


def test_training_draws_masks_per_batch():
    m = make(res=8)
    before = m.mask_draws
    m.epoch = 1  # past the start of the ramp
    m.times = (99.0,) * NUM_EVENTS  # no pruning in this epoch
    m.train_epoch(batches(3), batches(3))
    assert m.mask_draws - before == 3


# --------------------------------------------------------------------------- importance


def test_importance_is_measured_dropout_free_on_recalibrated_bn():
    m = make(res=8, drop_rate=0.3, ramp_frac=0.0)
    m.times = (99.0,) * NUM_EVENTS  # no event inside this epoch: we call the first one ourselves
    m.train_epoch(batches(2), batches(2))  # trained a little, with dropout; BN running stats moved
    assert m.mask_draws == 2
    bns = [mod for mod in m.supernet.modules() if isinstance(mod, nn.modules.batchnorm._BatchNorm)]
    running = {k: v.clone() for k, v in m.supernet.state_dict().items() if "running" in k}
    calib_x = {id(x) for x, _ in m.setup.calib}
    valid_x = {id(x) for x, _ in m.setup.valid}
    calls = []
    hook = m.supernet.register_forward_pre_hook(
        lambda mod, args: calls.append((mod.training, [bn.momentum for bn in bns], id(args[0]))))
    draws = m.mask_draws
    try:
        m.prune_event(1.0)
    finally:
        hook.remove()
    assert m.mask_draws == draws, "a dropout mask was drawn while measuring importance"
    assert calls
    n_evals = 1 + 4  # baseline + one mask per alive op of node 1's edge
    assert sum(1 for c in calls if c[0]) == n_evals * len(m.setup.calib)
    for training, momenta, x in calls:
        if training:  # BN recalibration: cumulative average over the calibration batches only
            assert x in calib_x and all(mo is None for mo in momenta)
        else:
            assert x in valid_x
    # every evaluation = recalibrate (train mode) then evaluate (eval mode)
    modes = [c[0] for c in calls]
    assert modes == [True, False] * n_evals
    # training BN statistics and mode are restored
    for k, v in m.supernet.state_dict().items():
        if "running" in k:
            torch.testing.assert_close(v, running[k])
    assert m.supernet.training


def test_importance_is_the_rise_of_validation_loss_when_the_op_alone_is_masked():
    m = make(res=8)
    m.train_epoch(batches(2), batches(2))
    net = m.supernet
    state = {k: v.clone() for k, v in net.state_dict().items()}
    e, o = 0, 3
    (imp,) = m.measure([(e, (o,))])
    mask = m.alive.clone()
    mask[e, o] = False
    _, base = one_shot_eval(net, lambda x: net(x, m.static_plan()), m.setup.calib, m.setup.valid)
    _, masked = one_shot_eval(net, lambda x: net(x, m.static_plan(mask)), m.setup.calib, m.setup.valid)
    assert math.isclose(imp, masked - base, rel_tol=1e-6, abs_tol=1e-9)
    net.load_state_dict(state)


# --------------------------------------------------------------------------- hierarchical pruning


NODES = {"forward": [1] * 4 + [2] * 4 + [3] * 4, "backward": [3] * 4 + [2] * 4 + [1] * 4,
         "topology_first": [1, 2, 3] + [1] * 3 + [2] * 3 + [3] * 3}
NODE_EDGES = {1: {0}, 2: {1, 2}, 3: {3, 4, 5}}


@pytest.mark.parametrize("order", ["forward", "backward", "topology_first"])
def test_pruning_goes_node_by_node_in_the_configured_order(order):
    m = make(res=8, order=order, none_margin=-1e9)  # every edge is kept: one op survives on each
    records = []
    for _ in range(NUM_EVENTS):
        before = m.alive.clone()
        rec = m.prune_event(1.0)
        records.append(rec)
        changed = {e for e in range(NUM_EDGES) if not torch.equal(before[e], m.alive[e])}
        assert changed <= NODE_EDGES[rec["node"]], (order, rec["event"], changed)  # never other nodes
        touched = {int(k[0]) for k in rec["importance"]}
        assert touched == {rec["node"]}
    assert [r["node"] for r in records] == NODES[order]
    if order == "topology_first":
        assert [r["phase"] for r in records] == ["edges"] * 3 + ["ops"] * 9
    assert m.finished and m.prune_event(1.0) is None
    assert all(len(m.alive_ops(e)) == 1 for e in range(NUM_EDGES))
    arch = m.derive()
    assert "none" not in arch.ops and arch.ops == tuple(OPS[m.alive_ops(e)[0]] for e in range(NUM_EDGES))
    # each edge lost its ops one at a time, weakest first
    for r in records:
        for edge, op in r["pruned"]:
            imps = r["importance"][edge]
            assert imps[op] == min(imps.values())


def test_forward_order_finishes_a_node_before_starting_the_next():
    m = make(res=8, none_margin=-1e9)
    for _ in range(3):
        m.prune_event(1.0)
    assert len(m.alive_ops(0)) == 1 and not bool(m.decided[0])
    assert all(len(m.alive_ops(e)) == 4 for e in range(1, NUM_EDGES))
    m.prune_event(1.0)  # the decision event of node 1
    assert bool(m.decided[0]) and all(len(m.alive_ops(e)) == 4 for e in range(1, NUM_EDGES))
    m.prune_event(1.0)
    assert [len(m.alive_ops(e)) for e in range(NUM_EDGES)] == [1, 3, 3, 4, 4, 4]


def test_edges_whose_last_op_does_not_help_become_none():
    m = make(res=8, none_margin=1e9)  # nothing can raise the loss that much
    for _ in range(NUM_EVENTS):
        m.prune_event(1.0)
    assert m.derive() == Arch(("none",) * NUM_EDGES)
    assert m.extras()["none_edges"] == ["1<-0", "2<-0", "2<-1", "3<-0", "3<-1", "3<-2"]
    # elimination score: none survived everywhere, so the all-none cell ranks first
    m2 = make(res=8, none_margin=1e9, score_by="elimination")
    m2.load_state_dict(m.state_dict())
    archs = [Arch(("none",) * 6), Arch(("nor_conv_3x3",) * 6)]
    s = m2.score(archs)
    assert s[0] > s[1]


def test_derive_falls_back_to_the_most_important_alive_op_when_pruning_is_unfinished():
    m = make(res=8, none_margin=-1e9)
    for _ in range(5):  # node 1 decided, node 2 pruned once
        m.prune_event(1.0)
    arch = m.derive()
    assert arch.ops[0] == OPS[m.alive_ops(0)[0]]
    for e in (1, 2):
        alive = m.alive_ops(e)
        best = max(alive, key=lambda o: float(m.importance[e, o]))
        assert arch.ops[e] == OPS[best]
    state = {k: v.clone() for k, v in m.supernet.state_dict().items()}
    assert m.derive() == arch  # deterministic, and derive changes no state
    for k, v in m.supernet.state_dict().items():
        assert torch.equal(v, state[k])
    assert all(op in OPS[1:] for op in arch.ops[3:])


# --------------------------------------------------------------------------- scoring and resume


def test_one_shot_score_uses_the_snapshot_before_the_first_prune():
    m = make(res=8)
    m.train_epoch(batches(2, seed=5), batches(2, seed=6))  # warm-up (1 epoch), then the first event fires
    assert m.snapshot is not None and m.events_done >= 1
    archs = list(all_archs())[::3125]
    before = m.score(archs)
    m.train_epoch(batches(2, seed=7), batches(2, seed=8))  # weights move on, snapshot stays
    assert np.array_equal(m.score(archs), before)
    m._cache.clear()
    assert np.array_equal(m.score(archs), before)


def _run(m: HOPNAS, epochs: range) -> None:
    for ep in epochs:
        m.train_epoch(batches(2, seed=1000 + ep), batches(2, seed=2000 + ep))


def test_resume_continues_bit_for_bit():
    archs = list(all_archs())[::1563]
    full = make(res=8, seed=3, drop_rate=0.3)
    _run(full, range(3))

    first = make(res=8, seed=3, drop_rate=0.3)
    _run(first, range(2))
    buf = io.BytesIO()
    torch.save(first.state_dict(), buf)
    buf.seek(0)
    resumed = make(res=8, seed=99, drop_rate=0.3)  # a different init: everything must come from the state
    resumed.load_state_dict(torch.load(buf, weights_only=True))
    _run(resumed, range(2, 3))

    assert np.array_equal(full.score(archs), resumed.score(archs))
    for k, v in full.supernet.state_dict().items():
        assert torch.equal(v, resumed.supernet.state_dict()[k]), k
    assert torch.equal(full.alive, resumed.alive) and full.history == resumed.history
    assert full.derive() == resumed.derive()
    full_e = make(res=8, seed=3, drop_rate=0.3, score_by="elimination")
    res_e = make(res=8, seed=3, drop_rate=0.3, score_by="elimination")
    full_e.load_state_dict(full.state_dict())
    res_e.load_state_dict(resumed.state_dict())
    assert np.array_equal(full_e.score(archs), res_e.score(archs))


def test_smoke_run_derives_a_valid_arch_with_finite_scores():
    cfg = HOPNASConfig.preset("smoke")
    setup = SearchSetup(C=8, N=1, num_classes=10, device=CPU, seed=0,
                        calib=batches(1, size=16, res=32, seed=1), valid=batches(1, size=16, res=32, seed=2))
    torch.manual_seed(0)
    m = HOPNAS(cfg, setup)
    history = []
    for ep in range(cfg.epochs):
        metrics = m.train_epoch(batches(2, size=16, res=32, seed=10 + ep), batches(2, size=16, res=32, seed=20 + ep))
        assert all(isinstance(v, (int, float)) and math.isfinite(v) for v in metrics.values())
        history.append(metrics)
    assert sum(h["prune_events"] for h in history) == NUM_EVENTS and m.finished
    archs = list(all_archs())[::1500]
    scores = m.score(archs)
    assert scores.dtype == np.float64 and scores.shape == (len(archs),) and np.isfinite(scores).all()
    arch = m.derive()
    assert isinstance(arch, Arch) and Arch.from_str(arch.to_str()) == arch
    json.dumps(m.extras())
    json.dumps(history)


def test_importance_can_use_the_first_images_of_the_scoring_sets_only():
    m = make(res=8, importance_calib_images=12, importance_valid_images=5)
    m.setup.calib = batches(3, seed=11)
    m.setup.valid = batches(2, seed=12)
    seen = []
    hook = m.supernet.register_forward_pre_hook(lambda mod, args: seen.append((mod.training, args[0])))
    try:
        m.measure([(0, (1,))])
    finally:
        hook.remove()
    assert [(t, x.shape[0]) for t, x in seen] == [(True, 8), (True, 4), (False, 5)] * 2
    assert torch.equal(seen[1][1], m.setup.calib[1][0][:4]) and torch.equal(seen[2][1], m.setup.valid[0][0][:5])
