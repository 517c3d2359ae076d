"""The fast paths give the plain path's results: box-sum pooling, NHWC layout, one-shot scoring."""
from __future__ import annotations

import copy
import random

import numpy as np
import pytest
import torch
from torch import nn

from methods.base import one_shot_scores
from spaces.nb201 import AvgPool3x3, Network, SuperNet, path_plan, random_arch
from tests.helpers import random_batches


def _plain(model: nn.Module) -> nn.Module:
    """A copy computing the textbook way: library average pooling, NCHW tensors."""
    plain = copy.deepcopy(model)
    for module in plain.modules():
        for name, child in list(module.named_children()):
            if isinstance(child, AvgPool3x3):
                setattr(module, name, nn.AvgPool2d(3, stride=1, padding=1, count_include_pad=False))
    plain.memory_format = "contiguous"
    return plain


@pytest.mark.parametrize("shape", [(2, 3, 32, 32), (5, 16, 8, 8), (1, 4, 3, 7), (3, 2, 1, 1)])
@pytest.mark.parametrize("channels_last", [False, True])
def test_box_sum_pooling_equals_average_pooling_without_padding_counts(shape, channels_last):
    x = torch.randn(*shape, generator=torch.Generator().manual_seed(0))
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    x_ref = x.detach().clone().contiguous().requires_grad_()
    x = x.detach().requires_grad_()
    ours, ref = AvgPool3x3()(x), nn.AvgPool2d(3, stride=1, padding=1, count_include_pad=False)(x_ref)
    torch.testing.assert_close(ours, ref, rtol=1e-6, atol=1e-6)
    g = torch.randn_like(ref)
    ours.backward(g)
    ref.backward(g)
    torch.testing.assert_close(x.grad, x_ref.grad, rtol=1e-6, atol=1e-6)


def test_nhwc_network_equals_nchw_network_forward_and_backward():
    torch.manual_seed(0)
    net = Network(random_arch(random.Random(3)), C=8, N=1)
    plain = _plain(net)
    x, y = random_batches(1, size=8)[0]
    for model in (net, plain):
        nn.functional.cross_entropy(model(x), y).backward()
    torch.testing.assert_close(net(x), plain(x), rtol=1e-5, atol=1e-5)
    for (name, a), (_, b) in zip(net.named_parameters(), plain.named_parameters()):
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-4, atol=1e-5, msg=name)


def test_one_shot_scores_on_the_fast_path_equal_the_plain_path():
    torch.manual_seed(0)
    supernet = SuperNet(8, 1)
    # Move the BN statistics and weights off their init, so the comparison is not trivial.
    for x, _ in random_batches(3, size=16, seed=1):
        supernet(x, path_plan(random_arch(random.Random(0))))
    plain = _plain(supernet)
    archs = [random_arch(random.Random(i)) for i in range(6)]
    calib, valid = random_batches(2, size=32, seed=2), random_batches(2, size=32, seed=3)
    for by in ("loss", "acc"):
        fast = one_shot_scores(supernet, archs, calib, valid, by=by)
        slow = one_shot_scores(plain, archs, calib, valid, by=by)
        np.testing.assert_allclose(fast, slow, rtol=1e-5, atol=1e-6)


def test_pooling_after_scoring_still_trains():
    """The neighbour-count cache must not keep an inference tensor: score first, then train."""
    from spaces.nb201 import Arch, _neighbour_count

    _neighbour_count.cache_clear()
    torch.manual_seed(0)
    supernet = SuperNet(4, 1)
    pools = Arch(("avg_pool_3x3",) * 6)
    batch = random_batches(1, size=8, res=8)
    one_shot_scores(supernet, [pools], batch, batch)  # first sight of 8x8 under inference_mode
    x, y = batch[0]
    nn.functional.cross_entropy(supernet(x, path_plan(pools)), y).backward()  # must not raise
