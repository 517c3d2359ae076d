"""SPOS in the DARTS space (Guo et al., ECCV 2020; DARTS space per Liu et al., ICLR 2019).

Published (SPOS): uniform single-path sampling per minibatch, only the sampled path runs and
gets updated (unsampled ops' gradients stay ``None``: no momentum, no weight decay), then an
evolutionary search with one-shot fitness — population 50, 20 generations, top-10 parents, 25
mutants + 25 crossovers per generation, mutation probability 0.1, duplicates skipped.

Our reading for the DARTS space (SPOS's own space is a chain of choice blocks):
* a path is a Genotype: per intermediate node of each cell type, 2 distinct inputs drawn
  uniformly among the earlier nodes, each with one uniform non-``none`` op; the normal and the
  reduction cell are drawn independently and every cell of a type shares its type's path;
* mutation redraws a gene's input (among the earlier nodes other than the node's other input)
  and, independently, its op, each with ``mutation_prob``; crossover is node-wise uniform
  (a node takes both its genes from one parent), so every child keeps the 2-inputs rule;
* SGD as the NB201 SPOS recipe (Nesterov 0.9, cosine 0.025 -> 0.001, wd 5e-4 on conv/linear
  weights, clipping 5); search network of ``layers`` = 8 cells (DARTS search depth), width
  ``setup.C``; ``setup.N`` is ignored; BN without affine parameters, as DARTS's search net;
* fitness: one-shot accuracy (or minus loss) on ``setup.valid`` after BN recalibration on
  ``setup.calib``, the supernet's BN statistics preserved (``methods.darts.paths``).
"""
from __future__ import annotations

import random
from dataclasses import dataclass
from typing import ClassVar, Iterable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from common.config import BUDGETS
from methods.base import (Batch, Meter, SearchSetup, Ticker, check_finite, cosine_lr, length_or_none, rng_state,
                          set_lr, set_rng_state, sgd)
from methods.darts.common import check_layers
from methods.darts.paths import evolve, genotype_scores, sample_genotype
from spaces.darts import Genotype, SuperNet, path_plan


@dataclass(frozen=True)
class DartsSPOSConfig:
    epochs: int = 250
    layers: int = 8
    batch_size: int = 64
    lr: float = 0.025
    lr_min: float = 0.001
    momentum: float = 0.9
    nesterov: bool = True
    weight_decay: float = 5e-4
    grad_clip: float = 5.0
    label_smoothing: float = 0.0
    score_by: str = "acc"              # 'acc' or 'loss' (minus one-shot loss)
    population: int = 50
    generations: int = 20
    parents: int = 10
    mutants: int = 25
    crossovers: int = 25
    mutation_prob: float = 0.1

    def __post_init__(self) -> None:
        check_layers(self.layers, "layers")
        if not isinstance(self.epochs, int) or self.epochs < 1:
            raise ValueError(f"epochs must be an int >= 1, got {self.epochs!r}")
        if self.score_by not in ("acc", "loss"):
            raise ValueError(f"score_by must be 'acc' or 'loss', got {self.score_by!r}")
        if self.parents > self.population:
            raise ValueError(f"parents ({self.parents}) cannot exceed population ({self.population})")

    @classmethod
    def preset(cls, budget: str) -> "DartsSPOSConfig":
        if budget == "paper":
            return cls()
        if budget == "cpu":
            return cls(epochs=10, layers=5, score_by="loss", population=10, generations=3, parents=5, mutants=5,
                       crossovers=5)
        if budget == "smoke":
            return cls(epochs=2, layers=3, population=4, generations=1, parents=2, mutants=2, crossovers=2)
        raise ValueError(f"unknown budget {budget!r}; budgets: {', '.join(BUDGETS)}")


class DartsSPOS:
    name: ClassVar[str] = "spos"
    space: ClassVar[str] = "darts"
    Config: ClassVar[type] = DartsSPOSConfig

    def __init__(self, cfg: DartsSPOSConfig, setup: SearchSetup):
        self.cfg, self.setup = cfg, setup
        self.supernet = SuperNet(setup.C, cfg.layers, setup.num_classes).to(setup.device)
        self.optimizer = sgd(self.supernet, cfg.lr, cfg.momentum, cfg.weight_decay, cfg.nesterov)
        self.rng = random.Random(setup.seed)
        self.epoch = 0
        self.history: list[dict] = []
        self._fitness: dict[Genotype, float] = {}

    def sample(self) -> Genotype:
        return sample_genotype(self.rng)

    def train_step(self, x: torch.Tensor, y: torch.Tensor, genotype: Genotype) -> tuple[torch.Tensor, torch.Tensor]:
        plan = path_plan(genotype)
        self.optimizer.zero_grad(set_to_none=True)  # unsampled ops keep grad None: no update
        logits = self.supernet(x, plan)
        loss = F.cross_entropy(logits, y, label_smoothing=self.cfg.label_smoothing)
        check_finite(loss, f"SPOS (DARTS) epoch {self.epoch}")
        loss.backward()
        if self.cfg.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(self.supernet.parameters(), self.cfg.grad_clip)
        self.optimizer.step()
        return loss.detach(), logits.detach()

    def train_epoch(self, train: Iterable[Batch], valid: Iterable[Batch]) -> dict[str, float]:
        cfg = self.cfg
        self._fitness.clear()
        lr = cosine_lr(self.epoch, cfg.epochs, cfg.lr, cfg.lr_min)
        set_lr(self.optimizer, lr)
        self.supernet.train()
        meter = Meter()
        ticker = Ticker(self.setup.progress, f"SPOS epoch {self.epoch + 1}", length_or_none(train), "batches")
        for i, (x, y) in enumerate(train):
            loss, logits = self.train_step(x, y, self.sample())
            meter.update(loss, logits, y)
            ticker.tick(i + 1)
        self.epoch += 1
        return {**meter.result("train"), "lr": lr}

    def score(self, genotypes: Sequence[Genotype], progress: Ticker | None = None) -> np.ndarray:
        """One-shot scores (higher = better), cached until training changes the weights."""
        missing = [g for g in dict.fromkeys(genotypes) if g not in self._fitness]
        if missing:
            values = genotype_scores(self.supernet, missing, self.setup.calib, self.setup.valid, by=self.cfg.score_by,
                                     progress=progress if progress is not None else self.setup.progress)
            self._fitness.update(zip(missing, values.tolist()))
        return np.array([self._fitness[g] for g in genotypes], dtype=np.float64)

    def derive(self) -> Genotype:
        cfg = self.cfg
        ticker = Ticker(self.setup.progress, "SPOS evolution", cfg.generations, "generations")
        best, self.history = evolve(lambda gs: self.score(gs, ticker),
                                    random.Random(self.setup.seed * 1_000_003 + self.epoch), cfg.population,
                                    cfg.generations, cfg.parents, cfg.mutants, cfg.crossovers, cfg.mutation_prob,
                                    progress=ticker)
        return best

    def extras(self) -> dict:
        return {"evolution": list(self.history)}

    def state_dict(self) -> dict:
        return {
            "supernet": {k: v.detach().clone() for k, v in self.supernet.state_dict().items()},
            "optimizer": self.optimizer.state_dict(),
            "rng": rng_state(self.rng),
            "epoch": self.epoch,
        }

    def load_state_dict(self, state: dict) -> None:
        self.supernet.load_state_dict(state["supernet"])
        self.optimizer.load_state_dict(state["optimizer"])
        set_rng_state(self.rng, state["rng"])
        self.epoch = int(state["epoch"])
        self._fitness.clear()
