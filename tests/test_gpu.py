"""The GPU path: every method's trial on CUDA (and its resume), a from-scratch evaluation trial,
and one-shot scores on CUDA against the CPU scores of the same weights.

Marked ``gpu`` and skipped with a reason where torch sees no CUDA device. No Ray: trials run
in-process (``LocalSession``), as on the GPU machine, which has no Ray. ``python -m
harness.device_check`` runs these first. ``NAS_HARNESS_TEST_DEVICE=cpu`` runs the same checks
on the CPU (the device check's ``--tiny --device cpu`` mode does, so CI proves the tests
themselves work before a GPU is at hand).
"""
from __future__ import annotations

import os
import random
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from benchmarks.ranking import kendall_tau
from harness.compare import build_context
from harness.config import ExperimentConfig
from harness.trial import LocalSession, TrialInterrupted, run_trial, trial_config
from methods.base import one_shot_scores
from methods.registry import available_methods
from spaces.nb201 import SuperNet, path_plan, random_arch
from tests.helpers import random_batches

DEVICE = os.environ.get("NAS_HARNESS_TEST_DEVICE", "cuda")
pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(DEVICE == "cuda" and not torch.cuda.is_available(),
                       reason="needs CUDA: torch sees no GPU on this machine"),
]


def _device_label() -> str:
    return torch.cuda.get_device_name() if DEVICE == "cuda" else "cpu ("


def _context(tmp_path: Path):
    exp = ExperimentConfig.preset("smoke", dataset="synthetic", device=DEVICE, eval_archs="12",
                                  cache_dir=str(tmp_path / "cache"))
    context = build_context(exp, tmp_path / "run")
    context.truth = [float(i % 7) + 0.1 * i for i in range(len(context.archs))]
    return exp, context


@pytest.mark.parametrize("method", available_methods())
def test_every_method_runs_a_trial_on_cuda_and_resumes_from_its_checkpoint(tmp_path, method):
    exp, context = _context(tmp_path)  # each method's smoke schedule
    config = trial_config(exp, method, 0)
    ckpt = tmp_path / "ckpt"
    interrupted = LocalSession(ckpt, stop_after_epoch=1)
    try:
        run_trial(config, context, interrupted)
        trained = False  # a training-free method has no epoch to stop after
    except TrialInterrupted:
        trained = True
    final = run_trial(config, context, LocalSession(ckpt))
    trial = Path(context.output) / "trials" / f"{method}-seed0"
    assert (trial / "result.json").exists() and final["done"]
    assert _device_label() in (trial / "config.json").read_text()  # it ran on the device asked for
    scores = pd.read_csv(trial / "scores.csv")["score"].to_numpy()
    assert len(scores) == 12 and np.isfinite(scores).all()
    if trained:
        epochs = list(pd.read_csv(trial / "history.csv")["epoch"])
        assert epochs == list(range(1, final["epochs"] + 1)), f"{method}: epochs {epochs} after resume"


def test_a_from_scratch_evaluation_trial_runs_on_cuda(tmp_path):
    from benchmarks.train import recipe
    from harness.evaluation_trial import EvalContext, EvalJob, run_evaluation_trial

    r = recipe("nb201", epochs=2, C=8, N=1, batch_size=64)
    job = EvalJob(dataset="synthetic", synthetic_train=512, synthetic_test=128, device=DEVICE,
                  cache_dir=str(tmp_path / "cache"))
    arch = "|nor_conv_3x3~0|+|nor_conv_3x3~0|avg_pool_3x3~1|+|skip_connect~0|nor_conv_3x3~1|skip_connect~2|"
    final = run_evaluation_trial({"arch": arch, "seed": 0, "job": job.to_dict(), "recipe": r.to_dict()},
                                 EvalContext(output=str(tmp_path)), LocalSession())
    assert 0 <= final["test_top1"] <= final["test_top5"] <= 100 and final["params"] > 0


def test_one_shot_scores_on_the_device_agree_with_the_cpu_scores_of_the_same_weights():
    torch.manual_seed(0)
    supernet = SuperNet(16, 1)
    for x, _ in random_batches(4, size=32, seed=1):  # move BN statistics off their init
        supernet(x, path_plan(random_arch(random.Random(0))))
    archs = [random_arch(random.Random(i)) for i in range(40)]
    calib, valid = random_batches(2, size=128, seed=2), random_batches(4, size=128, seed=3)
    on_cpu = one_shot_scores(supernet, archs, calib, valid, by="loss")
    cuda = torch.device(DEVICE)
    supernet_gpu = supernet.to(cuda)
    on_gpu = one_shot_scores(supernet_gpu, archs, [(x.to(cuda), y.to(cuda)) for x, y in calib],
                             [(x.to(cuda), y.to(cuda)) for x, y in valid], by="loss")
    assert kendall_tau(on_gpu, on_cpu) >= 0.99
    np.testing.assert_allclose(on_gpu, on_cpu, rtol=1e-3, atol=1e-3)
