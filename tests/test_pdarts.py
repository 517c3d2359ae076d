"""P-DARTS: stage schedule, progressive pruning, re-initialisation, skip dropout, skip cap, scores, resume."""
from __future__ import annotations

import dataclasses
import io
import json
import math
import random

import numpy as np
import pytest
import torch

from common.config import config_from_dict, config_to_dict
from methods.base import SearchSetup
from methods.registry import get_method
from methods.pdarts import PDARTS, PDARTSConfig, _skip_dropout
from spaces.nb201 import NONE, SKIP, Arch, random_arch
from helpers import random_batches as _batches

CONV1, CONV3, POOL = 2, 3, 4






def _setup(C: int = 8, seed: int = 0) -> SearchSetup:
    return SearchSetup(C=C, N=1, num_classes=10, device=torch.device("cpu"), seed=seed)


TRAIN, VALID = _batches(2, seed=1), _batches(2, seed=2)
SMOKE = PDARTSConfig.preset("smoke")  # 3 stages × 2 epochs (1 warm-up), cells (1, 1, 2)


def _archs() -> list[Arch]:
    rng = random.Random(5)
    return [Arch(("none",) * 6), Arch(("skip_connect",) * 6)] + [random_arch(rng) for _ in range(12)]


# --------------------------------------------------------------------------- config and schedules


def test_config_defaults_splits_and_validation():
    cfg = PDARTSConfig()
    assert cfg.epochs == 75 and cfg.batch_size == 96
    assert cfg.stage_epochs == (25, 25, 25) and cfg.warmup_epochs == (10, 10, 10)
    assert cfg.stage_cells == (1, 3, 5) and cfg.stage_ops == (5, 3, 2)
    assert dataclasses.replace(cfg, epochs=15).stage_epochs == (5, 5, 5)
    assert dataclasses.replace(cfg, epochs=15).warmup_epochs == (2, 2, 2)
    assert dataclasses.replace(cfg, epochs=7).stage_epochs == (2, 2, 3)  # remainder to the last stages
    assert dataclasses.replace(cfg, epochs=3).warmup_epochs == (0, 0, 0)
    assert (SMOKE.stage_epochs, SMOKE.warmup_epochs) == ((2, 2, 2), (1, 1, 1))
    with pytest.raises(ValueError, match="one epoch per stage"):
        dataclasses.replace(cfg, epochs=2)
    with pytest.raises(ValueError, match="same length"):
        PDARTSConfig(stage_cells=(1, 3))
    with pytest.raises(ValueError, match="stage_ops"):
        PDARTSConfig(stage_ops=(4, 3, 2))
    with pytest.raises(ValueError, match="score_by"):
        PDARTSConfig(score_by="acc")
    for budget in ("smoke", "cpu", "paper"):
        c = PDARTSConfig.preset(budget)
        assert config_from_dict(PDARTSConfig, json.loads(json.dumps(config_to_dict(c)))) == c


def test_skip_dropout_schedule_values():
    cfg = PDARTSConfig()
    assert [cfg.skip_drop_rate(0, e) for e in range(25)] == [0.0] * 25  # stage 1: base rate 0
    p0 = 0.4
    assert cfg.skip_drop_rate(1, 0) == pytest.approx(p0 * 24 / 25)
    assert cfg.skip_drop_rate(1, 9) == pytest.approx(p0 * 15 / 25)      # linear decay over warm-up
    assert cfg.skip_drop_rate(1, 10) == pytest.approx(p0)               # reset when α training starts
    assert cfg.skip_drop_rate(1, 11) == pytest.approx(p0 * math.exp(-0.2))
    assert cfg.skip_drop_rate(1, 24) == pytest.approx(p0 * math.exp(-0.2 * 14))
    assert cfg.skip_drop_rate(2, 10) == pytest.approx(0.7)
    warm = [cfg.skip_drop_rate(2, e) for e in range(10)]
    assert all(a > b for a, b in zip(warm, warm[1:]))


def test_skip_dropout_transform_is_inverted_and_owned():
    x = torch.ones(64, 8, 8, 8)
    a = _skip_dropout(0.25, torch.Generator().manual_seed(7))(x)
    b = _skip_dropout(0.25, torch.Generator().manual_seed(7))(x)
    assert torch.equal(a, b)  # masks come from the generator, not the global RNG
    assert torch.allclose(a.unique(), torch.tensor([0.0, 1 / 0.75]))
    assert abs(float((a == 0).float().mean()) - 0.25) < 0.02
    m = PDARTS(SMOKE, _setup())
    plan = m._plan(m.alpha, 0.3)
    for edge in plan:
        for term in edge:
            assert (term.transform is not None) == (term.op == SKIP)
            assert term.op != NONE  # `none` takes softmax mass but never runs
    assert all(t.transform is None for edge in m._plan(m.alpha, 0.0) for t in edge)


# --------------------------------------------------------------------------- the search loop


@pytest.fixture(scope="module")
def smoke_run():
    """An uninterrupted smoke search: the instance and the metrics of each epoch."""
    m = PDARTS(SMOKE, _setup())
    alpha0 = m.alpha.detach().clone()
    metrics, nets, alphas = [], [], []
    for _ in range(SMOKE.epochs):
        nets.append(m.supernet)
        alphas.append(m.alpha.detach().clone())
        metrics.append(m.train_epoch(TRAIN, VALID))
    return m, metrics, nets, alphas, alpha0


def test_smoke_run_stages_ops_and_schedule(smoke_run):
    m, metrics, nets, alphas, alpha0 = smoke_run
    assert get_method("pdarts") is PDARTS
    assert [x["stage"] for x in metrics] == [1, 1, 2, 2, 3, 3]
    assert [x["arch_training"] for x in metrics] == [0, 1, 0, 1, 0, 1]
    assert [x["skip_drop"] for x in metrics] == [SMOKE.skip_drop_rate(s, e) for s in range(3) for e in range(2)]
    assert all(isinstance(v, float) and math.isfinite(v) for x in metrics for v in x.values())
    assert [[len(ops) for ops in stage] for stage in m.alive] == [[5] * 6, [3] * 6, [2] * 6]
    for prev, nxt in zip(m.alive, m.alive[1:]):  # survivors of a stage are a subset of its ops
        assert all(set(b) <= set(a) for a, b in zip(prev, nxt))
    assert [n.N for n in nets] == [1, 1, 1, 1, 2, 2]
    assert m.done and m.final is not None
    arch = m.derive()
    assert "none" not in arch.ops and arch.ops.count("skip_connect") <= 2
    for e in range(6):
        if e not in m.cap_info["replaced_edges"]:  # the best non-`none` op of the last stage
            last = [o for o in m.alive[2][e] if o != NONE]
            assert arch.indices[e] == max(last, key=lambda o: (float(m.logsm[2][e, o]), -o))
    with pytest.raises(RuntimeError):
        m.train_epoch(TRAIN, VALID)
    scores = m.score(_archs() + [arch])
    assert scores.dtype == np.float64 and np.isfinite(scores).all()
    assert scores[-1] == scores.max()  # the derived arch: level 4 on every edge
    extras = json.loads(json.dumps(m.extras()))
    assert [len(s["1<-0"]) for s in extras["alive_ops"]] == [5, 3, 2]
    assert extras["skip_count_after_cap"] <= 2 and extras["derived"] == arch.to_str()


def test_warmup_leaves_alpha_and_stages_reinitialise(smoke_run):
    m, metrics, nets, alphas, alpha0 = smoke_run
    assert torch.equal(alphas[1], alpha0)           # the warm-up epoch trained weights only
    assert not torch.allclose(m.logsm[0], alpha0.double().log_softmax(-1))  # α trained in epoch 2
    for s, first in ((1, 2), (2, 4)):               # first epoch of stages 2 and 3
        old, new = nets[first - 1], nets[first]
        assert new is not old
        assert not torch.equal(new.stem[0].weight, old.stem[0].weight)
        assert alphas[first].shape == (6, SMOKE.stage_ops[s])
        assert alphas[first].abs().max() < 1e-2     # fresh α = 1e-3·N(0, 1)
    # the first epoch of each stage starts at the stage's base lr (cosine restarts)
    assert [x["lr"] for x in metrics[::2]] == [SMOKE.lr] * 3


def test_alpha_step_on_valid_batch_before_weight_step():
    m = PDARTS(SMOKE, _setup())
    seen = []
    forward = m.supernet.forward

    def spy(x, plan):
        seen.append("valid" if any(x is v for v, _ in VALID) else "train")
        return forward(x, plan)

    m.supernet.forward = spy
    m.train_epoch(TRAIN, VALID)
    assert seen == ["train", "train"]               # warm-up: weights only
    seen.clear()
    m.train_epoch(TRAIN, VALID)
    assert seen == ["valid", "train", "valid", "train"]


# --------------------------------------------------------------------------- decision, cap, scores


def _logsm(probs: list[dict[int, float]]) -> torch.Tensor:
    t = torch.full((6, 5), -math.inf, dtype=torch.float64)
    for e, d in enumerate(probs):
        z = sum(d.values())
        for o, p in d.items():
            t[e, o] = math.log(p / z)
    return t


def _crafted(score_by: str = "level") -> PDARTS:
    """A finished search whose last stage selects four skips (edges 0-3)."""
    m = PDARTS(dataclasses.replace(SMOKE, score_by=score_by), _setup())
    stage1 = [{o: 0.2 for o in range(5)} for _ in range(6)]
    stage2 = [{SKIP: .5, CONV3: .3, POOL: .2}, {SKIP: .5, CONV1: .3, CONV3: .2}, {SKIP: .5, POOL: .3, CONV1: .2},
              {NONE: .3, SKIP: .5, CONV1: .2}, {CONV3: .5, CONV1: .3, SKIP: .2}, {NONE: .5, POOL: .3, CONV3: .2}]
    stage3 = [{SKIP: .9, CONV3: .1}, {SKIP: .8, CONV1: .2}, {SKIP: .6, POOL: .4},
              {NONE: .3, SKIP: .7}, {CONV3: .6, CONV1: .4}, {NONE: .9, POOL: .1}]
    m.alive = [[sorted(d) for d in stage] for stage in (stage1, stage2, stage3)]
    m.logsm = [_logsm(stage) for stage in (stage1, stage2, stage3)]
    m.stage, m.done = 2, True
    m.final, m.cap_info = m._decide()
    return m


def test_skip_cap_replaces_weakest_skips():
    m = _crafted()
    # before the cap: skip on edges 0-3 (edge 3's `none` is dropped; edge 5 keeps pool over `none`)
    assert m.cap_info["before"] == 4 and m.cap_info["after"] == 2
    assert m.cap_info["replaced_edges"] == [2, 3]   # weakest skip first (0.6, then 0.7)
    # edge 2 → its stage-3 alternative; edge 3 has only `none` left → the best earlier non-skip op
    assert m.derive() == Arch.from_indices([SKIP, SKIP, POOL, CONV1, CONV3, POOL])
    extras = m.extras()
    assert extras["skip_count_before_cap"] == 4 and extras["skip_count_after_cap"] == 2
    assert dataclasses.replace(m.cfg, skip_cap=6).skip_cap == 6


def test_score_levels_order_and_none_convention():
    m = _crafted()
    table = m.score_table()
    final = m.derive()
    assert table[4, CONV3] == pytest.approx(400 + math.log(.6))     # chosen
    assert table[4, CONV1] == pytest.approx(300 + math.log(.4))     # alive in stage 3, not chosen
    assert table[4, SKIP] == pytest.approx(200 + math.log(.2))      # dropped after stage 2
    assert table[4, POOL] == pytest.approx(100 + math.log(.2))      # dropped after stage 1
    assert table[2, SKIP] == pytest.approx(300 + math.log(.6))      # demoted by the cap: level 3
    assert table[3, CONV1] == pytest.approx(400 + math.log(.2))     # promoted by the cap, ℓ of stage 2
    assert table[5, NONE] == pytest.approx(300 + math.log(.9))      # `none` in the last stage: level 3
    assert table[3, NONE] == pytest.approx(300 + math.log(.3))
    # an arch's score falls with the level of any one edge's op
    ranked = [final.replace(4, op) for op in ("nor_conv_3x3", "nor_conv_1x1", "skip_connect", "avg_pool_3x3")]
    s = m.score(ranked)
    assert all(a > b for a, b in zip(s, s[1:]))
    assert m.score([final])[0] == pytest.approx(sum(table[e, o] for e, o in enumerate(final.indices)))
    stage1 = _crafted("stage1")
    assert stage1.score([final])[0] == pytest.approx(6 * math.log(0.2))


def test_score_mid_search_uses_running_alpha():
    m = PDARTS(SMOKE, _setup())
    arch = Arch(("nor_conv_3x3",) * 6)
    ls = m.alpha.detach().double().log_softmax(-1)
    assert m.score([arch])[0] == pytest.approx(100 * 6 + float(ls[:, CONV3].sum()))
    assert "none" not in m.derive().ops


# --------------------------------------------------------------------------- resume


def _roundtrip(state: dict) -> dict:
    buf = io.BytesIO()
    torch.save(state, buf)
    buf.seek(0)
    return torch.load(buf, weights_only=True)


@pytest.mark.parametrize("k", [3, 4])
def test_resume_across_stage_boundary(smoke_run, k):
    full, full_metrics = smoke_run[0], smoke_run[1]
    torch.manual_seed(0)
    first = PDARTS(SMOKE, _setup())
    for _ in range(k):
        first.train_epoch(TRAIN, VALID)
    state = _roundtrip(first.state_dict())
    torch.manual_seed(999)
    resumed = PDARTS(SMOKE, _setup())
    resumed.load_state_dict(state)
    assert resumed.stage == first.stage and resumed.supernet.N == SMOKE.stage_cells[first.stage]
    assert [len(ops) for ops in resumed.alive[-1]] == [SMOKE.stage_ops[first.stage]] * 6
    rest = [resumed.train_epoch(TRAIN, VALID) for _ in range(SMOKE.epochs - k)]
    assert rest == full_metrics[k:]
    archs = _archs()
    assert np.array_equal(resumed.score(archs), full.score(archs))
    assert resumed.derive() == full.derive()
    assert torch.equal(resumed.alpha, full.alpha)
    for (key, a), b in zip(full.supernet.state_dict().items(), resumed.supernet.state_dict().values()):
        assert torch.equal(a, b), key
