"""Ranking metrics: how well predicted scores order architectures against ground truth.

Every function takes ``pred`` (a method's score, higher = better) and ``true`` (ground-truth
accuracy, higher = better) for the same architectures in the same order, and is strict:
inputs become 1-D float arrays, and anything that would make the number meaningless (length
mismatch, fewer than two items, NaN/inf, a constant input) raises ``ValueError`` saying
what was wrong. Nothing takes ``abs()``: a method that ranks backwards must show a negative tau.

Top-k conventions (shared by ``precision_at_top_k`` and ``kendall_tau_top_k``):
``k`` is a fraction in (0, 1]; the number of items kept is ``n_top = max(1, round(k * n))``
with Python's ``round`` (halves go to the even neighbour, e.g. ``round(2.5) == 2``).
The top items are taken by a stable descending sort, so ties at the cut go to the item that
comes first in the input order — deterministic, but it means a tied block at the cut is
resolved by input order, not by merit.
"""
from __future__ import annotations

import math
import numbers
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


def _top_indices(values: np.ndarray, n_top: int) -> np.ndarray:
    """Positions of the ``n_top`` largest values; ties keep input order (stable sort)."""
    return np.argsort(-values, kind="stable")[:n_top]


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
    are really among the best. Both sets have ``top_k_count(n, k)`` items (module docstring).
    """
    p, t = _check_pair(pred, true)
    n_top = top_k_count(p.size, k)
    shared = np.intersect1d(_top_indices(p, n_top), _top_indices(t, n_top))
    return shared.size / n_top


def kendall_tau_top_k(pred: ArrayLike, true: ArrayLike, k: float = 0.10) -> float:
    """Kendall tau-b among the architectures in the TRUE top-k fraction only.

    Global tau is dominated by easy pairs (a broken cell vs a good one); this asks whether the
    method can order the good architectures among themselves, which is what picks the winner.
    Raises ValueError when the subset has fewer than 2 items or is constant in either input.
    """
    p, t = _check_pair(pred, true)
    keep = _top_indices(t, top_k_count(t.size, k))
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
