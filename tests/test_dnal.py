"""DNAL and its reusable scaled-sigmoid gate: schedule, penalty, freezing, threshold, conventions, resume."""
from __future__ import annotations

import copy
import dataclasses
import io
import json
import math

import numpy as np
import pytest
import torch

from common.config import config_from_dict, config_to_dict
from methods.base import SearchSetup
from methods.registry import get_method
from methods.dnal import DNAL, DNALConfig
from methods.gates import ScaledSigmoidGate, continuation_delta, total_penalty
from spaces.nb201 import NONE, OPS, Arch, random_arch
from helpers import random_batches as _batches






def _setup(C: int = 8, N: int = 1) -> SearchSetup:
    data = _batches(1, 16, seed=99)
    return SearchSetup(C=C, N=N, num_classes=10, device=torch.device("cpu"), seed=0, calib=data, valid=data)


def _archs(n: int = 12) -> list[Arch]:
    import random
    rng = random.Random(3)
    return [Arch(("none",) * 6), Arch(("nor_conv_3x3",) * 6)] + [random_arch(rng) for _ in range(n)]


# --------------------------------------------------------------------------- the gate module


def test_gate_modes_shapes_and_state():
    g = ScaledSigmoidGate(4)
    assert g.mode == "bypass" and g.delta == 1.0 and torch.equal(g.alpha, torch.zeros(4))
    x = torch.randn(2, 4, 3, 3)
    assert torch.equal(g(x), x)  # bypass is the identity
    g.set_mode("soft")
    assert g.value().shape == (1, 4, 1, 1)
    assert torch.allclose(g(x), 0.5 * x)  # α = 0 → sigmoid 0.5
    g.set_delta(7.0)
    with pytest.raises(ValueError):
        g.set_mode("sample")
    # mode / δ / threshold travel in the state dict
    h = ScaledSigmoidGate(4)
    h.load_state_dict(g.state_dict())
    assert (h.mode, h.delta, h.threshold) == ("soft", 7.0, 0.9)
    # a scalar gate broadcasts over any channel count
    s = ScaledSigmoidGate(1, mode="soft")
    assert s(torch.ones(2, 5, 1, 1)).shape == (2, 5, 1, 1)


def test_gates_module_is_space_agnostic():
    import methods.gates as gates
    src = open(gates.__file__).read()
    assert "spaces" not in src and "nb201" not in src.lower()


def test_threshold_point_nine_binarises_strictly():
    delta = 10.0
    g = ScaledSigmoidGate(2, delta=delta, mode="hard")
    logit = lambda p: math.log(p / (1 - p))
    with torch.no_grad():
        g.alpha.copy_(torch.tensor([logit(0.89) / delta, logit(0.91) / delta]))
    assert torch.allclose(g.probs(), torch.tensor([0.89, 0.91]))
    assert g.kept().tolist() == [False, True]
    assert torch.equal(g.mask().flatten(), torch.tensor([0.0, 1.0]))
    x = torch.ones(1, 2, 2, 2)
    assert torch.equal(g(x)[0, :, 0, 0], torch.tensor([0.0, 1.0]))
    assert g.kept_fraction() == 0.5


def test_penalty_is_on_unscaled_sigmoid():
    lam = 5e-5
    g = ScaledSigmoidGate(6, delta=1e3, mode="soft")
    with torch.no_grad():
        g.alpha.copy_(torch.linspace(-2, 2, 6))
    (lam * g.penalty()).backward()
    s = torch.sigmoid(g.alpha.detach())
    assert torch.allclose(g.alpha.grad, lam * s * (1 - s), rtol=1e-6, atol=0)
    # the whole-model penalty sums every gate, also unscaled
    m = torch.nn.ModuleList([ScaledSigmoidGate(3, delta=1e4), ScaledSigmoidGate(1, delta=50.0)])
    assert torch.allclose(total_penalty(m), torch.tensor(2.0))  # 4 channels × sigmoid(0)


# --------------------------------------------------------------------------- config and schedule


def test_delta_schedule_exact_values():
    cfg = DNALConfig()
    assert cfg.arch_epochs == 10 and cfg.weight_epochs == 50 and cfg.epochs == 60
    assert cfg.delta_at(0) == 1.0
    for k in range(1, 11):
        assert cfg.delta_at(k) == pytest.approx(10 ** (0.4 * k), rel=1e-12)
    assert cfg.delta_at(10) == 1e4
    ratios = [cfg.delta_at(k + 1) / cfg.delta_at(k) for k in range(10)]
    assert ratios == pytest.approx([10 ** 0.4] * 10, rel=1e-12)
    assert continuation_delta(1, 2, 1.0, 1e4) == pytest.approx(100.0)


def test_delta_set_at_start_of_each_arch_epoch():
    # the real loop: 1 weight epoch then 10 arch epochs on one tiny batch
    cfg = DNALConfig(epochs=11, arch_epochs=10)
    m = DNAL(cfg, _setup(C=4))
    data = _batches(1, 8)
    deltas = [m.train_epoch(data, data)["delta"] for _ in range(11)]
    assert deltas[0] == 1.0
    assert deltas[1:] == pytest.approx([10 ** (0.4 * k) for k in range(1, 11)], rel=1e-12)
    assert all(g.delta == 1e4 for g in m.gates.modules() if isinstance(g, ScaledSigmoidGate))


def test_config_validation_and_overrides():
    with pytest.raises(ValueError, match="weight-training epoch"):
        DNALConfig(epochs=10)
    with pytest.raises(ValueError, match="gate_level"):
        DNALConfig(gate_level="edge")
    with pytest.raises(ValueError, match="budget"):
        DNALConfig.preset("huge")
    cfg = dataclasses.replace(DNALConfig.preset("cpu"), epochs=20)
    assert cfg.weight_epochs == 20 - cfg.arch_epochs
    for budget in ("smoke", "cpu", "paper"):
        c = DNALConfig.preset(budget)
        assert config_from_dict(DNALConfig, json.loads(json.dumps(config_to_dict(c)))) == c
    smoke = DNALConfig.preset("smoke")
    assert (smoke.weight_epochs, smoke.arch_epochs) == (1, 2)
    assert [smoke.phase_of(e) for e in range(3)] == [("weights", 1), ("arch", 1), ("arch", 2)]


# --------------------------------------------------------------------------- phases


def test_phase1_bypasses_gates_and_phase2_freezes_conv_and_bn():
    m = DNAL(DNALConfig(epochs=2, arch_epochs=1), _setup())
    data = _batches(2)
    before = copy.deepcopy(m.supernet.state_dict())
    m.train_epoch(data, data)  # phase 1
    after1 = {k: v.clone() for k, v in m.supernet.state_dict().items()}
    assert all(torch.equal(p, torch.zeros_like(p)) for p in m.gates.parameters())  # α untouched
    # every candidate of every edge ran (all-ops supernet): each conv op's weights moved
    for cell in m.supernet.cells:
        for edge in cell.edges:
            for o in (2, 3):
                w = edge[o][1].weight
                key = [k for k, v in m.supernet.named_parameters() if v is w][0]
                assert not torch.equal(before[key], after1[key])
    m.train_epoch(data, data)  # phase 2
    params = dict(m.supernet.named_parameters())
    for name, p in params.items():
        if name.startswith("classifier."):
            assert p.requires_grad and not torch.equal(p, after1[name]), name
        else:
            assert not p.requires_grad, name
            assert torch.equal(p, after1[name]), name  # conv and BN weights bit-identical
    assert any(not torch.equal(p, torch.zeros_like(p)) for p in m.gates.parameters())  # α learned
    assert all(g.mode == "soft" for g in m.gates.modules() if isinstance(g, ScaledSigmoidGate))


def test_arch_phase_has_no_weight_decay_and_resets_alpha():
    m = DNAL(DNALConfig(epochs=2, arch_epochs=1), _setup())
    assert all(g["weight_decay"] == 0.0 for g in m.arch_opt.param_groups)
    assert m.arch_opt.param_groups[0]["lr"] == 0.01 and m.arch_opt.param_groups[0]["momentum"] == 0.9
    with torch.no_grad():
        for p in m.gates.parameters():
            p.fill_(3.0)  # stale α must not leak into the arch phase
    m._configure("arch", 1)
    assert all(torch.equal(p, torch.zeros_like(p)) for p in m.gates.parameters())


# --------------------------------------------------------------------------- derive and score


def _set_alpha(m: DNAL, fn) -> None:
    with torch.no_grad():
        for c in range(m.supernet.num_cells):
            for e in range(6):
                for o in range(1, 5):
                    g = m.gates.gate(c, e, o)
                    g.alpha.copy_(torch.as_tensor(fn(c, e, o, g.num_channels), dtype=torch.float32))


def test_derive_largest_kept_fraction_and_none():
    m = DNAL(DNALConfig(), _setup(C=4))
    assert m.derive() == Arch(("none",) * 6)  # before the arch phase: every gate is 0.5 < 0.9

    def alpha(c, e, o, n):
        a = -torch.ones(n)
        if e == 0 and o == 3:
            a[:] = 1.0                  # conv3x3 fully kept
        if e == 0 and o == 1:
            a[: n // 2] = 1.0           # skip half kept
        if e == 2 and o == 1:
            a[: n // 4] = 1.0           # skip a quarter kept
        if e == 2 and o == 4:
            a[: n // 2] = 1.0           # pool half kept → wins
        if e == 3 and o in (2, 3):
            a[: n // 2] = 1.0           # tie on kept fraction → the larger mean α wins
            if o == 2:
                a[n // 2] = -0.5        # still gated off at δ = 10⁴, but a larger mean α
        return a                        # edges 1, 4, 5: everything gated off → none

    _set_alpha(m, alpha)
    for g in m.gates.modules():
        if isinstance(g, ScaledSigmoidGate):
            g.set_delta(1e4)
    assert m.derive() == Arch(("nor_conv_3x3", "none", "avg_pool_3x3", "nor_conv_1x1", "none", "none"))
    kept = m.kept_fractions()
    assert kept[0, 3] == 1.0 and kept[0, 1] == 0.5 and kept[1].max() == 0.0 and kept[:, NONE].max() == 0.0


def test_score_log_sigmoid_mean_alpha_at_delta_one_averaged_over_cells():
    m = DNAL(DNALConfig(), _setup(C=4))  # 3 cells (C, 2C, 4C)
    vals = {}

    def alpha(c, e, o, n):
        a = torch.linspace(-1, 1, n) + 0.3 * c - 0.2 * e + 0.1 * o  # mean = 0.3c - 0.2e + 0.1o
        vals[c, e, o] = float(a.mean())
        return a

    _set_alpha(m, alpha)
    logsig = lambda x: -math.log1p(math.exp(-x))
    arch = Arch(("nor_conv_3x3", "none", "skip_connect", "avg_pool_3x3", "none", "nor_conv_1x1"))
    expected = 0.0
    for c in range(3):
        for e, o in enumerate(arch.indices):
            if o == NONE:
                expected += sum(logsig(-vals[c, e, q]) for q in range(1, 5)) / 3  # Σ log(1 − σ)
            else:
                expected += logsig(vals[c, e, o]) / 3
    s0 = m.score([arch])
    assert s0.dtype == np.float64 and s0[0] == pytest.approx(expected, rel=1e-6)
    for g in m.gates.modules():
        if isinstance(g, ScaledSigmoidGate):
            g.set_delta(1e4)  # scoring always uses δ = 1
    assert m.score([arch])[0] == s0[0]


def test_op_level_variant_has_scalar_gates_and_trains():
    m = DNAL(DNALConfig(epochs=2, arch_epochs=1, gate_level="op"), _setup())
    gates = [g for g in m.gates.modules() if isinstance(g, ScaledSigmoidGate)]
    assert len(gates) == 3 * 6 * 4 and all(g.num_channels == 1 for g in gates)
    data = _batches(2)
    for _ in range(2):
        out = m.train_epoch(data, data)
    assert math.isfinite(out["train_loss"]) and out["delta"] == 1e4
    assert isinstance(m.derive(), Arch)


# --------------------------------------------------------------------------- resume and smoke


def _roundtrip(state: dict) -> dict:
    buf = io.BytesIO()
    torch.save(state, buf)
    buf.seek(0)
    return torch.load(buf, weights_only=True)


def test_resume_across_phases_is_bit_for_bit():
    cfg = DNALConfig(epochs=4, arch_epochs=2, finetune_epochs=1)  # weights, arch, arch, fine-tune
    data = _batches(2)
    archs = _archs()
    torch.manual_seed(0)
    full = DNAL(cfg, _setup())
    full_metrics = [full.train_epoch(data, data) for _ in range(4)]

    torch.manual_seed(0)
    first = DNAL(cfg, _setup())
    for _ in range(2):  # crosses weights → arch
        first.train_epoch(data, data)
    state = _roundtrip(first.state_dict())
    torch.manual_seed(123)  # the resumed instance starts from different weights: the state must win
    resumed = DNAL(cfg, _setup())
    resumed.load_state_dict(state)
    rest = [resumed.train_epoch(data, data) for _ in range(2)]  # arch → fine-tune
    assert rest == full_metrics[2:]
    assert np.array_equal(resumed.score(archs), full.score(archs))
    assert resumed.derive() == full.derive()
    for (k, a), b in zip(full.supernet.state_dict().items(), resumed.supernet.state_dict().values()):
        assert torch.equal(a, b), k
    for a, b in zip(full.gates.parameters(), resumed.gates.parameters()):
        assert torch.equal(a, b)


def test_smoke_run_contract():
    cls = get_method("dnal")
    assert cls is DNAL and cls.Config is DNALConfig
    cfg = DNALConfig.preset("smoke")
    m = cls(cfg, _setup())
    data = _batches(2)
    for _ in range(cfg.epochs):
        metrics = m.train_epoch(data, data)
        assert all(isinstance(v, float) and math.isfinite(v) for v in metrics.values()), metrics
    with pytest.raises(RuntimeError):
        m.train_epoch(data, data)
    archs = _archs()
    scores = m.score(archs)
    assert scores.dtype == np.float64 and scores.shape == (len(archs),) and np.isfinite(scores).all()
    assert isinstance(m.derive(), Arch)
    extras = json.loads(json.dumps(m.extras()))
    assert extras["phase"] == "arch" and extras["delta"] == 1e4
    assert set(extras["kept_fraction"]) == {"1<-0", "2<-0", "2<-1", "3<-0", "3<-1", "3<-2"}
    assert set(extras["kept_fraction"]["1<-0"]) == set(OPS[1:])
