"""The baselines every report shows: parameter count, FLOPs, and a random score.

None trains (``epochs = 0``); each costs microseconds per arch. ``params`` ranks by the
benchmark network's parameter count (C=16, N=5 — the size the benchmark's numbers refer to,
whatever the search width): on NB201 CIFAR-10 it already reaches Kendall tau 0.578, the bar a
supernet must clear. ``flops`` ranks by the benchmark's own FLOPs count of that network (convs,
classifier and average pooling, as xautodl's counter: tau 0.541 on all 15,625 cells; counting
convs alone would rank exactly like ``params``). ``random`` is a seeded uniform score: tau ~0,
a sanity floor.
"""
from __future__ import annotations

import random
from dataclasses import dataclass
from typing import ClassVar, Sequence

import numpy as np

from common.config import check_budget
from methods.base import SearchSetup, TrainingFree
from spaces.nb201 import Arch, count_flops, count_params, random_arch

BASELINES = ("params", "flops", "random")  # what every ranking report shows beside the methods


@dataclass(frozen=True)
class BaselineConfig:
    epochs: int = 0
    batch_size: int = 64

    @classmethod
    def preset(cls, budget: str) -> "BaselineConfig":
        check_budget(budget)
        return cls()


class _NoTraining(TrainingFree):
    Config: ClassVar[type] = BaselineConfig

    def __init__(self, cfg: BaselineConfig, setup: SearchSetup):
        self.cfg, self.setup = cfg, setup


class ParamsBaseline(_NoTraining):
    name: ClassVar[str] = "params"
    summary: ClassVar[str] = "baseline: parameter count of the benchmark network (C=16, N=5)"

    def score(self, archs: Sequence[Arch]) -> np.ndarray:
        return np.array([count_params(a, 16, 5, self.setup.num_classes) for a in archs], dtype=np.float64)

    def derive(self) -> Arch:
        return Arch(("nor_conv_3x3",) * 6)  # the largest cell


class FlopsBaseline(_NoTraining):
    name: ClassVar[str] = "flops"
    summary: ClassVar[str] = "baseline: the benchmark's FLOPs count (convs, classifier, average pooling)"

    def score(self, archs: Sequence[Arch]) -> np.ndarray:
        return np.array([count_flops(a, 16, 5, self.setup.num_classes, pooling=True) for a in archs],
                        dtype=np.float64)

    def derive(self) -> Arch:
        return Arch(("nor_conv_3x3",) * 6)  # the most FLOPs


class RandomBaseline(_NoTraining):
    name: ClassVar[str] = "random"
    summary: ClassVar[str] = "baseline: a seeded uniform random score (tau ~ 0)"

    def score(self, archs: Sequence[Arch]) -> np.ndarray:
        # Seeded per arch string, so an arch's score does not depend on which others are scored.
        return np.array([random.Random(f"{self.setup.seed}:{a.to_str()}").random() for a in archs])

    def derive(self) -> Arch:
        return random_arch(random.Random(self.setup.seed))
