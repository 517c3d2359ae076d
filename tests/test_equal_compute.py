"""The equal-compute budget: the multiply-add meter, the per-epoch image cap, and what a trial
records of its compute (issue #16)."""
from __future__ import annotations

import json
import random

import pandas as pd
import pytest
import torch

from common.config import CPU_SEARCH_MACS
from harness.data import Batches
from harness.data.values import DataError, ImageSet
from spaces.measure import MacMeter
from spaces.nb201 import OPS, SuperNet, count_flops, path_plan, random_arch, weighted_plan


def test_the_meter_counts_a_path_forward_as_the_benchmark_counter_and_scales_with_the_batch():
    net = SuperNet(8, 1, 10)
    rng = random.Random(3)
    for _ in range(4):
        arch = random_arch(rng)
        with MacMeter() as one, torch.no_grad():
            net(torch.randn(1, 3, 32, 32), path_plan(arch))
        with MacMeter() as five, torch.no_grad():
            net(torch.randn(5, 3, 32, 32), path_plan(arch))
        assert one.forward == count_flops(arch, 8, 1, 10) and one.backward == 0
        assert five.forward == 5 * one.forward


def test_the_meter_triples_passes_that_train_and_stops_counting_when_closed():
    net = SuperNet(8, 1, 10)
    plan = weighted_plan(torch.ones(6, len(OPS)))
    with MacMeter() as inference, torch.no_grad():
        net(torch.randn(2, 3, 32, 32), plan)
    with MacMeter() as training:
        net(torch.randn(2, 3, 32, 32), plan).sum().backward()
    assert training.forward == inference.forward and training.backward == 2 * training.forward
    assert training.total == 3 * inference.forward
    net(torch.randn(2, 3, 32, 32), plan)  # after the block: nothing more is counted
    assert training.total == 3 * inference.forward
    # every conv of the all-ops cell runs: the all-ops pass costs more than any single path
    worst = max(count_flops(random_arch(random.Random(s)), 8, 1, 10) for s in range(20))
    assert inference.forward / 2 > worst


def _images(n: int) -> ImageSet:
    g = torch.Generator().manual_seed(0)
    return ImageSet(torch.randint(0, 256, (n, 3, 8, 8), generator=g, dtype=torch.uint8),
                    torch.arange(n) % 4, classes=("a", "b", "c", "d"))


def test_the_epoch_cap_draws_fresh_images_of_the_whole_set_each_pass():
    data = _images(400)
    batches = Batches(data, 16, mean=(0.5,) * 3, std=(0.25,) * 3, augment=False, seed=1, epoch_images=100)
    assert len(batches) == 6  # whole batches only: 96 images
    passes = []
    for _ in range(8):
        images = [tuple(row.tolist()) for x, _ in batches for row in x.flatten(1)]
        assert len(images) == 96 and len(set(images)) == 96  # no image twice within a pass
        passes.append(set(images))
    assert passes[0] != passes[1]  # not one fixed subset
    assert len(set().union(*passes)) > 300  # 8 passes of 96 cover most of the 400
    assert len(Batches(data, 16, mean=(0.5,) * 3, std=(0.25,) * 3, augment=False, seed=1)) == 25


def test_the_epoch_cap_is_checked():
    data = _images(64)
    with pytest.raises(DataError, match="epoch_images must be >= 0"):
        Batches(data, 16, mean=(0.5,) * 3, std=(0.25,) * 3, epoch_images=-1)
    with pytest.raises(DataError, match="below the batch size"):
        Batches(data, 16, mean=(0.5,) * 3, std=(0.25,) * 3, epoch_images=8)
    capped_above = Batches(data, 16, mean=(0.5,) * 3, std=(0.25,) * 3, epoch_images=1000)
    assert len(capped_above) == 4  # a cap above the set's size changes nothing


def test_a_trial_records_the_compute_it_processed(tmp_path):
    """DNAL's first epoch trains the weights of every op on every batch: its multiply-adds must be
    exactly three all-ops forward passes per training image; the cap bounds the images; the
    result's totals are the history's sums."""
    from harness.compare import build_context
    from harness.config import ExperimentConfig
    from harness.trial import LocalSession, run_trial, trial_config

    exp = ExperimentConfig.preset("smoke", dataset="synthetic", eval_archs="6", cache_dir=str(tmp_path / "cache"),
                                  synthetic_train=800)
    context = build_context(exp, tmp_path / "run")
    context.truth = [float(i) for i in range(len(context.archs))]
    config = trial_config(exp, "dnal", 0, {"epoch_images": 32, "batch_size": 16})
    result = run_trial(config, context, LocalSession())
    trial = tmp_path / "run" / "trials" / "dnal-seed0"
    history = pd.read_csv(trial / "history.csv")
    assert (history["train_images"] == 32).all()  # capped below the 200-image half

    net = SuperNet(exp.C, exp.N, 10)
    with MacMeter() as one, torch.no_grad():
        net(torch.zeros(1, 3, 32, 32), weighted_plan(torch.ones(6, len(OPS))))
    assert history.loc[0, "search_macs"] == 32 * 3 * one.forward
    assert result["search_macs"] == history["search_macs"].sum()
    assert result["images_seen"] == (history["train_images"] + history["valid_images"]).sum()
    assert result["search_cpu_s"] > 0 and result["derive_macs"] >= 0
    assert history["rank_macs"].dropna().ge(0).all()
    assert json.loads((trial / "result.json").read_text())["search_macs"] == result["search_macs"]


def test_the_cpu_budget_gives_single_path_methods_the_whole_half():
    """Single-path SPOS trains on the whole search half; the all-ops methods cap their epochs (the
    study's per-trial ``search_macs`` is the measured check of the budget itself)."""
    from harness.config import ExperimentConfig
    from methods.registry import get_method

    assert ExperimentConfig.preset("cpu").train_per_class is None  # the full 25k halves
    assert CPU_SEARCH_MACS == 1e13
    for name in ("spos", "hopnas", "nap", "dnal", "pdarts"):
        cls = get_method(name)
        cap = cls.Config.preset("cpu").epoch_images
        assert (cap == 0) if name == "spos" else (0 < cap < 25_000), (name, cap)
