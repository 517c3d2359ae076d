"""Ranking metrics: equal to scipy with ties, hand-checked top-k cases, strict errors, sign."""
from __future__ import annotations

import itertools
import math
from fractions import Fraction

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
from benchmarks.ranking import _expected_overlap

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


def old_top_set(values: np.ndarray, n_top: int) -> np.ndarray:
    """The former rule: stable descending sort, ties at the cut go to input order."""
    return np.argsort(-values, kind="stable")[:n_top]


def outcome(metric, pred: np.ndarray, true: np.ndarray, k: float) -> float | str:
    try:
        return metric(pred, true, k=k)
    except ValueError:
        return "undefined"


def test_precision_tied_block_at_the_cut_counts_fractionally() -> None:
    pred = np.array([1.0, 1.0, 1.0, 0.0, 0.0])  # n_top = 1: a three-way tie at the cut
    # 1 slot for 3 tied items: each is in the predicted top with prob 1/3; the true top item
    # is one of them, so E|P ∩ T| = 1/3 and p@k = 1/3, whichever tied item is the true best.
    assert precision_at_top_k(pred, np.array([5.0, 4, 3, 2, 1]), k=0.2) == pytest.approx(1 / 3, abs=1e-15)
    assert precision_at_top_k(pred, np.array([4.0, 5, 3, 2, 1]), k=0.2) == pytest.approx(1 / 3, abs=1e-15)
    assert precision_at_top_k(pred, np.array([1.0, 2, 3, 5, 4]), k=0.2) == 0.0  # true best not tied


def test_precision_hand_case_with_tied_blocks_straddling_the_cut() -> None:
    # n = 10, k = 0.5 -> n_top = 5.
    pred = np.array([9.0, 8, 5, 5, 5, 5, 2, 1, 0, -1])
    # pred: above the cut {0, 1}; tied block at 5 = {2, 3, 4, 5} (m_p = 4), slots s_p = 5 - 2 = 3.
    true = np.array([10.0, 1, 9, 8, 2, 3, 4, 7, 6, 0])
    # true (no ties): top 5 = {0 (10), 2 (9), 3 (8), 7 (7), 8 (6)}.
    # overlap = 1 (item 0, above in pred) + 3/4 * 2 (items 2, 3 of pred's block) = 2.5
    # p@k = 2.5 / 5 = 0.5
    assert precision_at_top_k(pred, true, k=0.5) == 0.5
    true = np.array([10.0, 1, 9, 7, 7, 7, 4, 7, 2, 0])
    # true: above the cut {0, 2}; tied block at 7 = {3, 4, 5, 7} (m_t = 4), slots s_t = 3.
    # A = #(above both) = |{0}| = 1;   B = #(pred block, true above) = |{2}| = 1;
    # C = #(pred above, true block) = 0;   D = #(both blocks) = |{3, 4, 5}| = 3.
    # overlap = 1 + 3/4 * 1 + 3/4 * 0 + (3/4) * (3/4) * 3 = 1 + 0.75 + 27/16 = 55/16
    # p@k = 55/16 / 5 = 11/16 = 0.6875
    assert precision_at_top_k(pred, true, k=0.5) == 0.6875
    # The same value is the average, over every order of pred's tied block and (independently)
    # of true's tied block, of the plain overlap of two strict top-5 sets.
    overlaps = []
    for p_order in itertools.permutations([2, 3, 4, 5]):
        for t_order in itertools.permutations([3, 4, 5, 7]):
            p_tiebreak, t_tiebreak = np.zeros(10), np.zeros(10)
            p_tiebreak[list(p_order)] = np.arange(4)
            t_tiebreak[list(t_order)] = np.arange(4)
            p_top = np.lexsort((p_tiebreak, -pred))[:5]  # last key is primary
            t_top = np.lexsort((t_tiebreak, -true))[:5]
            overlaps.append(np.intersect1d(p_top, t_top).size)
    assert np.mean(overlaps) / 5 == pytest.approx(0.6875, abs=1e-12)


@pytest.mark.parametrize(("n", "k"), [(5, 0.2), (10, 0.25), (20, 0.05), (37, 0.3), (100, 0.05), (64, 1.0)])
def test_constant_score_gets_exactly_the_chance_precision(n: int, k: float) -> None:
    n_top = top_k_count(n, k)
    rng = np.random.default_rng(n)
    true = rng.integers(0, 4, size=n).astype(float)  # heavily tied truth, ties at its cut too
    true[0] = 10.0  # never constant
    # A constant pred is rejected by the public metric (ranking undefined), so the chance value
    # is checked on the exact expected overlap it uses: n_top * (n_top / n) shared items.
    assert _expected_overlap(np.ones(n), true, n_top) / n_top == Fraction(n_top, n)
    # Public metric: all tied except one item strictly below, the true worst (unique). Its tied
    # block of n - 1 items holds the whole true top, so p@k = chance among those n - 1 exactly.
    true = rng.permutation(n).astype(float)
    pred = np.ones(n)
    pred[np.argmin(true)] = 0.0
    expected = n_top / (n - 1) if n_top < n else 1.0
    assert precision_at_top_k(pred, true, k=k) == expected
    for seed in range(4):  # the same value whatever the input order (arrays shuffled jointly)
        perm = np.random.default_rng(seed).permutation(n)
        assert precision_at_top_k(pred[perm], true[perm], k=k) == expected


@pytest.mark.parametrize("seed", range(5))
def test_top_k_metrics_are_invariant_to_input_order_on_tied_data(seed: int) -> None:
    pred, true = tied_pair(seed, n=60)
    rng = np.random.default_rng(100 + seed)
    for k in (0.05, 0.1, 0.3, 0.5):
        p_at_k = precision_at_top_k(pred, true, k=k)
        tau = outcome(kendall_tau_top_k, pred, true, k)
        for _ in range(5):
            perm = rng.permutation(pred.size)
            assert precision_at_top_k(pred[perm], true[perm], k=k) == p_at_k
            permuted = outcome(kendall_tau_top_k, pred[perm], true[perm], k)
            if isinstance(tau, str):
                assert permuted == tau
            else:
                assert permuted == pytest.approx(tau, abs=1e-12)


def test_old_order_rule_did_depend_on_input_order_on_this_data() -> None:
    """Keeps the invariance test above honest: on this tied data the old stable-sort rule gives
    overlaps from 1 to 4 of 6 depending on the input order; the new p@k is one number."""
    pred, true = tied_pair(4, n=60)
    n_top = top_k_count(60, 0.1)
    perms = [np.random.default_rng(s).permutation(60) for s in range(20)]
    old = {np.intersect1d(old_top_set(pred[q], n_top), old_top_set(true[q], n_top)).size for q in perms}
    assert old == {1, 2, 3, 4}
    assert len({precision_at_top_k(pred[q], true[q], k=0.1) for q in perms}) == 1


@pytest.mark.parametrize("seed", range(4))
def test_without_ties_top_k_metrics_equal_the_strict_order_rule(seed: int) -> None:
    rng = np.random.default_rng(seed)
    true = rng.normal(size=50)
    pred = true + rng.normal(size=50)
    for k in (0.05, 0.1, 0.25, 0.5, 1.0):
        n_top = top_k_count(50, k)
        shared = np.intersect1d(old_top_set(pred, n_top), old_top_set(true, n_top)).size
        assert precision_at_top_k(pred, true, k=k) == shared / n_top
        if n_top >= 2:
            keep = old_top_set(true, n_top)
            assert kendall_tau_top_k(pred, true, k=k) == pytest.approx(kendall_tau(pred[keep], true[keep]), abs=1e-12)


def test_kendall_tau_top_k_keeps_a_tied_true_block_at_the_cut_whole() -> None:
    true = np.array([0.0, 1, 2, 3, 4, 5, 6, 7, 7, 9])  # k=0.2 -> n_top = 2: cut value 7, block {7, 8}
    pred = np.array([9.0, 8, 7, 6, 5, 4, 3, 1, 2, 3])
    # Kept: {9} above + the whole block {7, 8} = 3 items (the old rule kept {9, 7} and gave 1.0).
    # Pairs: (7, 8) tied in true; (7, 9) and (8, 9) concordant. tau-b = (2 - 0) / sqrt((3 - 1) * 3)
    assert kendall_tau_top_k(pred, true, k=0.2) == pytest.approx(2 / math.sqrt(6), abs=1e-12)
    rev = np.arange(10)[::-1]
    assert kendall_tau_top_k(pred[rev], true[rev], k=0.2) == pytest.approx(2 / math.sqrt(6), abs=1e-12)
    # A kept block that leaves true constant inside is undefined, and the message says its size.
    with pytest.raises(ValueError, match=r"top 20% \(3 items\).*true is constant"):
        kendall_tau_top_k(pred, np.array([0.0, 1, 2, 3, 4, 5, 6, 9, 9, 9]), k=0.2)


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
