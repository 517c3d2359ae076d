"""The one epoch loop under every trial, with its checkpoints and the sessions it reports to.

A trial (a search in ``harness.trial``, a from-scratch training in ``harness.evaluation_trial``)
hands the loop its resumable parts (the method or trainer, the data streams) and a function
that runs one epoch. The loop restores them from the session's last checkpoint, runs the
remaining epochs, writes ``history.csv`` after each and checkpoints everything the next epoch
depends on (parts, torch and CUDA RNG states, history, wall time), so a resumed trial
continues bit for bit on the CPU. ``RaySession`` wires the loop to Tune; ``LocalSession`` runs
it in-process (tests, the GPU machine, the perf script).
"""
from __future__ import annotations

import logging
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Protocol

import pandas as pd
import torch

from harness.files import json_safe

STATE_FILE = "state.pt"


class Resumable(Protocol):
    def state_dict(self) -> dict: ...

    def load_state_dict(self, state: dict) -> None: ...


class Session(Protocol):
    def restore(self) -> dict | None: ...

    def report(self, metrics: dict[str, Any], state: dict | None) -> None: ...


class TrialInterrupted(Exception):
    """Raised by a ``LocalSession`` to simulate a run killed after an epoch."""


class LocalSession:
    """In-process session: keeps the last checkpoint in a directory (or memory)."""

    def __init__(self, checkpoint_dir: str | Path | None = None, stop_after_epoch: int | None = None):
        self.dir = Path(checkpoint_dir) if checkpoint_dir else None
        self.stop_after_epoch = stop_after_epoch
        self.results: list[dict[str, Any]] = []
        self._state: dict | None = None

    def restore(self) -> dict | None:
        if self.dir is not None and (self.dir / STATE_FILE).exists():
            return torch.load(self.dir / STATE_FILE, map_location="cpu", weights_only=False)
        return self._state

    def report(self, metrics: dict[str, Any], state: dict | None) -> None:
        self.results.append(metrics)
        if state is not None:
            if self.dir is not None:
                self.dir.mkdir(parents=True, exist_ok=True)
                tmp = self.dir / (STATE_FILE + ".tmp")
                torch.save(state, tmp)
                tmp.replace(self.dir / STATE_FILE)  # atomic: a crash mid-write leaves the last good one
            else:
                self._state = state
        if self.stop_after_epoch is not None and metrics.get("epoch") == self.stop_after_epoch and not metrics.get("done"):
            raise TrialInterrupted(f"stopped after epoch {self.stop_after_epoch}")


class RaySession:
    """The Tune side: ``tune.get_checkpoint`` to restore, ``tune.report`` with a checkpoint."""

    def __init__(self) -> None:
        # The trial's stdout reaches the driver (progress lines): keep Ray's per-checkpoint
        # INFO lines out of it.
        for name in ("ray.train", "ray.tune"):
            logging.getLogger(name).setLevel(logging.WARNING)

    def restore(self) -> dict | None:
        from ray import tune

        checkpoint = tune.get_checkpoint()
        if checkpoint is None:
            return None
        with checkpoint.as_directory() as d:
            return torch.load(Path(d) / STATE_FILE, map_location="cpu", weights_only=False)

    def report(self, metrics: dict[str, Any], state: dict | None) -> None:
        from ray import tune

        if state is None:
            tune.report(metrics)
            return
        with tempfile.TemporaryDirectory() as d:
            torch.save(state, Path(d) / STATE_FILE)
            tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(d))


@dataclass
class Progress:
    """Where a loop stands: the history so far and the wall time, across resumes."""

    history: list[dict[str, Any]] = field(default_factory=list)
    epoch: int = 0
    wall_before: float = 0.0                        # wall seconds of earlier (interrupted) runs
    resumed_at: float = field(default_factory=time.time)

    def wall_s(self) -> float:
        return self.wall_before + time.time() - self.resumed_at


def run_epochs(session: Session, trial_dir: Path, total: int, parts: Mapping[str, Resumable],
               run_epoch: Callable[[int], dict[str, Any]]) -> Progress:
    """Epochs ``last checkpoint + 1 .. total`` of ``run_epoch(epoch) -> metrics``, checkpointed."""
    progress = Progress()
    state = session.restore()
    if state is not None:
        for name, part in parts.items():
            part.load_state_dict(state[name])
        torch.set_rng_state(state["torch_rng"])
        if state.get("cuda_rng") is not None and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["cuda_rng"])
        progress = Progress(list(state["history"]), int(state["epoch"]), float(state["wall_s"]))
    for epoch in range(progress.epoch + 1, total + 1):
        t0 = time.time()
        metrics: dict[str, Any] = {"epoch": epoch, "epochs": total}
        metrics.update(run_epoch(epoch))
        metrics.setdefault("epoch_s", time.time() - t0)
        metrics["wall_s"] = progress.wall_s()
        progress.history.append(metrics)
        progress.epoch = epoch
        pd.DataFrame(progress.history).to_csv(trial_dir / "history.csv", index=False)
        state = {**{name: part.state_dict() for name, part in parts.items()},
                 "torch_rng": torch.get_rng_state(),
                 "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
                 "history": progress.history, "epoch": epoch, "wall_s": metrics["wall_s"]}
        session.report(json_safe(metrics), state)
    return progress
