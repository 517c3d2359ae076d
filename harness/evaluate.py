"""``python -m harness.evaluate``: train architectures from scratch as Ray Tune trials.

    python -m harness.evaluate --arch '|nor_conv_3x3~0|+|...|' --dataset cifar10 --data-root PATH
    python -m harness.evaluate --from runs/study --top-k 3 --epochs 50 --seeds 0-2
    python -m harness.evaluate --dataset imagenet --data-root /data/imagenet --arch '...' --gpus-per-trial 1
    python -m harness.evaluate --output runs/eval --resume

Why trials: a from-scratch run is hours per arch on a GPU, so each arch x seed is one Tune
trial that checkpoints every epoch (``--resume`` continues from the last one) and is scheduled
on whatever GPUs the cluster has. The trial logic (``run_evaluation_trial``) talks to a
session, exactly like the search trial in ``harness.trial``: ``RaySession`` under Tune,
``LocalSession`` in-process (tests).

Files: ``<output>/evaluation/<trial>/`` (config.json, history.csv, result.json or error.txt),
``<output>/evaluation.csv`` (one row per arch x seed), ``<output>/evaluation.md`` and, for a
search run (``--from RUN_DIR`` or ``harness.compare --retrain-top``), an ``## Evaluation``
section in ``RUN_DIR/report.md`` (replaced, not duplicated, when the evaluation is rerun).

Bad input exits 2 with one ``error: ...`` line; a finished evaluation exits 0 when every trial
succeeded and 1 otherwise.
"""
from __future__ import annotations

import argparse
import json
import logging
import math
import os
import shlex
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
import pandas as pd
import torch

from harness.config import UsageError, parse_seeds
from harness.progress import progress_callback
from harness.trial import RaySession, Session, TrialInterrupted, device_name, json_safe, \
    write_json, provenance, select_device

EVAL_DIR = "evaluation"            # trial directories: <output>/evaluation/<trial>/
TUNE_DIR = "tune-evaluate"         # Tune's experiment folder (beside a search run's tune/)
PLAN_FILE = "evaluate.json"        # what --resume reads back
DATASETS = ("cifar10", "cifar100", "synthetic", "imagenet")
EVAL_COLUMNS = ["arch", "seed", "dataset", "epochs", "test_top1", "test_top5", "params", "flops", "truth",
                "wall_s", "status", "source", "recipe", "C", "N", "train_images", "test_images", "train_loss",
                "test_loss", "error"]
_OP_CODES = {"none": "x", "skip_connect": "s", "nor_conv_1x1": "1", "nor_conv_3x3": "3", "avg_pool_3x3": "p"}
_SECTION = "## Evaluation"

__all__ = ["EvalJob", "EvalContext", "EvalPlan", "run_evaluation_trial", "eval_trial_name", "archs_from_run",
           "check_retrain_args", "retrain_after_search", "run_plan", "collect_evaluation", "evaluation_markdown",
           "upsert_report_section", "refresh_run_report", "main"]


# --------------------------------------------------------------------------- configs


@dataclass(frozen=True)
class EvalJob:
    """The data side of an evaluation (the training side is a ``benchmarks.train.Recipe``).

    ``train_images`` / ``test_images`` take a stratified subset (seeded by ``subset_seed``, the
    same for every arch and seed so the comparison is fair); ``None`` = the whole split, as the
    NB201 recipe trains (50k CIFAR training images, tested on the 10k test images).
    """

    dataset: str = "cifar10"
    data_root: str | None = None
    cache_dir: str | None = None
    download: bool = True
    train_images: int | None = None
    test_images: int | None = None
    subset_seed: int = 0
    synthetic_train: int = 1000
    synthetic_test: int = 200
    device: str = "auto"            # auto | cpu | cuda (inside each trial)
    threads: int | None = None      # torch CPU threads of a trial (None: torch's default)

    def __post_init__(self) -> None:
        if self.dataset not in DATASETS:
            raise ValueError(f"unknown dataset {self.dataset!r}; datasets: {', '.join(DATASETS)}")
        for name in ("train_images", "test_images", "threads"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"{name} must be >= 1, got {value}")
        if self.device not in ("auto", "cpu", "cuda"):
            raise ValueError(f"device must be auto, cpu or cuda, got {self.device!r}")

    def to_dict(self) -> dict[str, Any]:
        from methods.base import config_to_dict

        return config_to_dict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "EvalJob":
        from methods.base import config_from_dict

        return config_from_dict(cls, data)


@dataclass
class EvalContext:
    """Shared by every evaluation trial (put in the object store once by ``tune.with_parameters``)."""

    output: str                                   # absolute output directory
    truth: dict[str, float] | None = None         # ground truth of the evaluated archs
    metric: str | None = None
    benchmark: str | None = None
    sources: dict[str, str] = field(default_factory=dict)   # arch -> where it came from
    provenance: dict[str, Any] = field(default_factory=dict)


def eval_trial_name(arch: str, seed: int) -> str:
    """``nb201-3_3p_s3s-seed0``: one character per edge (x none, s skip, 1/3 conv, p pool), one
    group per node — readable, unique per arch, safe as a folder name."""
    from spaces.nb201 import Arch

    ops = Arch.from_str(arch).ops
    groups = ["".join(_OP_CODES[o] for o in ops[0:1]), "".join(_OP_CODES[o] for o in ops[1:3]),
              "".join(_OP_CODES[o] for o in ops[3:6])]
    return f"nb201-{'_'.join(groups)}-seed{int(seed)}"


# --------------------------------------------------------------------------- data of one trial


class _InMemoryData:
    """CIFAR / synthetic through ``harness.data``: uint8 tensors on the device, crop + flip there."""

    def __init__(self, job: EvalJob, r: Any, seed: int, device: torch.device) -> None:
        from benchmarks.train import drop_last_for
        from harness.data import Batches, fixed_batches, load_dataset, stratified_subset

        data = load_dataset(job.dataset, job.data_root, cache_dir=job.cache_dir, download=job.download,
                            synthetic_train=job.synthetic_train, synthetic_test=job.synthetic_test)
        check_recipe_fits(r, data.train.images.shape[-1])
        train, test = data.train, data.test
        if job.train_images is not None and job.train_images < len(train):
            train = stratified_subset(train, job.train_images, job.subset_seed)
        if job.test_images is not None and job.test_images < len(test):
            test = stratified_subset(test, job.test_images, job.subset_seed)
        norm = dict(mean=data.mean, std=data.std)
        self.batches = Batches(train, r.batch_size, shuffle=True, augment=True,
                               drop_last=drop_last_for(len(train), r.batch_size), seed=seed, device=device, **norm)
        self._test = fixed_batches(test, r.eval_batch_size, device=device, **norm)
        self.num_classes = data.num_classes
        self.n_train, self.n_test = len(train), len(test)
        self.source = data.source
        self.steps_per_epoch = len(self.batches)

    def train(self, epoch: int) -> Iterable:
        return self.batches

    def test(self) -> Iterable:
        return self._test

    def state_dict(self) -> dict:
        return {"batches": self.batches.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.batches.load_state_dict(state["batches"])


class _StreamedData:
    """ImageNet-style ImageFolder trees, streamed (``benchmarks.train.ImageNetData``).

    Its randomness is a function of (seed, epoch), so there is no state to checkpoint.
    """

    def __init__(self, job: EvalJob, r: Any, seed: int, device: torch.device) -> None:
        from benchmarks.train import ImageNetData

        if job.data_root is None:
            raise ValueError("ImageNet evaluation needs --data-root (an ImageFolder tree with train/ and val/)")
        self.data = ImageNetData(job.data_root, r, seed=seed, device=device, train_images=job.train_images,
                                 val_images=job.test_images, subset_seed=job.subset_seed)
        self.num_classes = self.data.num_classes
        self.n_train, self.n_test = len(self.data.train_set), len(self.data.val_set)
        self.source = self.data.source
        self.steps_per_epoch = self.data.steps_per_epoch
        self.train, self.test = self.data.train, self.data.test

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass


def check_recipe_fits(r: Any, image_size: int) -> None:
    """In-memory data is trained at its own size with pad-4 crops: refuse recipes that assume otherwise."""
    from benchmarks.train import RecipeError

    if r.augment != "crop_flip":
        raise RecipeError(f"recipe augment {r.augment!r} needs a streamed ImageFolder dataset (--dataset "
                          "imagenet); CIFAR-sized data uses crop_flip")
    if r.image_size != image_size:
        raise RecipeError(f"recipe image_size {r.image_size} does not match the data's {image_size}x{image_size} "
                          f"images; pass --set image_size={image_size}")


def _build_data(job: EvalJob, r: Any, seed: int, device: torch.device):
    return _StreamedData(job, r, seed, device) if job.dataset == "imagenet" else _InMemoryData(job, r, seed, device)


# --------------------------------------------------------------------------- the trial


def run_evaluation_trial(config: dict[str, Any], context: EvalContext, session: Session) -> dict[str, Any]:
    """Train one arch x seed to the end (resuming from the session's checkpoint if it has one).

    ``config`` = ``{"arch": NB201 string, "seed": int, "job": EvalJob dict, "recipe": Recipe dict}``.
    A failure writes ``error.txt`` (its reason) into the trial directory and re-raises.
    """
    arch, seed = str(config["arch"]), int(config["seed"])
    trial_dir = Path(context.output) / EVAL_DIR / eval_trial_name(arch, seed)
    trial_dir.mkdir(parents=True, exist_ok=True)
    (trial_dir / "error.txt").unlink(missing_ok=True)
    threads = torch.get_num_threads()
    try:
        return _evaluate(config, arch, seed, context, session, trial_dir)
    except TrialInterrupted:
        raise
    except Exception as err:
        (trial_dir / "error.txt").write_text(f"{type(err).__name__}: {err}\n")
        raise
    finally:  # an in-process trial must not change the caller's thread count
        torch.set_num_threads(threads)


def _evaluate(config, arch_str, seed, context, session, trial_dir) -> dict[str, Any]:
    from benchmarks.train import Recipe, Trainer, build_nb201, count_macs, count_parameters
    from spaces.nb201 import Arch

    started = time.time()
    job, r = EvalJob.from_dict(config["job"]), Recipe.from_dict(config["recipe"])
    arch = Arch.from_str(arch_str)
    device = select_device(job.device)
    if job.threads and device.type == "cpu":
        # One thread per reserved CPU: on a shared machine extra threads oversubscribe the
        # cores and run several times slower, not faster.
        torch.set_num_threads(job.threads)
    data = _build_data(job, r, seed, device)
    torch.manual_seed(seed)  # the model's initial weights: a function of the seed alone
    model = build_nb201(arch, r, data.num_classes)
    params, flops = count_parameters(model), count_macs(model, r.image_size, "cpu")
    trainer = Trainer(model, r, device, data.steps_per_epoch)
    truth = (context.truth or {}).get(arch_str)
    write_json(trial_dir / "config.json", {
        "arch": arch_str, "seed": seed, "job": job.to_dict(), "recipe": r.to_dict(),
        "source": context.sources.get(arch_str), "truth": truth, "metric": context.metric,
        "benchmark": context.benchmark, "params": params, "flops": flops,
        "data": {"source": data.source, "train_images": data.n_train, "test_images": data.n_test,
                 "num_classes": data.num_classes, "steps_per_epoch": data.steps_per_epoch},
        "device": device_name(device), "bf16_autocast": trainer.amp, "channels_last": trainer.channels_last,
        **context.provenance,
    })

    history: list[dict[str, Any]] = []
    start_epoch, wall_before = 0, 0.0
    state = session.restore()
    if state is not None:
        trainer.load_state_dict(state["trainer"])
        data.load_state_dict(state["data"])
        torch.set_rng_state(state["torch_rng"])
        if state.get("cuda_rng") is not None and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["cuda_rng"])
        history, start_epoch, wall_before = state["history"], int(state["epoch"]), float(state["wall_s"])
    resumed_at = time.time()

    for epoch in range(start_epoch + 1, r.epochs + 1):
        t0 = time.time()
        metrics: dict[str, Any] = {"epoch": epoch, "epochs": r.epochs}
        metrics.update(trainer.train_epoch(epoch, data.train(epoch)))
        if epoch == r.epochs or epoch % r.eval_every == 0:
            metrics.update(trainer.evaluate(data.test()))
        metrics["epoch_s"] = time.time() - t0
        metrics["wall_s"] = wall_before + time.time() - resumed_at
        history.append(metrics)
        pd.DataFrame(history).to_csv(trial_dir / "history.csv", index=False)
        state = {"trainer": trainer.state_dict(), "data": data.state_dict(), "torch_rng": torch.get_rng_state(),
                 "cuda_rng": torch.cuda.get_rng_state_all() if device.type == "cuda" else None,
                 "history": history, "epoch": epoch, "wall_s": metrics["wall_s"]}
        session.report(json_safe(metrics), state)

    last = history[-1]
    final = {
        "arch": arch_str, "seed": seed, "dataset": job.dataset, "epochs": r.epochs,
        "test_top1": last.get("test_top1"), "test_top5": last.get("test_top5"), "test_loss": last.get("test_loss"),
        "train_loss": last.get("train_loss"), "params": params, "flops": flops, "truth": truth,
        "wall_s": wall_before + time.time() - resumed_at, "total_s": time.time() - started,
        "source": context.sources.get(arch_str), "recipe": r.name, "C": r.C, "N": r.N,
        "train_images": data.n_train, "test_images": data.n_test, "epoch": r.epochs, "done": True,
    }
    write_json(trial_dir / "result.json", json_safe(final))
    session.report(json_safe(final), None)
    return final


def ray_eval_trainable(config: dict[str, Any], context: EvalContext) -> None:
    """The Ray Tune function trainable (use with ``tune.with_parameters(..., context=...)``)."""
    run_evaluation_trial(config, context, RaySession())


# --------------------------------------------------------------------------- the plan


@dataclass
class EvalPlan:
    """Everything a run needs; saved as ``<output>/evaluate.json`` so ``--resume`` can rebuild it."""

    archs: list[str]
    seeds: list[int]
    job: EvalJob
    recipe: Any                       # benchmarks.train.Recipe
    output: Path
    context: EvalContext
    from_run: Path | None = None
    command: str = ""

    def expected(self) -> list[tuple[str, int]]:
        return [(a, s) for a in self.archs for s in self.seeds]

    def to_dict(self) -> dict[str, Any]:
        return {"command": self.command, "archs": self.archs, "seeds": self.seeds, "job": self.job.to_dict(),
                "recipe": self.recipe.to_dict(), "output": str(self.output),
                "from_run": str(self.from_run) if self.from_run else None,
                "context": {"truth": self.context.truth, "metric": self.context.metric,
                            "benchmark": self.context.benchmark, "sources": self.context.sources,
                            "provenance": self.context.provenance}}

    @classmethod
    def from_dict(cls, record: Mapping[str, Any], output: Path) -> "EvalPlan":
        from benchmarks.train import Recipe

        ctx = record["context"]
        context = EvalContext(output=str(output), truth=ctx.get("truth"), metric=ctx.get("metric"),
                              benchmark=ctx.get("benchmark"), sources=ctx.get("sources") or {},
                              provenance=ctx.get("provenance") or {})
        return cls(list(record["archs"]), [int(s) for s in record["seeds"]], EvalJob.from_dict(record["job"]),
                   Recipe.from_dict(record["recipe"]), output, context,
                   Path(record["from_run"]) if record.get("from_run") else None, record.get("command", ""))


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None


def archs_from_run(run_dir: str | Path, top_k: int = 0) -> dict[str, str]:
    """The archs a search run picked: every trial's derived arch, plus with ``top_k > 0`` the
    ``top_k`` best-scored archs of each trial's ``scores.csv``. Deduplicated, in trial order;
    maps arch -> where it came from (e.g. ``spos-seed0 derived; nap-seed0 top-2``)."""
    from spaces.nb201 import Arch

    run_dir = Path(run_dir)
    trials = sorted(p for p in (run_dir / "trials").glob("*") if p.is_dir()) if (run_dir / "trials").is_dir() else []
    if not trials:
        raise UsageError(f"{run_dir} has no trials/ folder with trial directories; pass the --output directory "
                         "of a harness.compare run")
    sources: dict[str, list[str]] = {}

    def add(arch: str, where: str) -> None:
        try:
            arch = Arch.from_str(arch).to_str()
        except ValueError as err:
            raise UsageError(f"{where}: {err}") from None
        sources.setdefault(arch, []).append(where)

    for trial in trials:
        derived = _read_json(trial / "derived.json")
        if derived and derived.get("arch"):
            add(derived["arch"], f"{trial.name} derived")
        if top_k > 0 and (trial / "scores.csv").exists():
            scores = pd.read_csv(trial / "scores.csv")
            if {"arch", "score"} <= set(scores.columns):
                ranked = scores.dropna(subset=["score"]).sort_values("score", ascending=False, kind="stable")
                for rank, arch in enumerate(ranked["arch"].head(top_k), start=1):
                    add(arch, f"{trial.name} top-{rank}")
    if not sources:
        raise UsageError(f"no finished trial in {run_dir} (no trials/*/derived.json); finish the search first "
                         "(harness.compare --output RUN_DIR --resume)")
    return {arch: "; ".join(where) for arch, where in sources.items()}


def _truth_for(archs: Sequence[str], benchmark: str | None, metric: str | None, dataset: str
               ) -> tuple[dict[str, float] | None, str | None]:
    if not benchmark:
        return None, None
    from benchmarks.ground_truth import load_ground_truth

    try:
        gt = load_ground_truth(benchmark)
    except (OSError, ValueError, KeyError, ImportError) as err:
        message = err.args[0] if isinstance(err, KeyError) and err.args else err
        raise UsageError(f"cannot load benchmark {benchmark}: {message}") from None
    try:
        column = metric or gt.metric_for("cifar10" if dataset == "synthetic" else dataset)
        column = gt.metric_for(column)
    except ValueError as err:
        raise UsageError(f"benchmark {benchmark}: {err}; pass --metric COLUMN") from None
    missing = [a for a in archs if a not in gt]
    if missing:
        raise UsageError(f"benchmark {benchmark} lacks {len(missing)} of the {len(archs)} archs (e.g. {missing[0]}); "
                         "pass a table covering the NB201 cells, or drop --benchmark")
    return dict(zip(archs, (float(v) for v in gt.values(list(archs), column)))), column


def build_plan(*, archs: Mapping[str, str], seeds: Sequence[int], dataset: str, recipe_name: str | None,
               recipe_overrides: Mapping[str, Any], output: Path, job_fields: Mapping[str, Any],
               benchmark: str | None = None, metric: str | None = None, from_run: Path | None = None,
               command: str = "") -> EvalPlan:
    """Validate and resolve everything before any trial starts (bad input -> ``UsageError``)."""
    from benchmarks.train import RecipeError, check_dataset, recipe

    if dataset not in DATASETS:
        raise UsageError(f"unknown dataset {dataset!r}; datasets: {', '.join(DATASETS)}")
    name = recipe_name or ("imagenet" if dataset == "imagenet" else "nb201")
    try:
        r = recipe(name, **recipe_overrides)
        check_dataset(r, dataset)
    except RecipeError as err:
        raise UsageError(str(err)) from None
    if not archs:
        raise UsageError("no architecture to evaluate: give --arch ARCH (NB201 strings) or --from RUN_DIR")
    if dataset == "imagenet" and not job_fields.get("data_root"):
        raise UsageError("--dataset imagenet needs --data-root ROOT (an ImageFolder tree with train/ and val/)")
    try:
        job = EvalJob(dataset=dataset, **job_fields)
    except (ValueError, TypeError) as err:
        raise UsageError(str(err)) from None
    arch_list = list(archs)
    truth, column = _truth_for(arch_list, benchmark, metric, dataset)
    context = EvalContext(output=str(output), truth=truth, metric=column, benchmark=benchmark,
                          sources=dict(archs), provenance=provenance())
    return EvalPlan(arch_list, list(seeds), job, r, output, context, from_run, command)


def check_data(plan: EvalPlan) -> str:
    """Open the data once on the driver: a bad root or a recipe that does not fit fails here (exit 2)."""
    from benchmarks.train import RecipeError, check_imagenet_root
    from harness.data import DataError, load_dataset

    job, r = plan.job, plan.recipe
    try:
        if job.dataset == "imagenet":
            if job.data_root is None:
                raise UsageError("--dataset imagenet needs --data-root PATH (an ImageFolder tree with train/ and val/)")
            classes = check_imagenet_root(job.data_root)
            return f"imagenet: ImageFolder {job.data_root} ({len(classes)} classes)"
        data = load_dataset(job.dataset, job.data_root, cache_dir=job.cache_dir, download=job.download,
                            synthetic_train=job.synthetic_train, synthetic_test=job.synthetic_test)
        check_recipe_fits(r, data.train.images.shape[-1])
    except (DataError, RecipeError) as err:
        raise UsageError(str(err)) from None
    n_train = min(job.train_images or len(data.train), len(data.train))
    n_test = min(job.test_images or len(data.test), len(data.test))
    return f"{data.name}: training on {n_train} / testing on {n_test} images ({data.source})"


# --------------------------------------------------------------------------- Ray


def _done_line(result: dict) -> str:
    truth = result.get("truth")
    extra = f" (ground truth {truth:.2f})" if isinstance(truth, (int, float)) else ""
    return f"finished: test top-1 {result.get('test_top1'):.2f} top-5 {result.get('test_top5'):.2f}{extra}"


def _tune_trial_name(trial) -> str:
    return eval_trial_name(trial.config["arch"], trial.config["seed"])


def run_plan(plan: EvalPlan, *, resume: bool = False, cpus_per_trial: float = 1.0, gpus_per_trial: float = 0.0,
             address: str | None = None, num_gpus: int | None = None, max_failures: int = 0
             ) -> dict[tuple[str, int], str]:
    """Run (or continue) the plan's trials with Ray Tune; return {(arch, seed): error line} of failures.

    Reuses an already-initialised Ray (``harness.compare`` after its search); otherwise starts
    one (``address`` for a cluster, ``num_gpus`` logical GPUs locally) and shuts it down after.
    """
    import ray
    from ray import tune

    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    started = False
    if not ray.is_initialized():
        kwargs: dict[str, Any] = {"include_dashboard": False, "logging_level": logging.WARNING, "log_to_driver": False}
        if address:
            kwargs["address"] = address
        elif num_gpus is not None:
            kwargs["num_gpus"] = num_gpus
        ray.init(**kwargs)
        started = True
    try:
        available = ray.cluster_resources()
        if gpus_per_trial > available.get("GPU", 0):
            raise UsageError(f"--gpus-per-trial {gpus_per_trial:g} but the Ray cluster has {available.get('GPU', 0):g} "
                             "GPUs; run on a GPU machine, or declare logical GPUs with --num-gpus N")
        if cpus_per_trial > available.get("CPU", 0):
            raise UsageError(f"--cpus-per-trial {cpus_per_trial:g} but the Ray cluster has {available.get('CPU', 0):g} "
                             "CPUs; lower --cpus-per-trial")
        trainable = tune.with_resources(tune.with_parameters(ray_eval_trainable, context=plan.context),
                                        {"cpu": cpus_per_trial, "gpu": gpus_per_trial})
        if resume:
            tuner = tune.Tuner.restore(str(plan.output / TUNE_DIR), trainable=trainable, resume_unfinished=True,
                                       resume_errored=True)
        else:
            tuner = tune.Tuner(
                trainable,
                param_space={"arch": tune.grid_search(plan.archs), "seed": tune.grid_search(plan.seeds),
                             "job": plan.job.to_dict(), "recipe": plan.recipe.to_dict()},
                tune_config=tune.TuneConfig(trial_name_creator=_tune_trial_name,
                                            trial_dirname_creator=_tune_trial_name),
                run_config=tune.RunConfig(
                    name=TUNE_DIR, storage_path=str(plan.output), verbose=0, callbacks=[progress_callback(
                        lambda c: eval_trial_name(c["arch"], c["seed"]), _done_line,
                        ("train_loss", "train_acc", "test_top1", "lr"), width=28)],
                    failure_config=tune.FailureConfig(max_failures=max_failures),
                    checkpoint_config=tune.CheckpointConfig(num_to_keep=2)),
            )
        results = tuner.fit()
    finally:
        if started:
            ray.shutdown()
    errors: dict[tuple[str, int], str] = {}
    for result in (results[i] for i in range(len(results))):
        if result.error is not None and result.config:
            lines = [ln for ln in str(result.error).strip().splitlines() if ln.strip()]
            errors[(result.config["arch"], int(result.config["seed"]))] = lines[-1][:500] if lines else "error"
    return errors


# --------------------------------------------------------------------------- results and report


def collect_evaluation(plan: EvalPlan, errors: Mapping[tuple[str, int], str] | None = None) -> pd.DataFrame:
    """One row per arch x seed of the plan, from the trial directories (no Ray needed)."""
    rows = []
    for arch, seed in plan.expected():
        trial_dir = plan.output / EVAL_DIR / eval_trial_name(arch, seed)
        row: dict[str, Any] = {"arch": arch, "seed": seed, "dataset": plan.job.dataset,
                               "source": plan.context.sources.get(arch), "recipe": plan.recipe.name,
                               "C": plan.recipe.C, "N": plan.recipe.N,
                               "truth": (plan.context.truth or {}).get(arch)}
        result = _read_json(trial_dir / "result.json")
        if result is not None:
            row.update({k: result.get(k) for k in EVAL_COLUMNS if k in result})
            row["status"] = "ok"
        elif (trial_dir / "error.txt").exists():
            row.update(status="failed", error=(trial_dir / "error.txt").read_text().strip().splitlines()[-1][:500])
        elif errors and (arch, seed) in errors:
            row.update(status="failed", error=errors[(arch, seed)])
        else:
            row.update(status="incomplete", error="no result (interrupted? rerun with --resume)")
        if result is None and (trial_dir / "history.csv").exists():
            history = pd.read_csv(trial_dir / "history.csv")
            if len(history):
                row["epochs"] = int(history["epoch"].iloc[-1])
                row["wall_s"] = float(history["wall_s"].iloc[-1])
        rows.append(row)
    frame = pd.DataFrame(rows)
    for col in EVAL_COLUMNS:
        if col not in frame:
            frame[col] = np.nan if col not in ("error", "status", "source") else ""
    return frame[EVAL_COLUMNS]


def _rank_correlation(frame: pd.DataFrame) -> tuple[float | None, str]:
    """Kendall tau of mean test top-1 per arch against the ground truth, or why there is none."""
    from benchmarks.ranking import kendall_tau

    ok = frame[(frame["status"] == "ok") & frame["truth"].notna() & frame["test_top1"].notna()]
    per_arch = ok.groupby("arch").agg(test_top1=("test_top1", "mean"), truth=("truth", "first"))
    if len(per_arch) < 2:
        return None, "needs at least 2 finished archs with ground truth"
    try:
        return kendall_tau(per_arch["test_top1"], per_arch["truth"]), f"over {len(per_arch)} archs"
    except ValueError as err:
        return None, str(err)


def evaluation_markdown(plan: EvalPlan, frame: pd.DataFrame) -> str:
    """The ``## Evaluation`` section: setup, one row per arch (mean ± std over seeds), per trial."""
    from harness.report import _markdown_table

    r, job = plan.recipe, plan.job
    subset = ", ".join(f"{k} {v}" for k, v in (("train images", job.train_images), ("test images", job.test_images)) if v)
    lines = [_SECTION, "",
             f"- from-scratch training, recipe `{r.name}`: {r.epochs} epochs, C={r.C}, N={r.N}, batch {r.batch_size}, "
             f"lr {r.lr:g}, weight decay {r.weight_decay:g}{', label smoothing %g' % r.label_smoothing if r.label_smoothing else ''}",
             f"- dataset: {job.dataset}{' (' + subset + ')' if subset else ' (full splits)'}; seeds: {plan.seeds}",
             f"- ground truth: {plan.context.benchmark or 'none'} ({plan.context.metric or '-'})",
             f"- files: `evaluation.csv`, `{EVAL_DIR}/<trial>/history.csv`"]
    if plan.command:
        lines.append(f"- command: `{plan.command}`")
    tau, note = _rank_correlation(frame)
    if plan.context.truth is not None:
        lines.append(f"- Kendall tau (test top-1 vs ground truth): "
                     f"{f'{tau:.3f} ' if tau is not None else 'n/a '}({note})")
    lines.append("")
    per_arch = []
    for arch, group in frame.groupby("arch", sort=False):
        ok = group[group["status"] == "ok"]
        per_arch.append({"arch": arch, "source": group["source"].iloc[0] or "", "trials": f"{len(ok)}/{len(group)} ok",
                         "test_top1": _mean_std(ok["test_top1"]), "test_top5": _mean_std(ok["test_top5"]),
                         "truth": group["truth"].iloc[0], "params": group["params"].iloc[0],
                         "MFLOPs": group["flops"].iloc[0] / 1e6 if pd.notna(group["flops"].iloc[0]) else math.nan,
                         "wall_s": float(pd.to_numeric(ok["wall_s"], errors="coerce").sum()) if len(ok) else math.nan})
    lines += ["### Per architecture (mean ± std over seeds)", "", _markdown_table(pd.DataFrame(per_arch)), ""]
    failed = frame[frame["status"] != "ok"]
    if len(failed):
        lines += ["### Trials that did not finish", "",
                  _markdown_table(failed[["arch", "seed", "status", "error"]].fillna("")), ""]
    return "\n".join(lines) + "\n"


def _mean_std(values: pd.Series) -> str:
    values = pd.to_numeric(values, errors="coerce").dropna()
    if values.empty:
        return "–"
    if len(values) == 1:
        return f"{values.iloc[0]:.2f}"
    return f"{values.mean():.2f} ± {values.std(ddof=1):.2f}"


def upsert_report_section(report: Path, section: str) -> None:
    """Put ``section`` (starting with ``## Evaluation``) into ``report``: replace the existing one
    (up to the next ``## `` heading) or append it; create the report if missing. Idempotent."""
    body = section.rstrip("\n").splitlines()
    lines = report.read_text().splitlines() if report.exists() else [f"# NAS harness run: {report.parent.name}", ""]
    starts = [i for i, ln in enumerate(lines) if ln.strip() == _SECTION]
    if starts:
        start = starts[0]
        end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("## ")), len(lines))
        tail = lines[end:]
        lines = lines[:start] + body + ([""] + tail if tail else [])
    else:
        while lines and not lines[-1].strip():
            lines.pop()
        lines = lines + [""] + body
    report.write_text("\n".join(lines) + "\n")


def refresh_run_report(run_dir: str | Path) -> bool:
    """Re-add ``RUN_DIR/evaluation.md`` to ``RUN_DIR/report.md`` (after ``harness.report`` rewrote it).

    Returns whether there was an evaluation to add.
    """
    run_dir = Path(run_dir)
    section = run_dir / "evaluation.md"
    if not section.exists():
        return False
    upsert_report_section(run_dir / "report.md", section.read_text())
    return True


def write_outputs(plan: EvalPlan, errors: Mapping[tuple[str, int], str] | None = None) -> pd.DataFrame:
    """``evaluation.csv`` + ``evaluation.md`` in the output, and the report section of the search run."""
    frame = collect_evaluation(plan, errors)
    frame.to_csv(plan.output / "evaluation.csv", index=False)
    section = evaluation_markdown(plan, frame)
    (plan.output / "evaluation.md").write_text(section)
    if plan.from_run is not None:
        upsert_report_section(plan.from_run / "report.md", section)
    return frame


def format_table(frame: pd.DataFrame) -> str:
    view = frame[["arch", "seed", "status", "test_top1", "test_top5", "truth", "params", "wall_s", "error"]].copy()
    view["error"] = view["error"].fillna("").astype(str).str.slice(0, 60)
    return view.to_string(index=False, float_format=lambda v: f"{v:.2f}")


# --------------------------------------------------------------------------- compare.py hook


def check_retrain_args(top_k: int | None, epochs: int | None) -> None:
    """Validate ``--retrain-top`` / ``--retrain-epochs`` before the search starts (UsageError)."""
    if top_k is None:
        return
    if top_k < 0:
        raise UsageError(f"--retrain-top must be >= 0 (0: each trial's derived arch only), got {top_k}")
    if epochs is not None and epochs < 1:
        raise UsageError(f"--retrain-epochs must be >= 1, got {epochs}")


def retrain_after_search(run_dir: str | Path, top_k: int = 0, epochs: int | None = None, *,
                         seeds: Sequence[int] = (0,), recipe_name: str | None = None,
                         recipe_overrides: Mapping[str, Any] | None = None, train_images: int | None = None,
                         test_images: int | None = None, cpus_per_trial: float = 1.0, gpus_per_trial: float = 0.0,
                         address: str | None = None, num_gpus: int | None = None, max_failures: int = 0,
                         device: str | None = None, resume: bool | None = None) -> pd.DataFrame:
    """Train the archs a finished search picked, inside the same run directory.

    ``top_k=0``: each trial's derived arch; ``top_k>0``: also the ``top_k`` best-scored archs of
    each trial's ``scores.csv`` (deduplicated). Data, benchmark and device come from
    ``RUN_DIR/run.json``; ``epochs`` overrides the recipe's (default NB201: 200). Writes
    ``RUN_DIR/evaluation.csv``, ``RUN_DIR/evaluation.md`` and the ``## Evaluation`` section of
    ``RUN_DIR/report.md``; returns the evaluation table. ``resume=None`` continues an earlier
    evaluation of this run when there is one. Reuses an initialised Ray, else starts one.
    Raises ``UsageError`` on bad input.
    """
    run_dir = Path(run_dir).expanduser().resolve()
    check_retrain_args(top_k, epochs)
    if resume is None:
        resume = (run_dir / TUNE_DIR).exists() and (run_dir / PLAN_FILE).exists()
    if resume:
        record = _read_json(run_dir / PLAN_FILE)
        if record is None:
            raise UsageError(f"nothing to resume in {run_dir}: no readable {PLAN_FILE}")
        plan = EvalPlan.from_dict(record, run_dir)
    else:
        run = _read_json(run_dir / "run.json") or {}
        exp = run.get("experiment", {})
        overrides = dict(recipe_overrides or {})
        if epochs is not None:
            overrides["epochs"] = epochs
        plan = build_plan(
            archs=archs_from_run(run_dir, top_k), seeds=list(seeds), dataset=exp.get("dataset", "cifar10"),
            recipe_name=recipe_name, recipe_overrides=overrides, output=run_dir,
            job_fields=_job_fields_from_run(exp, train_images=train_images, test_images=test_images,
                                            device=device, cpus_per_trial=cpus_per_trial),
            benchmark=run.get("benchmark"), metric=None, from_run=run_dir,
            command=f"harness.compare --retrain-top {top_k}" + (f" --retrain-epochs {epochs}" if epochs else ""))
        check_data(plan)
        write_json(run_dir / PLAN_FILE, plan.to_dict())
    print(f"evaluating {len(plan.archs)} arch(s) x {len(plan.seeds)} seed(s) from scratch "
          f"(recipe {plan.recipe.name}, {plan.recipe.epochs} epochs)", flush=True)
    errors = run_plan(plan, resume=resume, cpus_per_trial=cpus_per_trial, gpus_per_trial=gpus_per_trial,
                      address=address, num_gpus=num_gpus, max_failures=max_failures)
    return write_outputs(plan, errors)


def _job_fields_from_run(exp: Mapping[str, Any], **given: Any) -> dict[str, Any]:
    """EvalJob fields: the search run's data source, overridden by what the caller gives."""
    cpus = given.pop("cpus_per_trial", None)
    fields = {k: exp[k] for k in ("data_root", "cache_dir", "download", "synthetic_train", "synthetic_test",
                                  "device") if exp.get(k) is not None}
    fields.update({k: v for k, v in given.items() if v is not None})
    if cpus is not None:
        fields.setdefault("threads", max(1, int(cpus)))
    return fields


# --------------------------------------------------------------------------- CLI


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line and exit 2, like every other bad input
        raise UsageError(message)


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="python -m harness.evaluate",
                description="Train NB201 architectures from scratch: one Ray Tune trial per arch x seed, "
                            "checkpointed every epoch; writes evaluation.csv and evaluation.md.")
    src = p.add_argument_group("what to train")
    src.add_argument("--arch", action="extend", nargs="+", default=[], metavar="ARCH",
                     help="NB201 arch string(s), e.g. '|nor_conv_3x3~0|+|...|' (repeatable)")
    src.add_argument("--from", dest="from_run", default=None, metavar="RUN_DIR",
                     help="a harness.compare run: evaluate every trial's derived arch (trials/*/derived.json)")
    src.add_argument("--top-k", type=int, default=0, help="with --from: also the K best-scored archs of each trial")
    src.add_argument("--seeds", default="0", help="training seeds, e.g. 0,1,2 or 0-2")
    data = p.add_argument_group("data")
    data.add_argument("--dataset", default=None, help="cifar10 | cifar100 | imagenet | synthetic "
                                                      "(default: the --from run's, else cifar10)")
    data.add_argument("--data-root", default=None, help="CIFAR folder / ImageFolder .tar.gz; ImageNet: a dir with train/ and val/")
    data.add_argument("--no-download", action="store_true", help="never download CIFAR (offline machines)")
    data.add_argument("--cache-dir", default=None, help="where decoded datasets are cached")
    data.add_argument("--train-images", type=int, default=None, help="stratified subset of the training set (quick checks)")
    data.add_argument("--test-images", type=int, default=None, help="stratified subset of the test/val set")
    data.add_argument("--benchmark", default=None,
                      help="ground truth for the truth column: a table path, 'builtin' (NAS-Bench-201) or 'none' "
                           "(default: the --from run's, else the built-in table for CIFAR)")
    data.add_argument("--metric", default=None, help="ground-truth column (default: the dataset's test accuracy)")
    rec = p.add_argument_group("recipe (benchmarks.train)")
    rec.add_argument("--recipe", default=None, help="nb201 (CIFAR) | imagenet (default: by dataset)")
    rec.add_argument("--epochs", type=int, default=None, help="training epochs (nb201: 200)")
    rec.add_argument("--C", type=int, default=None, help="network width (nb201: 16)")
    rec.add_argument("--N", type=int, default=None, help="cells per stage (nb201: 5)")
    rec.add_argument("--batch-size", type=int, default=None)
    rec.add_argument("--lr", type=float, default=None)
    rec.add_argument("--workers", type=int, default=None, help="DataLoader workers (imagenet)")
    rec.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                     help="any recipe field, e.g. --set warmup_epochs=1 --set image_size=128 (repeatable)")
    run = p.add_argument_group("running")
    run.add_argument("--cpus-per-trial", type=float, default=1.0)
    run.add_argument("--gpus-per-trial", type=float, default=0.0, help="fractions allowed, e.g. 0.5")
    run.add_argument("--num-gpus", type=int, default=None, help="logical GPUs of a local Ray instance")
    run.add_argument("--device", default="auto", help="auto | cpu | cuda (inside each trial)")
    run.add_argument("--address", default=None, help="existing Ray cluster, e.g. auto or HOST:PORT")
    run.add_argument("--output", default=None, help="output directory (default: the --from run, else runs/evaluate-<time>)")
    run.add_argument("--resume", action="store_true", help="continue the evaluation in --output (or --from) from its checkpoints")
    run.add_argument("--max-failures", type=int, default=0, help="retries of a failed trial (from its checkpoint)")
    return p


def _recipe_overrides(args: argparse.Namespace) -> dict[str, Any]:
    from benchmarks.train import RecipeError, coerce_recipe_field

    overrides: dict[str, Any] = {}
    for item in args.set:
        key, sep, value = item.partition("=")
        if not sep:
            raise UsageError(f"--set expects FIELD=VALUE (e.g. warmup_epochs=1), got {item!r}")
        try:
            overrides[key.strip()] = coerce_recipe_field(key.strip(), value.strip())
        except RecipeError as err:
            raise UsageError(f"--set {item!r}: {err}") from None
    flags = {"epochs": args.epochs, "C": args.C, "N": args.N, "batch_size": args.batch_size, "lr": args.lr,
             "workers": args.workers}
    overrides.update({k: v for k, v in flags.items() if v is not None})
    return overrides


def _resolve(text: str | None) -> str | None:
    return str(Path(text).expanduser().resolve()) if text else None


def make_plan(args: argparse.Namespace, command: str) -> EvalPlan:
    from spaces.nb201 import Arch

    archs: dict[str, str] = {}
    for text in args.arch:
        try:
            arch = Arch.from_str(text).to_str()
        except ValueError as err:
            raise UsageError(f"--arch {text!r} is not an NB201 cell: {err}") from None
        archs.setdefault(arch, "--arch")
    run: dict[str, Any] = {}
    from_run = None
    if args.top_k < 0:
        raise UsageError(f"--top-k must be >= 0, got {args.top_k}")
    if args.from_run:
        from_run = Path(args.from_run).expanduser().resolve()
        if not from_run.is_dir():
            raise UsageError(f"--from {from_run}: no such directory; pass the --output directory of a harness.compare run")
        for arch, where in archs_from_run(from_run, args.top_k).items():
            archs[arch] = f"{archs[arch]}; {where}" if arch in archs else where
        run = _read_json(from_run / "run.json") or {}
    elif args.top_k:
        raise UsageError("--top-k needs --from RUN_DIR (the scores of a search run)")
    exp = run.get("experiment", {})
    dataset = args.dataset or exp.get("dataset") or "cifar10"
    same_data = not args.dataset or args.dataset == exp.get("dataset")
    base = dict(exp) if same_data else {}
    if args.data_root:
        base["data_root"] = _resolve(args.data_root)
    if args.cache_dir:
        base["cache_dir"] = _resolve(args.cache_dir)
    if args.no_download:
        base["download"] = False
    base.pop("device", None)
    job_fields = _job_fields_from_run(base, train_images=args.train_images, test_images=args.test_images,
                                      device=args.device, cpus_per_trial=args.cpus_per_trial)
    output = Path(args.output).expanduser().resolve() if args.output else (
        from_run or Path(f"runs/evaluate-{time.strftime('%Y%m%d-%H%M%S')}").resolve())
    if args.benchmark:
        benchmark = _benchmark_path(args.benchmark)
    elif from_run:
        benchmark = run.get("benchmark")
    else:  # the built-in NAS-Bench-201 table has the CIFAR-10/100 truth of every cell
        benchmark = _benchmark_path(None) if dataset in ("cifar10", "cifar100", "synthetic") else None
    seeds = parse_seeds(args.seeds)
    return build_plan(archs=archs, seeds=seeds, dataset=dataset, recipe_name=args.recipe,
                      recipe_overrides=_recipe_overrides(args), output=output, job_fields=job_fields,
                      benchmark=benchmark, metric=args.metric, from_run=from_run, command=command)


def _benchmark_path(text: str | None) -> str | None:
    from benchmarks.ground_truth import resolve_benchmark

    try:
        return resolve_benchmark(text)
    except FileNotFoundError as err:
        raise UsageError(str(err)) from None


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    command = "python -m harness.evaluate " + " ".join(shlex.quote(a) for a in argv)
    try:
        args = build_parser().parse_args(argv)
        if args.resume:
            target = args.output or args.from_run
            if not target:
                raise UsageError("--resume needs --output DIR (or --from RUN_DIR): the evaluation to continue")
            output = Path(target).expanduser().resolve()
            record = _read_json(output / PLAN_FILE)
            if record is None or not (output / TUNE_DIR).exists():
                raise UsageError(f"nothing to resume in {output}: no {PLAN_FILE} / {TUNE_DIR}/ there; "
                                 "start an evaluation without --resume")
            plan = EvalPlan.from_dict(record, output)
            print(f"resuming {output} with its saved configuration (other flags are ignored)")
        else:
            plan = make_plan(args, command)
            if (plan.output / TUNE_DIR).exists():
                raise UsageError(f"{plan.output} already holds an evaluation; pass --resume to continue it, "
                                 "or another --output")
        data_info = check_data(plan)
        plan.output.mkdir(parents=True, exist_ok=True)
        if not args.resume:
            write_json(plan.output / PLAN_FILE, plan.to_dict())
        r = plan.recipe
        print(f"output: {plan.output}")
        print(f"data: {data_info}")
        print(f"recipe: {r.name}, {r.epochs} epochs, C={r.C}, N={r.N}, batch {r.batch_size}, lr {r.lr:g} | "
              f"{len(plan.archs)} arch(s) x seeds {plan.seeds}")
        for arch in plan.archs:
            print(f"  {eval_trial_name(arch, 0)[:-6]:<22} {arch}  [{plan.context.sources.get(arch, '')}]")
        errors = run_plan(plan, resume=args.resume, cpus_per_trial=args.cpus_per_trial,
                          gpus_per_trial=args.gpus_per_trial, address=args.address, num_gpus=args.num_gpus,
                          max_failures=args.max_failures)
    except UsageError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    frame = write_outputs(plan, errors)
    print()
    print(format_table(frame))
    tau, note = _rank_correlation(frame)
    if tau is not None:
        print(f"\nKendall tau (test top-1 vs {plan.context.metric}): {tau:.3f} ({note})")
    report = f", {plan.from_run / 'report.md'}" if plan.from_run else ""
    print(f"\nwrote {plan.output / 'evaluation.csv'}, {plan.output / 'evaluation.md'}{report}")
    failed = frame[frame["status"] != "ok"]
    if len(failed):
        print(f"{len(failed)} of {len(frame)} trials did not succeed (reasons above and in evaluation.csv)")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
