"""SPOS: single-path updates, evolution, scoring, resume."""
from __future__ import annotations

import dataclasses
import random

import numpy as np
import pytest
import torch

from methods.base import NonFiniteLossError, SearchSetup
from methods.spos import SPOS, SPOSConfig, evolve
from spaces.nb201 import OPS, Arch, all_archs
from helpers import random_batches as batches


def make(seed: int = 0, init_seed: int | None = None, **changes) -> SPOS:
    torch.manual_seed(seed if init_seed is None else init_seed)
    cfg = dataclasses.replace(SPOSConfig.preset("smoke"), **changes)
    return SPOS(cfg, SearchSetup(8, 1, 10, torch.device("cpu"), seed, batches(2, seed=10), batches(2, seed=11)))


def test_unsampled_ops_get_no_update_not_even_momentum_or_decay():
    spos = make()
    spos.train_epoch(batches(3), [])  # builds momentum buffers on whatever was sampled
    spos.optimizer.zero_grad(set_to_none=True)
    arch = Arch(("nor_conv_3x3",) * 6)
    spos.sample = lambda: arch  # the next epoch trains only the conv3x3 path
    conv1 = [m[1].weight for e in range(6) for m in spos.supernet.op_modules(e, OPS.index("nor_conv_1x1"))]
    conv3 = [m[1].weight for e in range(6) for m in spos.supernet.op_modules(e, OPS.index("nor_conv_3x3"))]
    before1, before3 = [w.clone() for w in conv1], [w.clone() for w in conv3]
    spos.train_epoch(batches(2, seed=5), [])
    assert all(torch.equal(a, w) for a, w in zip(before1, conv1))  # untouched despite momentum + wd
    assert all(w.grad is None for w in conv1)
    assert all(not torch.equal(a, w) for a, w in zip(before3, conv3))


def test_sampling_is_uniform_over_ops_or_over_unique_cells():
    spos = make()
    counts = np.zeros((6, 5))
    for _ in range(3000):
        for e, i in enumerate(spos.sample().indices):
            counts[e, i] += 1
    assert np.allclose(counts / 3000, 0.2, atol=0.03)
    # The class of cells whose output is zero is large among encodings, one of 6,466 classes.
    zero = Arch(("none",) * 6).canonical()
    share = sum(a.canonical() == zero for a in all_archs()) / 15_625
    encoded = sum(spos.sample().canonical() == zero for _ in range(3000))
    assert share > 0.01 and abs(encoded / 3000 - share) < 0.008  # 225 of 15,625 encodings
    uniq = make(unique_sampling=True)
    assert sum(uniq.sample().canonical() == zero for _ in range(3000)) <= 4  # expected 0.46


def test_evolution_finds_the_optimum_of_a_known_fitness_without_duplicates():
    target = Arch.from_str("|nor_conv_3x3~0|+|nor_conv_3x3~0|skip_connect~1|+|skip_connect~0|nor_conv_1x1~1|nor_conv_3x3~2|")
    evaluated: list[Arch] = []

    def fitness(archs):
        evaluated.extend(archs)
        return np.array([sum(a == b for a, b in zip(x.ops, target.ops)) for x in archs], dtype=float)

    best = evolve(fitness, SPOSConfig(), random.Random(0))
    assert len(evaluated) == len(set(evaluated))  # duplicates skipped
    assert len(evaluated) <= 50 + 20 * 50
    assert sum(a == b for a, b in zip(best.ops, target.ops)) >= 5


def test_scores_follow_score_by_and_are_cached_until_training_changes_weights():
    spos = make(score_by="loss")
    archs = list(all_archs())[:8]
    s1 = spos.score(archs)
    assert (s1 < 0).all()  # minus a cross-entropy
    assert np.array_equal(s1, spos.score(archs))
    spos.train_epoch(batches(1), [])
    assert not np.array_equal(s1, spos.score(archs))


def test_resume_continues_bit_for_bit():
    archs = list(all_archs())[::1000]
    full = make(seed=3)
    for i in range(3):
        full.train_epoch(batches(2, seed=i), [])
    part = make(seed=3)
    part.train_epoch(batches(2, seed=0), [])
    state = part.state_dict()
    resumed = make(seed=3, init_seed=99)  # other initial weights: the state must overwrite them
    resumed.load_state_dict(state)
    for i in (1, 2):
        resumed.train_epoch(batches(2, seed=i), [])
    np.testing.assert_array_equal(full.score(archs), resumed.score(archs))
    assert full.derive() == resumed.derive()


def test_nan_loss_raises_a_clear_error():
    spos = make(lr=float("nan"))
    with pytest.raises(NonFiniteLossError, match="non-finite loss"):
        spos.train_epoch(batches(3), [])
