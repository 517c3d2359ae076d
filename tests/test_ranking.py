"""Ranking metrics: equal to scipy with ties, hand-checked top-k cases, strict errors, sign."""
from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from benchmarks.ranking import (
    bootstrap_ci,
    kendall_tau,
    kendall_tau_top_k,
    paired_bootstrap,
    precision_at_top_k,
    ranking_metrics,
    spearman,
    top_k_count,
)

METRICS = [kendall_tau, spearman, precision_at_top_k, kendall_tau_top_k]


def tied_pair(seed: int, n: int = 60) -> tuple[np.ndarray, np.ndarray]:
    """Integer scores in 0..5: many ties, which is where tau-a / tau-b / tau-c differ."""
    rng = np.random.default_rng(seed)
    return rng.integers(0, 6, size=n), rng.integers(0, 6, size=n)


@pytest.mark.parametrize("seed", range(5))
def test_kendall_tau_is_scipy_tau_b_with_ties(seed: int) -> None:
    pred, true = tied_pair(seed)
    expected = stats.kendalltau(pred, true, variant="b").statistic
    assert kendall_tau(pred, true) == pytest.approx(expected, abs=1e-12)
    # tau-c differs from tau-b on tied data: proves the variant matters and was chosen.
    assert abs(stats.kendalltau(pred, true, variant="c").statistic - expected) > 1e-6


@pytest.mark.parametrize("seed", range(5))
def test_spearman_is_scipy_with_ties(seed: int) -> None:
    pred, true = tied_pair(seed)
    assert spearman(pred, true) == pytest.approx(stats.spearmanr(pred, true).statistic, abs=1e-12)


def test_reversed_ranking_is_minus_one() -> None:
    true = np.arange(10.0)
    assert kendall_tau(-true, true) == pytest.approx(-1.0, abs=1e-12)
    assert spearman(-true, true) == pytest.approx(-1.0, abs=1e-12)
    assert kendall_tau_top_k(-true, true, k=0.5) == pytest.approx(-1.0, abs=1e-12)
    assert precision_at_top_k(-true, true, k=0.2) == 0.0


def test_top_k_count_rule() -> None:
    assert top_k_count(15625, 0.05) == 781
    assert top_k_count(100, 0.10) == 10
    assert top_k_count(10, 0.05) == 1  # round(0.5) == 0, floored at 1
    assert top_k_count(10, 0.25) == 2  # round(2.5) == 2 (half to even)
    assert top_k_count(10, 1.0) == 10
    for bad in (0.0, -0.1, 1.5, 5):
        with pytest.raises(ValueError, match="fraction"):
            top_k_count(10, bad)


def test_precision_at_top_k_hand_case() -> None:
    true = np.arange(20.0)  # true top 2 (k=0.1): positions 19, 18
    pred = np.zeros(20)
    pred[19], pred[0] = 10.0, 9.0  # predicted top 2: positions 19, 0 -> one hit
    pred[1:19] = np.linspace(0.1, 1.0, 18)
    assert precision_at_top_k(pred, true, k=0.10) == 0.5
    pred[0] = 0.0  # now predicted top 2 = 19, 18 -> both hits
    assert precision_at_top_k(pred, true, k=0.10) == 1.0


def test_precision_ties_at_the_cut_go_to_input_order() -> None:
    pred = np.array([1.0, 1.0, 1.0, 0.0, 0.0])  # n_top = 1: a three-way tie at the cut
    assert precision_at_top_k(pred, np.array([5.0, 4, 3, 2, 1]), k=0.2) == 1.0  # first tied item wins
    assert precision_at_top_k(pred, np.array([4.0, 5, 3, 2, 1]), k=0.2) == 0.0


def test_kendall_tau_top_k_uses_only_the_true_top() -> None:
    true = np.arange(10.0)  # k=0.3 -> true top 3 = positions 9, 8, 7
    pred = np.array([50.0, 40, 30, 20, 10, 60, 70, 3, 2, 1])  # top 3 fully reversed
    assert kendall_tau_top_k(pred, true, k=0.3) == pytest.approx(-1.0)
    pred[[7, 8, 9]] = [2.0, 1.0, 3.0]  # pairs (7,8) discordant, (7,9) (8,9) concordant
    assert kendall_tau_top_k(pred, true, k=0.3) == pytest.approx(1 / 3)
    # The other seven archs do not matter at all.
    pred[:7] = -np.arange(7.0)
    assert kendall_tau_top_k(pred, true, k=0.3) == pytest.approx(1 / 3)


def test_kendall_tau_top_k_undefined_when_pred_tied_inside() -> None:
    true = np.arange(10.0)
    pred = np.array([0.0, 1, 2, 3, 4, 5, 6, 9, 9, 9])
    with pytest.raises(ValueError, match="top 30%.*pred is constant"):
        kendall_tau_top_k(pred, true, k=0.3)


@pytest.mark.parametrize("metric", METRICS)
@pytest.mark.parametrize(
    ("pred", "true", "message"),
    [
        ([1.0, np.nan, 3.0], [1.0, 2.0, 3.0], "pred contains 1 NaN or inf"),
        ([1.0, 2.0, 3.0], [1.0, np.inf, 3.0], "true contains 1 NaN or inf"),
        ([1.0, 2.0, 3.0], [1.0, 2.0], "differ in length: 3 vs 2"),
        ([1.0], [2.0], "at least 2 items"),
        ([2.0, 2.0, 2.0], [1.0, 2.0, 3.0], "pred is constant"),
        ([1.0, 2.0, 3.0], [7.0, 7.0, 7.0], "true is constant"),
        ([[1.0, 2.0], [3.0, 4.0]], [1.0, 2.0], "pred must be 1-D"),
        (["a", "b"], [1.0, 2.0], "pred must be numbers"),
    ],
)
def test_invalid_inputs_raise(metric, pred, true, message) -> None:
    with pytest.raises(ValueError, match=message):
        metric(pred, true)


def test_bootstrap_ci_brackets_estimate_and_is_reproducible() -> None:
    rng = np.random.default_rng(1)
    true = rng.normal(size=80)
    pred = true + rng.normal(size=80)
    point = kendall_tau(pred, true)
    low, high = bootstrap_ci(kendall_tau, pred, true, n_boot=300, seed=7)
    assert low < point < high
    assert 0.0 < high - low < 0.5
    assert bootstrap_ci(kendall_tau, pred, true, n_boot=300, seed=7) == (low, high)
    assert bootstrap_ci(kendall_tau, pred, true, n_boot=300, seed=8) != (low, high)
    narrow = bootstrap_ci(kendall_tau, pred, true, n_boot=300, alpha=0.5, seed=7)
    assert low < narrow[0] < narrow[1] < high


def test_bootstrap_ci_skips_some_undefined_resamples_but_not_most() -> None:
    pred, true = np.arange(10.0), np.arange(10.0)
    calls = {"n": 0}

    def flaky(p: np.ndarray, t: np.ndarray) -> float:
        calls["n"] += 1
        if calls["n"] % 3 == 0:
            raise ValueError("undefined")
        return float("nan") if calls["n"] % 3 == 1 and calls["n"] > 40 else 1.0

    assert bootstrap_ci(flaky, pred, true, n_boot=30) == (1.0, 1.0)  # 10 of 30 undefined: fine

    def never(p: np.ndarray, t: np.ndarray) -> float:
        raise ValueError("undefined")

    with pytest.raises(ValueError, match="undefined on 100 of 100"):
        bootstrap_ci(never, pred, true, n_boot=100)
    calls["n"] = 0
    with pytest.raises(ValueError, match="more than half"):
        bootstrap_ci(flaky, pred, true, n_boot=100)  # NaN results count as undefined too


def test_ranking_metrics_row() -> None:
    pred, true = tied_pair(3, n=100)
    true = true + np.linspace(0, 0.5, 100)  # distinct truth, tied predictions
    row = ranking_metrics(pred, true)
    assert list(row) == ["kendall_tau", "spearman", "p_at_top5", "tau_top10", "n_archs"]
    assert row["kendall_tau"] == kendall_tau(pred, true)
    assert row["spearman"] == spearman(pred, true)
    assert row["p_at_top5"] == precision_at_top_k(pred, true, k=0.05)
    assert row["tau_top10"] == kendall_tau_top_k(pred, true, k=0.10)
    assert row["n_archs"] == 100


def test_ranking_metrics_top10_tau_nan_only_when_undefined_there() -> None:
    true = np.arange(20.0)
    pred = np.arange(20.0)
    pred[18] = pred[19]  # true top 2 tied in pred
    row = ranking_metrics(pred, true)
    assert math.isnan(row["tau_top10"])
    assert row["kendall_tau"] > 0.9
    with pytest.raises(ValueError, match="pred is constant"):
        ranking_metrics(np.ones(20), true)


def test_paired_bootstrap_exact_cases() -> None:
    true = np.arange(50.0)
    # The same vector as method and baseline: the paired difference is 0 on every resample.
    same = paired_bootstrap(kendall_tau, [true * 2], true, baseline=true * 2, n_boot=200)
    assert same == (0.0, 0.0, 0.0)
    # Perfect vs perfectly reversed: tau 1 and -1 on every resample (ties of repeated archs are
    # shared by both), so the difference is 2 with a degenerate interval.
    diff, low, high = paired_bootstrap(kendall_tau, [true], true, baseline=-true, n_boot=200)
    assert diff == 2.0 and low == pytest.approx(2.0, abs=1e-12) and high == pytest.approx(2.0, abs=1e-12)
    # Several seeds: the estimate is the mean over them.
    est, _, _ = paired_bootstrap(kendall_tau, [true, -true], true, n_boot=50)
    assert est == 0.0


def test_paired_bootstrap_matches_the_normal_interval_of_a_mean() -> None:
    """For metric = mean(pred - true) the bootstrap interval of the paired difference is the
    classical one of a mean: estimate +- 1.96 sd / sqrt(n), within Monte-Carlo error."""
    rng = np.random.default_rng(0)
    n = 400
    true = rng.normal(size=n)
    a, b = true + rng.normal(0.3, 1.0, n), true + rng.normal(0.0, 0.5, n)
    mean_gap = lambda p, t: float(np.mean(p - t))  # noqa: E731
    est, low, high = paired_bootstrap(mean_gap, [a], true, baseline=b, n_boot=4000, seed=3)
    d = a - b
    half = 1.96 * d.std(ddof=1) / math.sqrt(n)
    assert est == pytest.approx(d.mean())
    assert low == pytest.approx(d.mean() - half, abs=0.2 * half)
    assert high == pytest.approx(d.mean() + half, abs=0.2 * half)


def test_paired_bootstrap_is_paired() -> None:
    """Two noisy rankers that share their noise: unpaired intervals overlap, the paired one
    of their difference does not straddle 0."""
    rng = np.random.default_rng(1)
    true = rng.normal(size=300)
    shared = rng.normal(0, 1.0, 300)
    better, worse = true + shared, true + shared + rng.normal(0, 0.3, 300)
    _, low, high = paired_bootstrap(kendall_tau, [better], true, baseline=worse, n_boot=500)
    assert low > 0
    with pytest.raises(ValueError, match="at least one"):
        paired_bootstrap(kendall_tau, [], true)
