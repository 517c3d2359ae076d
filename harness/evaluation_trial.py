"""One from-scratch training trial = one arch x seed: train with a recipe, test, checkpoint.

The data side is an ``EvalJob`` (CIFAR / synthetic in memory on the device, or an ImageNet tree
streamed); the training side a ``benchmarks.train.Recipe`` run by its ``Trainer``, one
``train_and_test`` step per epoch inside ``harness.loop.run_epochs`` — the same loop,
checkpoints and sessions as the search trial. ``python -m harness.evaluate`` plans and runs
these trials; ``ray_eval_trainable`` is what Tune calls.
"""
from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping

import torch

from common.config import config_from_dict, config_to_dict
from harness.files import device_name, json_safe, select_device, write_json
from harness.loop import RaySession, Session, TrialInterrupted, run_epochs
from harness.progress import line_printer, ticking

EVAL_DIR = "evaluation"            # trial directories: <output>/evaluation/<trial>/
DATASETS = ("cifar10", "cifar100", "synthetic", "imagenet")
_OP_CODES = {"none": "x", "skip_connect": "s", "nor_conv_1x1": "1", "nor_conv_3x3": "3", "avg_pool_3x3": "p"}


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
        return config_to_dict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "EvalJob":
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
    group per node — readable, unique per arch, safe as a folder name. A DARTS genotype (text
    ``Genotype(...)``) is named ``darts-<first 10 hex digits of its SHA-1>-seed0``."""
    from spaces.nb201 import Arch

    if is_genotype(arch):
        return f"darts-{hashlib.sha1(arch.encode()).hexdigest()[:10]}-seed{int(seed)}"

    ops = Arch.from_str(arch).ops
    groups = ["".join(_OP_CODES[o] for o in ops[0:1]), "".join(_OP_CODES[o] for o in ops[1:3]),
              "".join(_OP_CODES[o] for o in ops[3:6])]
    return f"nb201-{'_'.join(groups)}-seed{int(seed)}"


def is_genotype(arch: str) -> bool:
    """A DARTS-space genotype text (the NB201 cells are ``|op~i|+...`` strings)."""
    return arch.lstrip().startswith("Genotype(")


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
        norm: dict[str, Any] = dict(mean=data.mean, std=data.std)
        self.batches = Batches(train, r.batch_size, shuffle=True, augment=True,
                               drop_last=drop_last_for(len(train), r.batch_size), seed=seed, device=device,
                               cutout=getattr(r, "cutout", 0), **norm)
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




def _evaluate(config: dict[str, Any], arch_str: str, seed: int, context: EvalContext, session: Session,
              trial_dir: Path) -> dict[str, Any]:
    from benchmarks.train import (Recipe, Trainer, build_darts, build_nb201, count_macs, count_parameters,
                                  train_and_test)
    from spaces.nb201 import Arch

    started = time.time()
    job, r = EvalJob.from_dict(config["job"]), Recipe.from_dict(config["recipe"])
    darts = r.network != "nb201"
    if darts != is_genotype(arch_str):
        raise ValueError(f"recipe {r.name!r} builds {r.network} networks and cannot train {arch_str[:40]!r}")
    arch = None if darts else Arch.from_str(arch_str)
    device = select_device(job.device)
    if job.threads and device.type == "cpu":
        # One thread per reserved CPU: on a shared machine extra threads oversubscribe the
        # cores and run several times slower, not faster.
        torch.set_num_threads(job.threads)
    data = _build_data(job, r, seed, device)
    torch.manual_seed(seed)  # the model's initial weights: a function of the seed alone
    model = build_darts(arch_str, r, data.num_classes) if arch is None else build_nb201(arch, r, data.num_classes)
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
    say = line_printer(trial_dir.name, width=28)
    progress = run_epochs(session, trial_dir, r.epochs, {"trainer": trainer, "data": data},
                          lambda epoch: train_and_test(trainer, epoch, ticking(data.train(epoch), say, f"epoch {epoch}"),
                                                       data.test))
    last = progress.history[-1]
    final = {
        "arch": arch_str, "seed": seed, "dataset": job.dataset, "epochs": r.epochs,
        "test_top1": last.get("test_top1"), "test_top5": last.get("test_top5"), "test_loss": last.get("test_loss"),
        "train_loss": last.get("train_loss"), "params": params, "flops": flops, "truth": truth,
        "wall_s": progress.wall_s(), "total_s": time.time() - started,
        "source": context.sources.get(arch_str), "recipe": r.name, "C": r.C, "N": r.N,
        "layers": r.layers if darts else None, "space": "darts" if darts else "nb201",
        "train_images": data.n_train, "test_images": data.n_test, "epoch": r.epochs, "done": True,
    }
    write_json(trial_dir / "result.json", json_safe(final))
    session.report(json_safe(final), None)
    return final


def ray_eval_trainable(config: dict[str, Any], context: EvalContext) -> None:
    """The Ray Tune function trainable (use with ``tune.with_parameters(..., context=...)``)."""
    run_evaluation_trial(config, context, RaySession())

