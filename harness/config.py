"""The experiment configuration: everything about a run that is not a method's own config.

Frozen, JSON round-trip, unknown keys raise. ``ExperimentConfig.preset(budget)`` gives the
named budgets of DESIGN.md; every field can be overridden afterwards.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Mapping

from common.config import BUDGETS, config_from_dict, config_to_dict, replace_fields

SPACES = ("nb201", "darts")


class UsageError(Exception):
    """Bad input: reported as one line, exit code 2 (a message with line breaks is joined with '; ')."""

    def __str__(self) -> str:
        text = super().__str__()
        return "; ".join(line.strip() for line in text.splitlines() if line.strip())


def parse_seeds(text: str) -> list[int]:
    """``"0,1,2"``, ``"0-9"`` or a mix like ``"0-2,7"``."""
    seeds: list[int] = []
    try:
        for part in str(text).split(","):
            part = part.strip()
            if "-" in part:
                lo, hi = (int(v) for v in part.split("-", 1))
                if hi < lo:
                    raise ValueError
                seeds.extend(range(lo, hi + 1))
            elif part:
                seeds.append(int(part))
    except ValueError:
        raise UsageError(f"--seeds must look like 0,1,2 or 0-9, got {text!r}") from None
    if not seeds or len(set(seeds)) != len(seeds) or min(seeds) < 0:
        raise UsageError(f"--seeds must list distinct non-negative integers, got {text!r}")
    return seeds


@dataclass(frozen=True)
class ExperimentConfig:
    budget: str = "smoke"
    space: str = "nb201"
    dataset: str = "cifar10"
    data_root: str | None = None
    download: bool = True
    cache_dir: str | None = None
    benchmark: str | None = None        # any ground-truth format (see benchmarks.ground_truth)
    metric: str | None = None           # ground-truth column; default: the dataset's test accuracy
    C: int = 8
    N: int = 1
    train_per_class: int | None = 20    # cap per class in each search half (None = the full half)
    calib_images: int = 128             # training images that recalibrate BN before scoring
    valid_images: int = 128             # validation images every arch is scored on
    eval_batch_size: int = 256
    eval_archs: str = "20"              # "N" (seeded sample of the 15,625), "unique" or "all"
    arch_seed: int = 0                  # the arch sample and scoring subsets: same for every trial
    split_seed: int = 0                 # the 25k/25k split: same for every trial, as in NB201
    eval_every: int = 0                 # rank every k epochs (0: only at the end)
    epochs: int | None = None           # overrides every method's `epochs`
    synthetic_train: int = 600
    synthetic_test: int = 100
    device: str = "auto"                # auto | cpu | cuda

    def __post_init__(self) -> None:
        if self.budget not in BUDGETS:
            raise ValueError(f"unknown budget {self.budget!r}; budgets: {', '.join(BUDGETS)}")
        if self.space not in SPACES:
            raise ValueError(f"unknown space {self.space!r}; spaces: {', '.join(SPACES)}")
        parse_eval_archs(self.eval_archs)
        for name in ("C", "N", "calib_images", "valid_images", "eval_batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.epochs is not None and self.epochs < 0:
            raise ValueError(f"epochs must be >= 0, got {self.epochs}")
        if self.device not in ("auto", "cpu", "cuda"):
            raise ValueError(f"device must be auto, cpu or cuda, got {self.device!r}")

    @classmethod
    def preset(cls, budget: str, **overrides: Any) -> "ExperimentConfig":
        base: dict[str, dict[str, Any]] = {
            "smoke": dict(C=8, N=1, train_per_class=20, calib_images=128, valid_images=128, eval_archs="20"),
            # ~5 CPU-minutes a trial: 5k images per half, 100 archs scored (measured: 10k images
            # per half made the all-ops methods take 10-15 core-minutes).
            "cpu": dict(C=16, N=1, train_per_class=None, calib_images=512, valid_images=1024, eval_archs="100"),
            "paper": dict(C=16, N=5, train_per_class=None, calib_images=2048, valid_images=5000,
                          eval_archs="unique"),
        }
        if budget not in base:
            raise ValueError(f"unknown budget {budget!r}; budgets: {', '.join(BUDGETS)}")
        values = {**base[budget], "budget": budget}
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        return config_to_dict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "ExperimentConfig":
        return config_from_dict(cls, data)

    def replace(self, **changes: Any) -> "ExperimentConfig":
        return dataclasses.replace(self, **changes)


def parse_eval_archs(spec: str) -> int | str:
    """``"100"`` -> 100; ``"unique"`` / ``"all"`` as they are; anything else raises."""
    text = str(spec).strip().lower()
    if text in ("unique", "all"):
        return text
    try:
        n = int(text)
    except ValueError:
        raise ValueError(f"--eval-archs must be a number, 'unique' or 'all', got {spec!r}") from None
    if not 2 <= n <= 15_625:
        raise ValueError(f"--eval-archs must be between 2 and 15625, got {n}")
    return n


def method_config(method_cls: Any, budget: str, epochs: int | None, overrides: Mapping[str, Any]) -> Any:
    """A method's resolved config: its budget preset, then ``epochs``, then field overrides."""
    cfg = method_cls.Config.preset(budget)
    changes = dict(overrides)
    if epochs is not None and cfg.epochs != 0:  # training-free methods keep their 0 epochs
        changes.setdefault("epochs", epochs)
    return replace_fields(cfg, changes)
