"""Ground truth for a run: the ``--benchmark`` value resolved, loaded and checked once.

Both CLIs (``harness.compare`` and ``harness.evaluate``) read the benchmark through here, so a
table of another space, one that lacks some archs, or one without the metric asked for fails
the same way: ``UsageError``, one line, exit 2.
"""
from __future__ import annotations

from typing import Any, Sequence

from harness.config import UsageError


def benchmark_path(text: str | None, space: str = "nb201") -> str | None:
    """``--benchmark``: ``builtin`` (default) / ``none`` / a path, as ``resolve_benchmark`` reads it."""
    from benchmarks.ground_truth import resolve_benchmark

    try:
        return resolve_benchmark(text, space)
    except FileNotFoundError as err:
        raise UsageError(str(err)) from None


def load(path: str) -> Any:
    """The ground-truth table at ``path`` (any supported format), checked to be of the NB201 space."""
    from benchmarks.ground_truth import load_ground_truth
    from spaces.nb201 import Arch

    try:
        gt = load_ground_truth(path)
    except (OSError, ValueError, KeyError, ImportError) as err:
        message = err.args[0] if isinstance(err, KeyError) and err.args else err
        raise UsageError(f"cannot load benchmark {path}: {message}") from None
    for s in gt.archs[:50_000]:
        try:
            Arch.from_str(s)
        except ValueError:
            raise UsageError(f"benchmark {path} does not describe the nb201 space: e.g. arch {s!r} is not an NB201 "
                             "cell; pass a NAS-Bench-201 / NATS-Bench topology table") from None
    return gt


def metric_column(gt: Any, path: str, dataset: str, metric: str | None) -> str:
    """The column to rank against: ``metric`` if given, else the dataset's test accuracy."""
    try:
        return gt.metric_for(metric or ("cifar10" if dataset == "synthetic" else dataset))
    except ValueError as err:
        raise UsageError(f"benchmark {path}: {err}; pass --metric COLUMN") from None


def values_for(gt: Any, path: str, archs: Sequence[str], column: str) -> list[float]:
    """The ground truth of ``archs`` (every one must be in the table)."""
    missing = [s for s in archs if s not in gt]
    if missing:
        raise UsageError(f"benchmark {path} lacks {len(missing)} of the {len(archs)} archs (e.g. {missing[0]}); "
                         "pass a table covering all 15,625 NB201 cells")
    try:
        values = gt.values(list(archs), column)
    except ValueError as err:  # NaN for some archs: a partial or damaged table
        raise UsageError(f"benchmark {path}: {err}; fill those values, or pass --metric with a complete column") from None
    return [float(v) for v in values]
