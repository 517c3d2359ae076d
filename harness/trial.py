"""One search trial = one method x seed x resolved config: search, score, derive.

The config a trial gets is resolved once, by the driver (``trial_config``): the method's
budget preset, ``--epochs`` and ``--set`` overrides already applied. So ``config.json`` is
exactly what ran, and ``--resume`` (which replays the stored configs) never picks up a preset
edited in between. The epochs themselves run in ``harness.loop.run_epochs`` — the same loop,
checkpoints and sessions as the from-scratch trial; ``ray_trainable`` wires it to Tune.

Files written into the trial directory (``<output>/trials/<method>-seed<seed>/``):
``config.json`` (resolved configs + provenance), ``history.csv`` (one row per epoch),
``scores.csv`` (arch, score[, truth], unique), ``derived.json``, ``method.json`` (the
method's extras, if any), ``final_state.pt`` (for ``harness.score``), ``result.json`` (final
metrics; its presence means success) or ``error.txt`` (the reason a trial failed).
"""
from __future__ import annotations

import os
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np
import pandas as pd
import torch

from common.config import config_from_dict, config_to_dict
from harness.config import ExperimentConfig, method_config
from harness.faults import maybe_faulty
from harness.files import device_name, json_safe, select_device, write_json
from harness.loop import LocalSession, RaySession, Session, TrialInterrupted, run_epochs
from harness.progress import line_printer
from methods.base import SearchSetup
from methods.registry import get_method
from spaces.measure import MacMeter
from spaces.nb201 import Arch, count_params

FINAL_STATE = "final_state.pt"  # the searched method, kept with the trial's files (harness.score)

__all__ = ["RunContext", "trial_name", "trial_config", "prepare", "run_trial", "ray_trainable", "FINAL_STATE",
           "LocalSession", "TrialInterrupted"]


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


class Counted:
    """An iterable of ``(x, y)`` batches that counts the images drawn from it (every pass)."""

    def __init__(self, batches: Any) -> None:
        self.batches, self.images = batches, 0

    def __len__(self) -> int:
        return len(self.batches)

    def __iter__(self) -> Any:
        for x, y in self.batches:
            self.images += int(y.shape[0])
            yield x, y


def trial_name(method: str, seed: int) -> str:
    return f"{method}-seed{seed}"


def trial_config(exp: ExperimentConfig, method: str, seed: int,
                 overrides: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The one place a method config is resolved: preset, then ``--epochs``, then ``--set``."""
    cfg = method_config(get_method(method, exp.space), exp.budget, exp.epochs, overrides or {})
    return {"method": method, "seed": int(seed), "experiment": exp.to_dict(), "method_config": config_to_dict(cfg)}


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


def prepare(exp: ExperimentConfig, method_name: str, seed: int, resolved: Mapping[str, Any] | None = None,
            progress: Callable[[str], None] | None = None) -> Prepared:
    """Data, the fixed scoring batches and the method, exactly as a trial builds them.

    ``resolved`` is the method's resolved config (``trial_config(...)["method_config"]``); None
    takes the budget preset.
    """
    from harness.data import Batches, fixed_batches, load_dataset, random_batch, search_split, stratified_subset

    method_cls = get_method(method_name, exp.space)
    cfg = (config_from_dict(method_cls.Config, resolved) if resolved is not None
           else method_config(method_cls, exp.budget, exp.epochs, {}))
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
                        sample_batch=lambda n, s: random_batch(train_half, n, s, device=device, **norm),
                        progress=progress)
    # a method's per-epoch step budget (0 or absent: the whole half every epoch), on both halves
    cap = int(getattr(cfg, "epoch_images", 0) or 0)
    return Prepared(
        method=method_cls(cfg, setup), cfg=cfg, setup=setup, data=data,
        train_batches=Batches(train_half, cfg.batch_size, seed=seed, device=device, epoch_images=cap, **norm),
        valid_batches=Batches(valid_half, cfg.batch_size, seed=seed + 7919, device=device, epoch_images=cap, **norm),
        train_half=len(train_half), valid_half=len(valid_half),
    )


def run_trial(config: dict[str, Any], context: RunContext, session: Session) -> dict[str, Any]:
    """Run one trial to the end (resuming from the session's checkpoint if it has one).

    ``config`` is ``trial_config(...)``. A failure writes ``error.txt`` (its reason) into the
    trial directory and re-raises.
    """
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


def _run(config: dict[str, Any], exp: ExperimentConfig, method_name: str, seed: int, context: RunContext,
         session: Session, trial_dir: Path) -> dict[str, Any]:
    started = time.time()
    p = prepare(exp, method_name, seed, config["method_config"], progress=line_printer(trial_dir.name))
    method, cfg = p.method, p.cfg
    archs = [Arch.from_str(s) for s in context.archs]  # empty in the DARTS space (nothing to rank)
    write_json(trial_dir / "config.json", {
        "method": method_name, "seed": seed, "budget": exp.budget,
        "experiment": exp.to_dict(), "method_config": config_to_dict(cfg),
        "arch_set": context.arch_set, "n_archs": len(archs), "metric": context.metric,
        "data": {"dataset": p.data.name, "source": p.data.source, "train_half": p.train_half,
                 "valid_half": p.valid_half, "calib": exp.calib_images, "valid": exp.valid_images},
        "device": device_name(p.setup.device), **context.provenance, "host": socket.gethostname(),
    })
    last: dict[str, np.ndarray] = {}

    def epoch(k: int) -> dict[str, Any]:
        t0, c0 = time.time(), time.process_time()
        # the compute an epoch spends: images drawn from each half, this process's CPU seconds, and
        # the multiply-adds processed (every conv/linear forward, x3 where a backward follows) —
        # the measure the budgets equalise (docs/results.md, "Equal compute")
        train = Counted(maybe_faulty(p.train_batches, trial_dir, k))  # (+ the fault tests' worker kill)
        valid = Counted(p.valid_batches)
        with MacMeter() as meter:
            metrics = dict(method.train_epoch(train, valid))
        metrics.update(epoch_s=time.time() - t0, cpu_s=time.process_time() - c0, train_images=train.images,
                       valid_images=valid.images, search_macs=meter.total)
        if archs and (k == cfg.epochs or (exp.eval_every and k % exp.eval_every == 0)):
            t1, c1 = time.time(), time.process_time()
            with MacMeter() as rank_meter:
                last["scores"] = method.score(archs)
            metrics.update(_ranking(last["scores"], context))
            # what ranking cost (BN recalibration + validation per arch), kept apart from the search's compute
            metrics.update(rank_s=time.time() - t1, rank_cpu_s=time.process_time() - c1, rank_macs=rank_meter.total)
        return metrics

    progress = run_epochs(session, trial_dir, cfg.epochs,
                          {"method": method, "train_batches": p.train_batches, "valid_batches": p.valid_batches},
                          epoch)
    torch.save({"method": method.state_dict(), "epoch": cfg.epochs}, trial_dir / FINAL_STATE)
    if exp.space == "darts":
        final = _finish_darts(method, method_name, seed, p.setup.num_classes, trial_dir)
    else:
        # no training epochs (training-free methods), or resumed after the last epoch
        scores = last["scores"] if "scores" in last else method.score(archs)
        final = _finish(method, method_name, seed, exp, p.setup.num_classes, context, archs, scores, trial_dir)
    # when and where it ran: a sweep's trials overlap in time on a cluster (or on logical GPUs)
    final.update({"epoch": cfg.epochs, "epochs": cfg.epochs, "done": True, "wall_s": progress.wall_s(),
                  "total_s": time.time() - started, "started_at": started, "finished_at": time.time(),
                  "device": device_name(p.setup.device), "host": socket.gethostname(), "pid": os.getpid(),
                  "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),  # Ray's GPU ids
                  **_search_compute(progress.history)})
    write_json(trial_dir / "result.json", json_safe(final))
    session.report(json_safe(final), None)
    return final


def _search_compute(history: list[dict[str, Any]]) -> dict[str, Any]:
    """The whole search's compute, summed over its epochs (ranking evaluations excluded)."""
    def total(key: str) -> float | None:
        values = [float(h[key]) for h in history if h.get(key) is not None and np.isfinite(float(h[key]))]
        return sum(values) if values else None

    return {"search_macs": total("search_macs"), "search_cpu_s": total("cpu_s"),
            "images_seen": (total("train_images") or 0) + (total("valid_images") or 0) if history else None}


def _finish(method: Any, method_name: str, seed: int, exp: ExperimentConfig, num_classes: int, context: RunContext,
            archs: list[Arch], scores: np.ndarray, trial_dir: Path) -> dict[str, Any]:
    table = pd.DataFrame({"arch": context.archs, "score": scores, "unique": context.unique_mask})
    if context.truth is not None:
        table["truth"] = context.truth
    table.to_csv(trial_dir / "scores.csv", index=False)
    with MacMeter() as meter:  # deriving can be a search of its own (SPOS's evolution)
        derived = method.derive()
    derived_truth = (context.truth_of_all or {}).get(derived.to_str())
    # the derived arch's size at this run's width, depth and classes (the benchmark's own size,
    # C=16 N=5, is what `params` ranks by; both are recorded)
    params = count_params(derived, exp.C, exp.N, num_classes)
    write_json(trial_dir / "derived.json", {
        "arch": derived.to_str(), "truth": derived_truth, "metric": context.metric, "params": params,
        "benchmark_params": count_params(derived, 16, 5, num_classes), "canonical": derived.canonical(),
    })
    extras = getattr(method, "extras", None)
    if callable(extras):
        write_json(trial_dir / "method.json", json_safe(extras()))
    result = {"method": method_name, "seed": seed, "derived_arch": derived.to_str(),
              "derived_truth": derived_truth, "derived_params": params,
              "n_archs": len(archs), "n_unique": int(sum(context.unique_mask)), "derive_macs": meter.total}
    result.update(_ranking(scores, context))
    return result


def _finish_darts(method: Any, method_name: str, seed: int, num_classes: int, trial_dir: Path) -> dict[str, Any]:
    """A DARTS-space search ends with its genotype and that genotype's size at the evaluation
    settings the seeds report (CIFAR: C=36, 20 cells; ImageNet mobile: C=48, 14 cells, 224 px)."""
    from spaces.darts import count_macs, count_params, count_params_imagenet

    genotype = method.derive()
    sizes = {
        "params": count_params(genotype, C=36, layers=20, num_classes=num_classes),
        "macs": count_macs(genotype, C=36, layers=20, num_classes=num_classes, resolution=32, network="cifar"),
        "imagenet_params": count_params_imagenet(genotype, C=48, layers=14, num_classes=1000),
        "imagenet_macs": count_macs(genotype, C=48, layers=14, num_classes=1000, resolution=224, network="imagenet"),
    }
    write_json(trial_dir / "derived.json", {
        "space": "darts", "genotype": str(genotype), **sizes,
        "sizes_at": "params/macs: CIFAR network C=36, 20 cells, 32 px, auxiliary head excluded; imagenet_*: "
                    "mobile network C=48, 14 cells, 224 px, 1000 classes",
    })
    extras = getattr(method, "extras", None)
    if callable(extras):
        write_json(trial_dir / "method.json", json_safe(extras()))
    return {"method": method_name, "seed": seed, "derived_arch": str(genotype), "derived_params": sizes["params"],
            "derived_macs": sizes["macs"], "imagenet_params": sizes["imagenet_params"],
            "imagenet_macs": sizes["imagenet_macs"]}


UNDEFINED_RANKING = "the ranking is undefined"


def _ranking(scores: np.ndarray, context: RunContext) -> dict[str, Any]:
    """Ranking metrics on all evaluation archs and on their benchmark-distinct subset.

    One case is expected and becomes NaN with a note: scores that are all equal (a method
    that cannot tell the archs apart). Any other error (NaN scores, a length mismatch) is a
    bug and fails the trial.
    """
    from benchmarks.ranking import ranking_metrics

    if context.truth is None:
        return {}
    truth = np.asarray(context.truth, dtype=np.float64)
    mask = np.asarray(context.unique_mask, dtype=bool)
    values = np.asarray(scores, dtype=np.float64)
    out: dict[str, Any] = {}
    for prefix, sel in (("", slice(None)), ("unique_", mask)):
        part = values[sel]
        if part.size >= 2 and np.isfinite(part).all() and np.ptp(part) == 0:
            metrics = {k: np.nan for k in ("kendall_tau", "spearman", "p_at_top5", "tau_top10")}
            out[f"{prefix}ranking_note"] = f"every score is equal: {UNDEFINED_RANKING}"
        else:
            metrics = ranking_metrics(part, truth[sel])
        out.update({f"{prefix}{k}": float(v) for k, v in metrics.items() if k != "n_archs"})
    return out


def ray_trainable(config: dict[str, Any], context: RunContext) -> None:
    """The Ray Tune function trainable (use with ``tune.with_parameters(..., context=...)``)."""
    run_trial(config, context, RaySession())
