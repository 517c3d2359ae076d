"""Ranking metrics: how well predicted scores order architectures against ground truth.

Every function takes ``pred`` (a method's score, higher = better) and ``true`` (ground-truth
accuracy, higher = better) for the same architectures in the same order, and is strict:
inputs become 1-D float arrays, and anything that would make the number meaningless (length
mismatch, fewer than two items, NaN/inf, a constant input) raises ``ValueError`` saying
what was wrong. Nothing takes ``abs()``: a method that ranks backwards must show a negative tau.

Top-k conventions (shared by ``precision_at_top_k`` and ``kendall_tau_top_k``):
``k`` is a fraction in (0, 1]; the number of items kept is ``n_top = max(1, round(k * n))``
with Python's ``round`` (halves go to the even neighbour, e.g. ``round(2.5) == 2``).
No top-k metric depends on the input order (with ``--eval-archs unique|all`` that is the op
product order, so an order rule would be a systematic bias for heavily tied scores). Let the
cut value ``c`` be the ``n_top``-th largest value; items above ``c`` are in the top, items
below are out, and the items equal to ``c`` form the tied block at the cut (``m`` items, of
which ``s = n_top - #above`` fit; ``s == m`` when the block does not straddle the cut).
``precision_at_top_k`` gives each item its probability of being in the top under a uniformly
random order of the tied items — 1 above the cut, ``s / m`` in the tied block, 0 below — in
``pred`` and in ``true`` independently, and returns the exact expected overlap / ``n_top``
(formula in its docstring). A fully tied block therefore scores exactly chance inside it; a
constant ``pred`` would score exactly ``n_top / n``, though it is still rejected as undefined.
``kendall_tau_top_k`` keeps every item with ``true >= c``: a tied block straddling the cut is
kept whole, so the subset may have more than ``n_top`` items, never fewer.
"""
from __future__ import annotations

import math
import numbers
from fractions import Fraction
from typing import Callable, Sequence

import numpy as np
from numpy.typing import ArrayLike
from scipy import stats

Metric = Callable[[np.ndarray, np.ndarray], float]

__all__ = [
    "bootstrap_ci",
    "kendall_tau",
    "kendall_tau_top_k",
    "paired_bootstrap",
    "precision_at_top_k",
    "ranking_metrics",
    "spearman",
    "top_k_count",
]


def _as_vector(values: ArrayLike, name: str) -> np.ndarray:
    """A 1-D float copy of ``values``, or a ValueError naming the argument."""
    try:
        array = np.array(values, dtype=float)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{name} must be numbers convertible to float: {exc}") from exc
    if array.ndim != 1:
        raise ValueError(f"{name} must be 1-D (one score per architecture), got shape {array.shape}")
    if not np.all(np.isfinite(array)):
        bad = np.flatnonzero(~np.isfinite(array))
        raise ValueError(
            f"{name} contains {bad.size} NaN or inf value(s), first at position(s) {bad[:5].tolist()}"
        )
    return array


def _check_pair(pred: ArrayLike, true: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    """Validate a (pred, true) pair: same length, >= 2 items, finite, neither constant."""
    p, t = _as_vector(pred, "pred"), _as_vector(true, "true")
    if p.size != t.size:
        raise ValueError(f"pred and true differ in length: {p.size} vs {t.size}")
    if p.size < 2:
        raise ValueError(f"a ranking needs at least 2 items, got {p.size}")
    for name, array in (("pred", p), ("true", t)):
        if np.all(array == array[0]):
            raise ValueError(
                f"{name} is constant ({array[0]!r} for all {array.size} items): ranking undefined"
            )
    return p, t


def _check_fraction(k: float) -> float:
    if isinstance(k, bool) or not isinstance(k, numbers.Real) or not 0.0 < k <= 1.0:
        raise ValueError(f"k must be a fraction in (0, 1], got {k!r}")
    return float(k)


def top_k_count(n: int, k: float) -> int:
    """How many of ``n`` items form the top-``k`` fraction: ``max(1, round(k * n))``."""
    return max(1, round(_check_fraction(k) * n))


def _top_split(values: np.ndarray, n_top: int) -> tuple[np.ndarray, np.ndarray, int]:
    """The top-``n_top`` selection of ``values`` without any order rule for ties.

    Returns ``(above, at_cut, slots)``: boolean masks of the items strictly above the cut
    value ``c`` (the ``n_top``-th largest value) and of the items equal to ``c`` (the tied
    block at the cut), and ``slots = n_top - above.sum()``, how many of the block fit
    (``1 <= slots <= at_cut.sum()``). Depends only on the multiset of values at each position.
    """
    cut = np.partition(values, values.size - n_top)[values.size - n_top]
    above = values > cut
    return above, values == cut, n_top - int(above.sum())


def _expected_overlap(p: np.ndarray, t: np.ndarray, n_top: int) -> Fraction:
    """Exact E|P ∩ T| over uniformly random, independent orders of the tied items of ``p``
    and of ``t``, where P and T are the top-``n_top`` sets (see ``precision_at_top_k``)."""
    p_above, p_cut, p_slots = _top_split(p, n_top)
    t_above, t_cut, t_slots = _top_split(t, n_top)
    w_p = Fraction(p_slots, int(p_cut.sum()))  # membership probability inside pred's tied block
    w_t = Fraction(t_slots, int(t_cut.sum()))
    return (
        int(np.sum(p_above & t_above))
        + w_p * int(np.sum(p_cut & t_above))
        + w_t * int(np.sum(p_above & t_cut))
        + w_p * w_t * int(np.sum(p_cut & t_cut))
    )


def kendall_tau(pred: ArrayLike, true: ArrayLike) -> float:
    """Kendall tau-b (tie-corrected), identical to ``scipy.stats.kendalltau(variant='b')``."""
    p, t = _check_pair(pred, true)
    return float(stats.kendalltau(p, t, variant="b").statistic)


def spearman(pred: ArrayLike, true: ArrayLike) -> float:
    """Spearman rank correlation (average ranks for ties), identical to ``scipy.stats.spearmanr``."""
    p, t = _check_pair(pred, true)
    return float(stats.spearmanr(p, t).statistic)


def precision_at_top_k(pred: ArrayLike, true: ArrayLike, k: float = 0.05) -> float:
    """Share of the predicted top-k fraction that is also in the true top-k fraction.

    This is what a NAS user feels: of the architectures the method would shortlist, how many
    are really among the best. Both sets P (by ``pred``) and T (by ``true``) have
    ``n_top = top_k_count(n, k)`` items (module docstring).

    Ties are resolved by no order at all: the result is the exact expected value of
    ``|P ∩ T| / n_top`` when the items tied at ``pred``'s cut and those tied at ``true``'s cut
    are each put in a uniformly random order, independently. Item i is in P with probability
    ``a_i = 1`` above pred's cut, ``a_i = s_p / m_p`` in its tied block (``s_p`` slots left for
    ``m_p`` tied items), else 0; ``b_i`` likewise for T. By linearity and independence

        p@k = sum_i a_i * b_i / n_top
            = (A + (s_p/m_p) * B + (s_t/m_t) * C + (s_p/m_p) * (s_t/m_t) * D) / n_top,

    where A = #(above in both), B = #(in pred's tied block, above in true), C = #(above in
    pred, in true's tied block), D = #(in both tied blocks). It is computed in exact rational
    arithmetic, so it is exactly invariant to any permutation of the (pred, true) pairs;
    without ties it is the plain overlap of the two top sets. If every item of ``pred`` were
    tied (a_i = n_top / n for all i) it would be exactly the chance value ``n_top / n``.
    """
    p, t = _check_pair(pred, true)
    n_top = top_k_count(p.size, k)
    return float(_expected_overlap(p, t, n_top) / n_top)


def kendall_tau_top_k(pred: ArrayLike, true: ArrayLike, k: float = 0.10) -> float:
    """Kendall tau-b among the architectures in the TRUE top-k fraction only.

    Global tau is dominated by easy pairs (a broken cell vs a good one); this asks whether the
    method can order the good architectures among themselves, which is what picks the winner.
    The subset is every item with ``true >= c``, ``c`` the ``top_k_count(n, k)``-th largest
    ``true``: a tied block of ``true`` straddling the cut is kept whole (no input-order rule),
    so the subset can exceed ``top_k_count(n, k)`` items. Ties inside it, in either input, are
    handled by tau-b. Raises ValueError when the subset has fewer than 2 items or is constant
    in either input.
    """
    p, t = _check_pair(pred, true)
    above, at_cut, _ = _top_split(t, top_k_count(t.size, k))
    keep = np.flatnonzero(above | at_cut)
    try:
        return kendall_tau(p[keep], t[keep])
    except ValueError as exc:
        raise ValueError(f"tau inside the true top {k:.0%} ({keep.size} items) is undefined: {exc}") from exc


def bootstrap_ci(
    metric: Metric,
    pred: ArrayLike,
    true: ArrayLike,
    n_boot: int = 1000,
    alpha: float = 0.05,
    seed: int = 0,
) -> tuple[float, float]:
    """Percentile bootstrap (1 - alpha) interval of ``metric(pred, true)``.

    Resamples (pred, true) pairs with replacement, so the interval reflects which
    architectures happened to be evaluated. A resample on which the metric is undefined (it
    raises ValueError or returns a non-finite number, e.g. a constant resample) is skipped;
    if more than half are undefined the interval would describe a biased subset, so we raise.
    """
    p, t = _check_pair(pred, true)
    if not (isinstance(n_boot, int) and n_boot >= 1):
        raise ValueError(f"n_boot must be a positive int, got {n_boot!r}")
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha must be in (0, 1), got {alpha!r}")
    rng = np.random.default_rng(seed)
    estimates = []
    for _ in range(n_boot):
        idx = rng.integers(0, p.size, size=p.size)
        try:
            value = float(metric(p[idx], t[idx]))
        except ValueError:
            continue
        if math.isfinite(value):
            estimates.append(value)
    undefined = n_boot - len(estimates)
    if undefined > n_boot / 2:
        raise ValueError(
            f"metric undefined on {undefined} of {n_boot} bootstrap resamples (more than half); "
            "the sample is too small or too tied for a bootstrap interval"
        )
    low, high = np.quantile(estimates, [alpha / 2, 1 - alpha / 2])
    return float(low), float(high)


def paired_bootstrap(
    metric: Metric,
    preds: Sequence[ArrayLike],
    true: ArrayLike,
    baseline: ArrayLike | None = None,
    n_boot: int = 1000,
    alpha: float = 0.05,
    seed: int = 0,
) -> tuple[float, float, float]:
    """Estimate and percentile bootstrap interval of ``mean_s metric(preds[s], true)`` minus
    ``metric(baseline, true)`` (when a baseline is given), resampling the archs jointly.

    ``preds`` are score vectors over the same archs (e.g. one per seed); every resample draws
    one set of arch indices and evaluates every vector, and the baseline, on it — the paired
    design, so that which archs were drawn cancels out of the difference. Undefined resamples
    are skipped as in ``bootstrap_ci`` (more than half undefined raises).
    """
    t = _as_vector(true, "true")
    vectors = [_check_pair(p, t)[0] for p in preds]
    if not vectors:
        raise ValueError("paired_bootstrap needs at least one score vector")
    base = None if baseline is None else _check_pair(baseline, t)[0]
    if not (isinstance(n_boot, int) and n_boot >= 1):
        raise ValueError(f"n_boot must be a positive int, got {n_boot!r}")
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha must be in (0, 1), got {alpha!r}")

    def statistic(idx: np.ndarray | slice) -> float:
        value = float(np.mean([metric(v[idx], t[idx]) for v in vectors]))
        return value - float(metric(base[idx], t[idx])) if base is not None else value

    estimate = statistic(slice(None))
    rng = np.random.default_rng(seed)
    estimates = []
    for _ in range(n_boot):
        idx = rng.integers(0, t.size, size=t.size)
        try:
            value = statistic(idx)
        except ValueError:
            continue
        if math.isfinite(value):
            estimates.append(value)
    if n_boot - len(estimates) > n_boot / 2:
        raise ValueError(f"metric undefined on {n_boot - len(estimates)} of {n_boot} bootstrap resamples "
                         "(more than half); the sample is too small or too tied for a bootstrap interval")
    low, high = np.quantile(estimates, [alpha / 2, 1 - alpha / 2])
    return estimate, float(low), float(high)


def ranking_metrics(pred: ArrayLike, true: ArrayLike) -> dict[str, float]:
    """The harness's standard metric row: global tau-b, Spearman, precision@top-5%, tau in top-10%.

    Invalid inputs raise (as everywhere in this module). The one exception is ``tau_top10``:
    a perfectly valid ranking can be undefined inside the true top 10% (e.g. 20 archs leave
    2, which the method may tie), so that single entry is NaN instead of failing the trial —
    visible in every report, never a silent number.
    """
    p, t = _check_pair(pred, true)
    try:
        tau_top10 = kendall_tau_top_k(p, t, k=0.10)
    except ValueError:
        tau_top10 = float("nan")
    return {
        "kendall_tau": kendall_tau(p, t),
        "spearman": spearman(p, t),
        "p_at_top5": precision_at_top_k(p, t, k=0.05),
        "tau_top10": tau_top10,
        "n_archs": int(p.size),
    }
