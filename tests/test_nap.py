"""NAP (reconstructed): unnormalised strengths from 1, first-order alternation (strengths from
the valid batch only), no `none` strength, scheduled pruning, derive rule, resume, smoke run."""
from __future__ import annotations

import copy
import dataclasses
import io
import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from common.config import config_from_dict, config_to_dict
from methods.base import SearchSetup
from methods.registry import get_method
from methods.nap import NAP, NAPConfig
from spaces.nb201 import NONE, NUM_EDGES, OPS, Arch, Term, all_archs
from helpers import random_batches

CPU = torch.device("cpu")







def batches(n: int, size: int = 8, res: int = 8, seed: int = 0):
    return random_batches(n, size=size, res=res, seed=seed)


def make(seed: int = 0, res: int = 8, **changes) -> NAP:
    cfg = dataclasses.replace(NAPConfig.preset("smoke"), **changes)
    setup = SearchSetup(C=8, N=1, num_classes=10, device=CPU, seed=seed,
                        calib=batches(1, res=res, seed=101), valid=batches(1, res=res, seed=202))
    torch.manual_seed(seed)
    return NAP(cfg, setup)


def alive_counts(m: NAP) -> list[int]:
    return [len(m.alive_ops(e)) for e in range(NUM_EDGES)]


# --------------------------------------------------------------------------- config


def test_config_presets_round_trip_and_validation():
    assert get_method("nap") is NAP
    for budget in ("smoke", "cpu", "paper"):
        cfg = NAPConfig.preset(budget)
        assert config_from_dict(NAPConfig, json.loads(json.dumps(config_to_dict(cfg)))) == cfg
        for epochs in (1, 2, 4, 9, cfg.epochs):
            c = dataclasses.replace(cfg, epochs=epochs)
            due = c.prune_epochs()
            assert len(due) == 3 and list(due) == sorted(due) and 1 <= due[0] and due[-1] <= epochs
            assert c.warmup_epochs < epochs
    paper = NAPConfig.preset("paper")
    assert (paper.epochs, paper.arch_lr, paper.arch_betas, paper.arch_weight_decay) == (50, 3e-4, (0.5, 0.999), 1e-3)
    assert paper.warmup_epochs == 10 and paper.prune_epochs() == (25, 35, 45)
    assert dataclasses.replace(paper, epochs=20).prune_epochs() == (10, 14, 18)
    assert NAPConfig(arch_betas=["0.5", "0.9"]).arch_betas == (0.5, 0.9)  # CLI/JSON lists
    for bad in ({"prune_at": (0.1, 0.5, 0.9)}, {"prune_at": (0.9, 0.5)}, {"prune_at": (0.3, 0.5, 0.7, 0.9)},
                {"score_by": "softmax"}, {"edge_threshold": -1.0}, {"warmup_frac": 1.0}, {"epochs": 0}):
        with pytest.raises(ValueError):
            NAPConfig(**bad)


# --------------------------------------------------------------------------- strengths


def test_strengths_start_at_one_with_no_normalisation_and_no_none_strength():
    m = make()
    assert tuple(m.strength.shape) == (NUM_EDGES, len(OPS) - 1)  # none has no strength at all
    assert torch.equal(m.strength.detach(), torch.ones(NUM_EDGES, len(OPS) - 1))
    plan = m.plan()
    for e, terms in enumerate(plan):
        assert [t.op for t in terms] == [1, 2, 3, 4]  # `none` is never run
        for t in terms:
            assert t.coef.item() == 1.0  # the raw strength: no softmax (which would give 0.25)
    # the coefficient *is* the strength: setting one changes the plan one-for-one, the others not
    with torch.no_grad():
        m.strength[2, 1] = -0.7
    coefs = [[float(t.coef.detach()) for t in terms] for terms in m.plan()]
    assert coefs[2] == pytest.approx([1.0, -0.7, 1.0, 1.0]) and coefs[0] == [1.0] * 4
    # edge output is linear in the strengths (scaling every strength scales the cell's edge sum)
    cell = m.supernet.cells[0].eval()
    x = torch.randn(2, 8, 8, 8)
    with torch.no_grad():
        m.strength.fill_(1.0)
        one = [[Term(o, m.strength_matrix()[0, o]) for o in range(1, 5)], [], [], [], [Term(1)], []]
        two = [[Term(o, 2 * m.strength_matrix()[0, o]) for o in range(1, 5)], [], [], [], [Term(1)], []]
        torch.testing.assert_close(cell(x, two), 2 * cell(x, one))


def _past_warmup(**changes) -> NAP:
    return make(epochs=10, warmup_frac=0.0, prune_at=(0.5, 0.7, 0.9), **changes)


def test_strength_step_uses_only_the_validation_batch():
    m = _past_warmup()
    (x1, y1), (x2, y2) = batches(2, seed=1)
    valid = batches(1, seed=2)
    other_valid = batches(1, seed=3)
    a, b, c = copy.deepcopy(m), copy.deepcopy(m), copy.deepcopy(m)
    # the reference gradient: valid loss w.r.t. the strengths, with the weights as they are
    ref = copy.deepcopy(m)
    loss = F.cross_entropy(ref.supernet(valid[0][0], ref.plan()), valid[0][1])
    (expected,) = torch.autograd.grad(loss, [ref.strength])

    a.train_epoch([(x1, y1)], valid)
    b.train_epoch([(x2, y2)], valid)
    c.train_epoch([(x1, y1)], other_valid)
    torch.testing.assert_close(a.strength.grad, expected, rtol=1e-5, atol=1e-8)
    assert not torch.equal(a.strength.detach(), m.strength.detach())  # strengths did move
    assert torch.equal(a.strength.detach(), b.strength.detach())      # the train batch did not matter
    assert not torch.equal(a.strength.detach(), c.strength.detach())  # the valid batch did
    wa = a.supernet.cells[0].edges[0][3][1].weight
    wb = b.supernet.cells[0].edges[0][3][1].weight
    assert not torch.equal(wa, wb)  # ... while the weights followed the train batch


def test_warmup_trains_weights_only():
    m = make(epochs=4, warmup_frac=0.25, prune_at=(0.5, 0.75, 1.0))
    w0 = m.supernet.cells[0].edges[0][3][1].weight.detach().clone()
    metrics = m.train_epoch(batches(2, seed=1), [])  # warm-up needs no validation batch
    assert metrics["warmup"] == 1.0 and "valid_loss" not in metrics
    assert torch.equal(m.strength.detach(), torch.ones_like(m.strength))
    assert not torch.equal(w0, m.supernet.cells[0].edges[0][3][1].weight)
    metrics = m.train_epoch(batches(2, seed=3), batches(2, seed=4))
    assert metrics["warmup"] == 0.0 and not torch.equal(m.strength.detach(), torch.ones_like(m.strength))
    with pytest.raises(ValueError, match="validation batch"):
        m.train_epoch(batches(2, seed=5), batches(1, seed=6))


def test_none_never_has_a_strength_or_runs():
    m = _past_warmup()
    for ep in range(2):
        m.train_epoch(batches(2, seed=ep), batches(2, seed=10 + ep))
        assert torch.equal(m.strength_matrix()[:, NONE], torch.zeros(NUM_EDGES))
        assert all(t.op != NONE for terms in m.plan() for t in terms)
    assert m.strength.grad.shape == (NUM_EDGES, len(OPS) - 1)
    assert sum(p.numel() for g in m.arch_optimizer.param_groups for p in g["params"]) == NUM_EDGES * 4


# --------------------------------------------------------------------------- pruning and derive


def test_pruning_follows_the_schedule_weakest_first():
    m = make(epochs=4, warmup_frac=0.25, prune_at=(0.5, 0.75, 1.0))
    assert m.cfg.prune_epochs() == (2, 3, 4)
    counts = []
    for ep in range(4):
        m.train_epoch(batches(1, seed=ep), batches(1, seed=10 + ep))
        counts.append(alive_counts(m))
    assert counts == [[4] * 6, [3] * 6, [2] * 6, [1] * 6]
    assert m.snapshot_epoch == 2 and m.snapshot is not None
    for rec in m.history:
        for edge, op in rec["pruned"]:
            assert rec["strength"][edge][op] == min(rec["strength"][edge].values())
    order = m.extras()["elimination_order"]
    assert all(len(v) == 3 for v in order.values())
    # with more epochs (the harness's override) the same fractions move the events
    m8 = make(epochs=8, warmup_frac=0.25, prune_at=(0.5, 0.75, 1.0))
    seen = []
    for ep in range(8):
        m8.train_epoch(batches(1, seed=ep), batches(1, seed=10 + ep))
        seen.append(alive_counts(m8)[0])
    assert seen == [4, 4, 4, 3, 3, 2, 2, 1]


def test_pruned_strengths_stay_frozen():
    m = make(epochs=4, warmup_frac=0.25, prune_at=(0.5, 0.75, 1.0))
    for ep in range(2):
        m.train_epoch(batches(1, seed=ep), batches(1, seed=10 + ep))
    dead = ~m.alive[:, 1:]
    frozen = m.strength.detach()[dead].clone()
    m.train_epoch(batches(1, seed=5), batches(1, seed=15))
    assert torch.equal(m.strength.detach()[dead], frozen)


def test_non_positive_survivor_becomes_none_and_edges_can_be_removed():
    m = make(epochs=4, warmup_frac=0.25, prune_at=(0.5, 0.75, 1.0))
    for ep in range(4):
        m.train_epoch(batches(1, seed=ep), batches(1, seed=10 + ep))
    arch = m.derive()
    assert "none" not in arch.ops and arch.ops == tuple(OPS[m.alive_ops(e)[0]] for e in range(NUM_EDGES))
    survivor = m.alive_ops(3)[0]
    with torch.no_grad():
        m.strength[3, survivor - 1] = -1.0
    derived = m.derive()
    assert derived.ops[3] == "none" and derived.ops[:3] == arch.ops[:3]
    with torch.no_grad():
        m.strength[3, survivor - 1] = 0.0  # <= 0 is none too
    assert m.derive().ops[3] == "none"
    # elimination score: derive()'s arch scores highest
    m_e = make(epochs=4, warmup_frac=0.25, prune_at=(0.5, 0.75, 1.0), score_by="elimination")
    m_e.load_state_dict(m.state_dict())
    archs = [m_e.derive(), arch, Arch(("none",) * 6)]
    s = m_e.score(archs)
    assert s[0] > s[1] > s[2]

    # a global threshold removes whole edges at a prune event
    t = make(epochs=4, warmup_frac=0.25, prune_at=(0.5, 0.75, 1.0), prune_edges=True, edge_threshold=0.5)
    t.train_epoch(batches(1, seed=0), batches(1, seed=10))
    with torch.no_grad():
        t.strength[2] = torch.tensor([0.4, -1.0, 0.2, 0.1])
    t.train_epoch(batches(1, seed=1), batches(1, seed=11))
    assert alive_counts(t)[2] == 0 and t.extras()["removed_edges"] == ["2<-1"]
    assert t.derive().ops[2] == "none" and alive_counts(t)[0] == 3


def test_strength_score_sums_the_snapshot_with_none_zero():
    m = make(epochs=4, warmup_frac=0.25, prune_at=(0.5, 0.75, 1.0))
    for ep in range(2):
        m.train_epoch(batches(1, seed=ep), batches(1, seed=10 + ep))
    snap = m.snapshot.clone()
    archs = list(all_archs())[::997]
    expected = [sum(float(snap[e, i]) if i != NONE else 0.0 for e, i in enumerate(a.indices)) for a in archs]
    np.testing.assert_allclose(m.score(archs), expected)
    m.train_epoch(batches(1, seed=7), batches(1, seed=17))
    np.testing.assert_allclose(m.score(archs), expected)  # later training does not move the score


# --------------------------------------------------------------------------- resume and smoke


def _run(m: NAP, epochs: range) -> None:
    for ep in epochs:
        m.train_epoch(batches(2, seed=1000 + ep), batches(2, seed=2000 + ep))


def test_resume_continues_bit_for_bit():
    archs = list(all_archs())[::1563]
    full = make(seed=3)
    _run(full, range(4))
    first = make(seed=3)
    _run(first, range(2))
    buf = io.BytesIO()
    torch.save(first.state_dict(), buf)
    buf.seek(0)
    resumed = make(seed=42)
    resumed.load_state_dict(torch.load(buf, weights_only=True))
    _run(resumed, range(2, 4))
    assert np.array_equal(full.score(archs), resumed.score(archs))
    assert torch.equal(full.strength.detach(), resumed.strength.detach())
    for k, v in full.supernet.state_dict().items():
        assert torch.equal(v, resumed.supernet.state_dict()[k]), k
    assert full.derive() == resumed.derive() and full.history == resumed.history


def test_smoke_run_derives_a_valid_arch_with_finite_scores():
    cfg = NAPConfig.preset("smoke")
    setup = SearchSetup(C=8, N=1, num_classes=10, device=CPU, seed=0,
                        calib=batches(1, size=16, res=32, seed=1), valid=batches(1, size=16, res=32, seed=2))
    torch.manual_seed(0)
    m = NAP(cfg, setup)
    history = []
    for ep in range(cfg.epochs):
        metrics = m.train_epoch(batches(2, size=16, res=32, seed=ep), batches(2, size=16, res=32, seed=50 + ep))
        assert all(isinstance(v, (int, float)) and math.isfinite(v) for v in metrics.values())
        history.append(metrics)
    assert [h["alive_ops"] for h in history] == [24, 18, 12, 6]
    archs = list(all_archs())[::1500]
    scores = m.score(archs)
    assert scores.dtype == np.float64 and scores.shape == (len(archs),) and np.isfinite(scores).all()
    arch = m.derive()
    assert isinstance(arch, Arch) and Arch.from_str(arch.to_str()) == arch
    json.dumps(m.extras())
    json.dumps(history)
