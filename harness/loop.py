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

import json
import logging
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Protocol, Sequence

import pandas as pd
import torch

from harness.files import json_safe

STATE_FILE = "state.pt"
PREVIOUS_FILE = "state.prev.pt"   # LocalSession's checkpoint before the last one
EPOCH_FILE = "epoch.json"         # beside each Tune checkpoint's state file: the epoch it holds


class Resumable(Protocol):
    def state_dict(self) -> dict: ...

    def load_state_dict(self, state: dict) -> None: ...


class Session(Protocol):
    def restore(self) -> dict | None: ...

    def report(self, metrics: dict[str, Any], state: dict | None) -> None: ...


class TrialInterrupted(Exception):
    """Raised by a ``LocalSession`` to simulate a run killed after an epoch."""


class LocalSession:
    """In-process session: keeps the last two checkpoints in a directory (or the last in memory).

    Writes are atomic (write a temporary file, then rename), and the previous checkpoint is kept
    as ``state.prev.pt``: a state file cut short (a crash of the disk or the machine mid-write)
    resumes from the one before it, or starts over with a message — never a crash loop.
    """

    def __init__(self, checkpoint_dir: str | Path | None = None, stop_after_epoch: int | None = None):
        self.dir = Path(checkpoint_dir) if checkpoint_dir else None
        self.stop_after_epoch = stop_after_epoch
        self.results: list[dict[str, Any]] = []
        self.messages: list[str] = []
        self._state: dict | None = None

    def restore(self) -> dict | None:
        if self.dir is None:
            return self._state
        candidates = [self.dir / STATE_FILE, self.dir / PREVIOUS_FILE]
        return first_readable([p for p in candidates if p.exists()], self._say)

    def _say(self, line: str) -> None:
        self.messages.append(line)
        print(line, flush=True)

    def report(self, metrics: dict[str, Any], state: dict | None) -> None:
        self.results.append(metrics)
        if state is not None:
            if self.dir is not None:
                self.dir.mkdir(parents=True, exist_ok=True)
                tmp = self.dir / (STATE_FILE + ".tmp")
                torch.save(state, tmp)
                if (self.dir / STATE_FILE).exists():
                    (self.dir / STATE_FILE).replace(self.dir / PREVIOUS_FILE)
                tmp.replace(self.dir / STATE_FILE)  # atomic: a crash mid-write leaves the last good one
            else:
                self._state = state
        if self.stop_after_epoch is not None and metrics.get("epoch") == self.stop_after_epoch and not metrics.get("done"):
            raise TrialInterrupted(f"stopped after epoch {self.stop_after_epoch}")


def load_state(path: Path) -> dict:
    """A checkpoint of the harness's own: tensors, numbers, strings and containers only, so it is
    loaded with ``weights_only=True`` (nothing in it is unpickled as code)."""
    state = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(state, dict) or "epoch" not in state:
        raise ValueError("not a harness checkpoint (no epoch in it)")
    return state


def first_readable(paths: Sequence[Path], say: Callable[[str], None]) -> dict | None:
    """The first checkpoint of ``paths`` (newest first) that loads; ``None`` (start over) if none does.

    Each unreadable one is reported with ``say`` — a truncated file after a crash mid-write, say.
    """
    for i, path in enumerate(paths):
        try:
            return load_state(path)
        except Exception as err:  # truncated zip, bad pickle, wrong content: all mean "not usable"
            reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            then = f"trying the previous one, {paths[i + 1]}" if i + 1 < len(paths) else "starting the trial over"
            say(f"warning: checkpoint {path} is unreadable ({type(err).__name__}: {reason[:200]}); {then}")
    return None


class RaySession:
    """The Tune side: ``tune.get_checkpoint`` to restore, ``tune.report`` with a checkpoint.

    Restoring takes the newest *readable* checkpoint of the trial: Tune names the one its
    experiment state last recorded, but a driver killed mid-run may have recorded an older one
    than the trial wrote (each checkpoint directory carries its epoch in ``epoch.json``), and a
    crash during a copy can leave the newest one cut short (then the one before it is used).
    """

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
        if getattr(checkpoint.filesystem, "type_name", "") == "local":
            given = Path(checkpoint.path)
            paths = checkpoint_files(given.parent, prefer=given)
            return first_readable(paths, lambda line: print(line, flush=True))
        with checkpoint.as_directory() as d:  # remote storage: Tune's record is all there is
            return first_readable([Path(d) / STATE_FILE], lambda line: print(line, flush=True))

    def report(self, metrics: dict[str, Any], state: dict | None) -> None:
        from ray import tune

        if state is None:
            tune.report(metrics)
            return
        with tempfile.TemporaryDirectory() as d:
            torch.save(state, Path(d) / STATE_FILE)
            (Path(d) / EPOCH_FILE).write_text(json.dumps({"epoch": int(state["epoch"])}))
            tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(d))


def checkpoint_files(trial_dir: Path, prefer: Path) -> list[Path]:
    """The trial's checkpoint state files, newest epoch first (``prefer``, Tune's choice, wins ties
    and stands in when no directory says its epoch)."""
    def epoch_of(d: Path) -> int:
        try:
            return int(json.loads((d / EPOCH_FILE).read_text())["epoch"])
        except (OSError, ValueError, KeyError, TypeError):
            return -1

    dirs = [d for d in trial_dir.glob("checkpoint_*") if d.is_dir() and (d / STATE_FILE).exists()]
    ranked = sorted(dirs, key=lambda d: (epoch_of(d), d == prefer, d.name), reverse=True)
    if prefer not in ranked:
        ranked.insert(0, prefer)
    return [d / STATE_FILE for d in ranked]


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
