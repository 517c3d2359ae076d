"""Fault injection for the fault-tolerance tests: a real ``SIGKILL`` of a trial's worker, mid-epoch.

Killing a Ray worker from outside at the right moment races with the trial on a busy machine;
the tests instead set ``NAS_HARNESS_FAULT`` for the run, and the named trial kills its own
process after the first training batch of the named epoch — on its first attempt only (a marker
file in the trial directory remembers it), so a retried trial runs clean. Ray sees exactly what
an out-of-memory kill or a lost node looks like: the worker process vanishes.

Format: ``kill-worker:<trial name>:<epoch>``, e.g. ``kill-worker:spos-seed0:2``. Unset (the
normal case) it costs one dictionary lookup per epoch.
"""
from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import Any, Iterable, Iterator

ENV = "NAS_HARNESS_FAULT"
MARKER = ".fault-injected"


def planned_kill(trial: str, epoch: int) -> bool:
    """Whether ``NAS_HARNESS_FAULT`` asks this trial to kill its worker in this epoch."""
    spec = os.environ.get(ENV, "")
    if not spec:
        return False
    try:
        kind, name, at = spec.split(":")
        wanted = int(at)
    except ValueError:
        raise ValueError(f"{ENV} must look like kill-worker:<trial>:<epoch>, got {spec!r}") from None
    if kind != "kill-worker":
        raise ValueError(f"{ENV}: unknown fault {kind!r} (known: kill-worker)")
    return name == trial and wanted == epoch


class KillAfterFirstBatch:
    """Yields ``batches``; after the first one, SIGKILLs this process (once per trial directory)."""

    def __init__(self, batches: Any, trial_dir: Path):
        self.batches, self.trial_dir = batches, trial_dir

    def __len__(self) -> int:
        return len(self.batches)

    def __iter__(self) -> Iterator[Any]:
        for i, batch in enumerate(self.batches):
            yield batch
            marker = self.trial_dir / MARKER
            if i == 0 and not marker.exists():
                marker.write_text(f"worker {os.getpid()} killed itself mid-epoch\n")
                os.kill(os.getpid(), signal.SIGKILL)


def maybe_faulty(batches: Iterable[Any], trial_dir: Path, epoch: int) -> Iterable[Any]:
    """``batches``, or a wrapper that kills the worker mid-epoch when a fault is planned here."""
    if planned_kill(trial_dir.name, epoch):
        return KillAfterFirstBatch(batches, trial_dir)
    return batches
