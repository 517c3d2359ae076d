"""The NAS-Bench-201 space: strings, enumeration, isomorphism, sizes, supernet == network."""
from __future__ import annotations

import random

import pandas as pd
import pytest
import torch

from spaces.nb201 import (
    OPS,
    Arch,
    Network,
    SuperNet,
    Term,
    all_archs,
    count_flops,
    count_params,
    path_plan,
    random_arch,
    unique_archs,
    weighted_plan,
)

INDEX0 = "|avg_pool_3x3~0|+|nor_conv_1x1~0|skip_connect~1|+|nor_conv_1x1~0|skip_connect~1|skip_connect~2|"


def test_string_round_trip_and_fields():
    arch = Arch.from_str(INDEX0)
    assert arch.to_str() == INDEX0
    assert arch.ops == ("avg_pool_3x3", "nor_conv_1x1", "skip_connect", "nor_conv_1x1", "skip_connect", "skip_connect")
    assert Arch.from_indices(arch.indices) == arch
    assert hash(arch) == hash(Arch.from_str(INDEX0))


@pytest.mark.parametrize(
    "bad, fragment",
    [
        ("|none~0|+|none~0|none~1|", "3 '+'-separated nodes"),
        ("|none~0|+|none~0|+|none~0|none~1|none~2|", "2 input edge"),
        ("|conv~0|+|none~0|none~1|+|none~0|none~1|none~2|", "unknown op 'conv'"),
        ("|none~1|+|none~0|none~1|+|none~0|none~1|none~2|", "must read 'op~0'"),
        ("none~0+|none~0|none~1|+|none~0|none~1|none~2|", "enclosed in '|'"),
    ],
)
def test_malformed_strings_raise_with_expected_form(bad, fragment):
    with pytest.raises(ValueError) as err:
        Arch.from_str(bad)
    assert fragment in str(err.value)
    if "unknown op" not in fragment:
        assert "expected form" in str(err.value)


def test_enumeration_and_benchmark_isomorphism():
    archs = list(all_archs())
    assert len(archs) == 15_625 and len(set(archs)) == 15_625
    assert len({a.canonical() for a in archs}) == 6_466
    assert len(unique_archs()) == 6_466
    # Known equivalences: a none edge whose source is unused; swapped parallel edges.
    a = Arch.from_str("|nor_conv_3x3~0|+|none~0|none~1|+|skip_connect~0|none~1|none~2|")
    b = Arch.from_str("|avg_pool_3x3~0|+|none~0|none~1|+|skip_connect~0|none~1|none~2|")
    assert a.canonical() == b.canonical()  # node 1 unused -> its op is irrelevant
    c = Arch.from_str("|none~0|+|skip_connect~0|nor_conv_3x3~1|+|none~0|none~1|nor_conv_1x1~2|")
    d = Arch.from_str("|none~0|+|skip_connect~0|avg_pool_3x3~1|+|none~0|none~1|nor_conv_1x1~2|")
    assert c.canonical() == d.canonical()  # any op on a zero source is a zero term
    # The benchmark's form is not full graph isomorphism: a zero term keeps its place, so
    # swapping the roles of nodes 1 and 2 here gives a different class (and 6,466 in all).
    e = Arch.from_str("|nor_conv_3x3~0|+|nor_conv_1x1~0|none~1|+|none~0|skip_connect~1|skip_connect~2|")
    f = Arch.from_str("|nor_conv_1x1~0|+|nor_conv_3x3~0|none~1|+|none~0|skip_connect~1|skip_connect~2|")
    assert e.canonical() != f.canonical()
    assert e.canonical() == "#+#+(0)@nor_conv_1x1+(0)@nor_conv_3x3"


def test_csv_archs_round_trip_and_cover_the_space(nb201_csv):
    table = pd.read_csv(nb201_csv)
    assert len(table) == 15_625
    parsed = [Arch.from_str(s) for s in table["arch"]]
    assert [a.to_str() for a in parsed] == list(table["arch"])
    assert set(parsed) == set(all_archs())
    assert table.loc[table["index"] == 0, "arch"].item() == INDEX0


def test_parameter_counts_match_the_benchmark_and_the_network():
    assert count_params(Arch(("none",) * 6)) == 73_306
    assert count_params(Arch(("nor_conv_3x3",) * 6)) == 1_531_546
    rng = random.Random(1)
    for _ in range(5):
        arch = random_arch(rng)
        for C, N, k in ((16, 5, 10), (8, 1, 100)):
            net = Network(arch, C, N, k)
            assert count_params(arch, C, N, k) == sum(p.numel() for p in net.parameters())


def test_flops_grow_with_convs():
    none, c1, c3 = (Arch((op,) * 6) for op in ("none", "nor_conv_1x1", "nor_conv_3x3"))
    assert count_flops(none) < count_flops(c1) < count_flops(c3)
    # all-conv3x3 cell: every cell conv costs 9*c*c*r*r MACs on each of 6 edges
    cell_delta = sum(5 * 6 * 9 * c * c * r * r for c, r in ((16, 32), (32, 16), (64, 8)))
    assert count_flops(c3) - count_flops(none) == cell_delta


def test_flops_with_pooling_count_the_benchmark_way():
    """xautodl's counter: kernel² multiply-adds per output element of every average pool."""
    none, pool = Arch(("none",) * 6), Arch(("avg_pool_3x3",) * 6)
    assert count_flops(pool) == count_flops(none)  # pools are free without `pooling`
    shortcut_pools = 4 * 16 * 16 * 16 + 4 * 32 * 8 * 8  # the reduction blocks' 2x2 pools
    assert count_flops(none, pooling=True) - count_flops(none) == shortcut_pools
    cell_pools = sum(5 * 6 * 9 * c * r * r for c, r in ((16, 32), (32, 16), (64, 8)))
    assert count_flops(pool, pooling=True) - count_flops(none, pooling=True) == cell_pools


def _randomise_bn_statistics(model: torch.nn.Module, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=g) * 0.5)
            m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)
            if m.affine:
                m.weight.data.copy_(torch.rand(m.weight.shape, generator=g) + 0.5)
                m.bias.data.copy_(torch.randn(m.bias.shape, generator=g) * 0.1)


@pytest.mark.parametrize("C, N", [(8, 1), (8, 2)])
def test_single_path_equals_standalone_network(C, N):
    torch.manual_seed(0)
    supernet = SuperNet(C, N, num_classes=10).eval()
    _randomise_bn_statistics(supernet, seed=1)
    x = torch.randn(6, 3, 32, 32)
    rng = random.Random(2)
    archs = [random_arch(rng) for _ in range(20)]
    outputs = []
    with torch.no_grad():
        for arch in archs:
            net = supernet.to_network(arch).eval()
            assert count_params(arch, C, N) == sum(p.numel() for p in net.parameters())
            y_super, y_net = supernet(x, path_plan(arch)), net(x)
            assert (y_super - y_net).abs().max().item() < 1e-5, arch
            outputs.append(y_super)
    # and the paths really differ (the test would pass vacuously if every output were equal)
    assert len({round(o.sum().item(), 4) for o in outputs}) > 15


def test_search_bn_is_affine_free_inside_cells():
    supernet = SuperNet(8, 1)
    cell_bns = [m for c in supernet.cells for m in c.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert cell_bns and all(not bn.affine for bn in cell_bns)


def test_zero_coefficient_never_runs_the_op_and_weights_combine():
    torch.manual_seed(0)
    supernet = SuperNet(8, 1).eval()
    calls: dict[int, int] = {o: 0 for o in range(1, len(OPS))}
    for o in calls:
        for module in supernet.op_modules(0, o):
            module.register_forward_hook(lambda *_a, o=o: calls.__setitem__(o, calls[o] + 1))
    x = torch.randn(2, 3, 32, 32)
    plan = [[Term(2, 0.0), Term(3, 0.5), Term(4, 0)]] + [[Term(1)]] * 5
    supernet(x, plan)
    assert calls == {1: 0, 2: 0, 3: supernet.num_cells, 4: 0}  # once per cell, shared plan

    # a weighted plan is the weighted sum of the single-op paths on an isolated edge
    with torch.no_grad():
        w = torch.zeros(6, 5)
        w[:, 1] = 1.0  # skip everywhere else
        w[0, 1], w[0, 3] = 0.3, 0.7
        xin = x[:, :1].expand(-1, 8, -1, -1).contiguous()
        mixed = supernet.cells[0](xin, weighted_plan(w))
        # skips elsewhere: node1 = e0, node2 = x + e0, node3 = x + e0 + node2
        e0 = 0.3 * supernet.cells[0].edges[0][1](xin) + 0.7 * supernet.cells[0].edges[0][3](xin)
        node2 = xin + e0
        expected = xin + e0 + node2
        assert torch.allclose(mixed, expected, atol=1e-5)


def test_coefficients_carry_gradients_per_channel_and_per_sample():
    torch.manual_seed(0)
    supernet = SuperNet(8, 1)
    alpha = torch.ones(6, 5, requires_grad=True)
    per_channel = [torch.ones(1, c, 1, 1, requires_grad=True) for c in supernet.cell_channels]
    x = torch.randn(4, 3, 32, 32)
    per_sample = torch.tensor([1.0, 0.0, 1.0, 1.0]).view(4, 1, 1, 1)
    plans = []
    for i, gate in enumerate(per_channel):
        plan = weighted_plan(alpha)
        plan[5] = [Term(3, gate * per_sample)]
        plans.append(plan)
    supernet(x, plans).sum().backward()
    assert alpha.grad is not None and alpha.grad.abs().sum() > 0
    assert alpha.grad[:, 0].abs().sum() == 0  # `none` is never run
    assert all(g.grad is not None and g.grad.shape == g.shape for g in per_channel)


def test_plan_shape_errors():
    supernet = SuperNet(8, 1)
    x = torch.randn(1, 3, 32, 32)
    with pytest.raises(ValueError, match="one entry per edge"):
        supernet(x, [[Term(1)]] * 5)
    with pytest.raises(ValueError, match="one CellPlan per cell"):
        supernet(x, [path_plan(Arch(("skip_connect",) * 6))] * 2)
