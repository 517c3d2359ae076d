"""One trial = one method x seed x config: search, score, derive; checkpoint every epoch.

The trial logic (``run_trial``) knows nothing about Ray: it talks to a ``Session`` that
restores and reports. ``ray_trainable`` is the Ray Tune function trainable that wires the
session to ``tune.get_checkpoint`` / ``tune.report``; ``LocalSession`` runs the same code
in-process (tests, the perf benchmark, debugging).

Files written into the trial directory (``<output>/trials/<method>-seed<seed>/``):
``config.json`` (resolved configs + provenance), ``history.csv`` (one row per epoch),
``scores.csv`` (arch, score[, truth], unique), ``derived.json``, ``method.json`` (the
method's extras, if any), ``result.json`` (final metrics; its presence means success) or
``error.txt`` (the reason a trial failed).
"""
from __future__ import annotations

import json
import math
import os
import platform
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import pandas as pd
import torch

from harness.config import ExperimentConfig, method_config
from methods.base import SearchSetup, config_to_dict, get_method
from spaces.nb201 import Arch, count_params

STATE_FILE = "state.pt"
FINAL_STATE = "final_state.pt"  # the searched method, kept with the trial's files (harness.score)


# --------------------------------------------------------------------------- what the driver passes


@dataclass
class RunContext:
    """Shared by every trial of a run (put in the object store once by ``tune.with_parameters``)."""

    archs: list[str]                      # the evaluation archs, NB201 strings
    unique_mask: list[bool]               # first representative of its benchmark class in `archs`
    arch_set: str                         # e.g. "sample of 100 from 15,625 (seed 0)"
    truth: list[float] | None = None      # ground truth of `archs` (None without a benchmark)
    truth_of_all: dict[str, float] | None = None  # for the derived arch's truth
    metric: str | None = None
    output: str = ""                      # absolute run directory
    provenance: dict[str, Any] = field(default_factory=dict)


def trial_name(method: str, seed: int) -> str:
    return f"{method}-seed{seed}"


# --------------------------------------------------------------------------- sessions


class Session(Protocol):
    def restore(self) -> dict | None: ...

    def report(self, metrics: dict[str, Any], state: dict | None) -> None: ...


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
                torch.save(state, self.dir / STATE_FILE)
            else:
                self._state = state
        if self.stop_after_epoch is not None and metrics.get("epoch") == self.stop_after_epoch and not metrics.get("done"):
            raise TrialInterrupted(f"stopped after epoch {self.stop_after_epoch}")


class TrialInterrupted(Exception):
    """Raised by a ``LocalSession`` to simulate a run killed after an epoch."""


# --------------------------------------------------------------------------- the trial


def select_device(pref: str) -> torch.device:
    if pref == "cuda" or (pref == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            raise RuntimeError("device 'cuda' requested but torch sees no GPU; use --device cpu or auto")
        return torch.device("cuda")
    return torch.device("cpu")


def run_trial(config: dict[str, Any], context: RunContext, session: Session) -> dict[str, Any]:
    """Run one trial to the end (resuming from the session's checkpoint if it has one)."""
    exp = ExperimentConfig.from_dict(config["experiment"])
    method_name, seed = config["method"], int(config["seed"])
    trial_dir = Path(context.output) / "trials" / trial_name(method_name, seed)
    trial_dir.mkdir(parents=True, exist_ok=True)
    (trial_dir / "error.txt").unlink(missing_ok=True)
    try:
        return _run(config, exp, method_name, seed, context, session, trial_dir)
    except TrialInterrupted:
        raise
    except Exception as err:  # a failed trial says why, in its own directory, then fails
        (trial_dir / "error.txt").write_text(f"{type(err).__name__}: {err}\n")
        raise


@dataclass
class Prepared:
    """A method ready to search, with the data it trains on."""

    method: Any
    cfg: Any
    setup: SearchSetup
    data: Any
    train_batches: Any
    valid_batches: Any
    train_half: int
    valid_half: int


def prepare(exp: ExperimentConfig, method_name: str, seed: int, overrides: dict[str, Any] | None = None) -> Prepared:
    """Data, the fixed scoring batches and the method, exactly as a trial builds them."""
    from harness.data import Batches, fixed_batches, load_dataset, random_batch, search_split, stratified_subset

    method_cls = get_method(method_name)
    cfg = method_config(method_cls, exp.budget, exp.epochs, overrides or {})
    device = select_device(exp.device)
    torch.manual_seed(seed)
    data = load_dataset(exp.dataset, exp.data_root, cache_dir=exp.cache_dir, download=exp.download,
                        synthetic_train=exp.synthetic_train, synthetic_test=exp.synthetic_test)
    train_half, valid_half = search_split(data.train, seed=exp.split_seed, per_class=exp.train_per_class)
    norm: dict[str, Any] = dict(mean=data.mean, std=data.std)
    calib = fixed_batches(stratified_subset(train_half, min(exp.calib_images, len(train_half)), exp.arch_seed),
                          exp.eval_batch_size, device=device, **norm)
    valid = fixed_batches(stratified_subset(valid_half, min(exp.valid_images, len(valid_half)), exp.arch_seed),
                          exp.eval_batch_size, device=device, **norm)
    setup = SearchSetup(C=exp.C, N=exp.N, num_classes=data.num_classes, device=device, seed=seed,
                        calib=calib, valid=valid,
                        sample_batch=lambda n, s: random_batch(train_half, n, s, device=device, **norm))
    return Prepared(
        method=method_cls(cfg, setup), cfg=cfg, setup=setup, data=data,
        train_batches=Batches(train_half, cfg.batch_size, seed=seed, device=device, **norm),
        valid_batches=Batches(valid_half, cfg.batch_size, seed=seed + 7919, device=device, **norm),
        train_half=len(train_half), valid_half=len(valid_half),
    )


def _run(config, exp, method_name, seed, context, session, trial_dir) -> dict[str, Any]:
    started = time.time()
    p = prepare(exp, method_name, seed, config.get("overrides", {}).get(method_name, {}))
    method, cfg, data, train_batches, valid_batches = p.method, p.cfg, p.data, p.train_batches, p.valid_batches
    device = p.setup.device
    archs = [Arch.from_str(s) for s in context.archs]

    write_json(trial_dir / "config.json", {
        "method": method_name, "seed": seed, "budget": exp.budget,
        "experiment": exp.to_dict(), "method_config": config_to_dict(cfg),
        "arch_set": context.arch_set, "n_archs": len(archs), "metric": context.metric,
        "data": {"dataset": data.name, "source": data.source, "train_half": p.train_half,
                 "valid_half": p.valid_half, "calib": exp.calib_images, "valid": exp.valid_images},
        "device": device_name(device), **context.provenance, "host": socket.gethostname(),
    })

    history: list[dict[str, Any]] = []
    start_epoch = 0
    state = session.restore()
    if state is not None:
        method.load_state_dict(state["method"])
        train_batches.load_state_dict(state["train_batches"])
        valid_batches.load_state_dict(state["valid_batches"])
        torch.set_rng_state(state["torch_rng"])
        if state.get("cuda_rng") is not None and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["cuda_rng"])
        history, start_epoch = state["history"], state["epoch"]
        wall_before = state["wall_s"]
    else:
        wall_before = 0.0
    resumed_at = time.time()

    total = cfg.epochs
    scores: np.ndarray | None = None
    for epoch in range(start_epoch + 1, total + 1):
        t0 = time.time()
        metrics: dict[str, Any] = {"epoch": epoch, "epochs": total}
        metrics.update(method.train_epoch(train_batches, valid_batches))
        metrics["epoch_s"] = time.time() - t0
        if epoch == total or (exp.eval_every and epoch % exp.eval_every == 0):
            scores = method.score(archs)
            metrics.update(_ranking(scores, context))
        metrics["wall_s"] = wall_before + time.time() - resumed_at
        history.append(metrics)
        pd.DataFrame(history).to_csv(trial_dir / "history.csv", index=False)
        state = {
            "method": method.state_dict(), "train_batches": train_batches.state_dict(),
            "valid_batches": valid_batches.state_dict(), "torch_rng": torch.get_rng_state(),
            "cuda_rng": torch.cuda.get_rng_state_all() if device.type == "cuda" else None,
            "history": history, "epoch": epoch, "wall_s": metrics["wall_s"],
        }
        session.report(json_safe(metrics), state)

    if scores is None:  # no training epochs (baselines) or resumed after the last epoch
        scores = method.score(archs)
    torch.save({"method": method.state_dict(), "epoch": total}, trial_dir / FINAL_STATE)
    final = _finish(method, method_name, seed, cfg, exp, context, archs, scores, trial_dir)
    final.update({"epoch": total, "epochs": total, "done": True,
                  "wall_s": wall_before + time.time() - resumed_at, "total_s": time.time() - started})
    write_json(trial_dir / "result.json", json_safe(final))
    session.report(json_safe(final), None)
    return final


def _finish(method, method_name, seed, cfg, exp, context, archs, scores, trial_dir) -> dict[str, Any]:
    table = pd.DataFrame({"arch": context.archs, "score": scores, "unique": context.unique_mask})
    if context.truth is not None:
        table["truth"] = context.truth
    table.to_csv(trial_dir / "scores.csv", index=False)
    derived = method.derive()
    derived_truth = (context.truth_of_all or {}).get(derived.to_str())
    write_json(trial_dir / "derived.json", {
        "arch": derived.to_str(), "truth": derived_truth, "metric": context.metric,
        "params": count_params(derived, 16, 5, 10), "canonical": derived.canonical(),
    })
    extras = getattr(method, "extras", None)
    if callable(extras):
        write_json(trial_dir / "method.json", json_safe(extras()))
    result = {"method": method_name, "seed": seed, "derived_arch": derived.to_str(),
              "derived_truth": derived_truth, "derived_params": count_params(derived, 16, 5, 10),
              "n_archs": len(archs), "n_unique": int(sum(context.unique_mask))}
    result.update(_ranking(scores, context))
    return result


def _ranking(scores: np.ndarray, context: RunContext) -> dict[str, Any]:
    """Ranking metrics on all evaluation archs and on their benchmark-distinct subset."""
    from benchmarks.ranking import ranking_metrics

    if context.truth is None:
        return {}
    truth = np.asarray(context.truth, dtype=np.float64)
    mask = np.asarray(context.unique_mask, dtype=bool)
    out: dict[str, Any] = {}
    for prefix, sel in (("", slice(None)), ("unique_", mask)):
        try:
            metrics = ranking_metrics(np.asarray(scores)[sel], truth[sel])
        except ValueError as err:  # e.g. every score equal: the ranking is undefined, not a crash
            metrics = {k: math.nan for k in ("kendall_tau", "spearman", "p_at_top5", "tau_top10")}
            out[f"{prefix}ranking_note"] = str(err)
        out.update({f"{prefix}{k}": float(v) for k, v in metrics.items() if k != "n_archs"})
    return out


# --------------------------------------------------------------------------- Ray wiring


def ray_trainable(config: dict[str, Any], context: RunContext) -> None:
    """The Ray Tune function trainable (use with ``tune.with_parameters(..., context=...)``)."""
    run_trial(config, context, RaySession())


class RaySession:
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


# --------------------------------------------------------------------------- small helpers


def provenance() -> dict[str, Any]:
    """Code and package versions of the driver (the trial adds its device and host)."""
    import torchvision

    versions = {"python": platform.python_version(), "torch": torch.__version__,
                "torchvision": torchvision.__version__, "numpy": np.__version__, "pandas": pd.__version__}
    try:
        import ray

        versions["ray"] = ray.__version__
    except ImportError:  # pragma: no cover - ray is a dependency
        pass
    return {"versions": versions, "git_sha": _git_sha(), "argv": sys.argv}


def _git_sha() -> str | None:
    root = Path(__file__).resolve().parents[1]
    if not (root / ".git").exists() or shutil.which("git") is None:
        return None
    try:
        out = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5)
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    sha = out.stdout.strip() or None
    return f"{sha}-dirty" if sha and dirty.stdout.strip() else sha


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch threads {torch.get_num_threads()})"


def json_safe(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {str(k): json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    if isinstance(obj, (np.floating, np.integer)):
        return obj.item()
    if isinstance(obj, torch.Tensor):
        return obj.tolist()
    return obj


def write_json(path: Path, data: Any) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, default=str) + "\n")
    tmp.replace(path)


