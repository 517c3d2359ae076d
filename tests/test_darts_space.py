"""The DARTS space: genotype text and validation, published sizes, the supernet and its plans."""
from __future__ import annotations

import random

import pytest
import torch

from spaces.darts import (DARTS_V1, DARTS_V2, EDGES, NONE, NUM_EDGES, PDARTS, PRIMITIVES, SKIP, Genotype,
                          NetworkCIFAR, SuperNet, count_macs, count_params, count_params_imagenet, edge_index,
                          genotype_from_weights, path_plan, random_genotype, weighted_plan)
from spaces.plan import Term

PDARTS_TEXT = ("Genotype(normal=[('skip_connect', 0), ('dil_conv_3x3', 1), ('skip_connect', 0),('sep_conv_3x3', 1), "
               "('sep_conv_3x3', 1), ('sep_conv_3x3', 3), ('sep_conv_3x3',0), ('dil_conv_5x5', 4)], "
               "normal_concat=range(2, 6), reduce=[('avg_pool_3x3', 0), ('sep_conv_5x5', 1), ('sep_conv_3x3', 0), "
               "('dil_conv_5x5', 2), ('max_pool_3x3', 0), ('dil_conv_3x3', 1), ('dil_conv_3x3', 1), "
               "('dil_conv_5x5', 3)], reduce_concat=range(2, 6))")


def test_published_text_pastes_in_and_prints_back():
    g = Genotype.from_str(PDARTS_TEXT)  # exactly as chenxin061/pdarts genotypes.py spells it
    assert g == PDARTS and g.normal[6] == ("sep_conv_3x3", 0)
    rng = random.Random(0)
    for genotype in [DARTS_V1, DARTS_V2, PDARTS] + [random_genotype(rng) for _ in range(20)]:
        assert Genotype.from_str(str(genotype)) == genotype
    assert "normal_concat=range(2, 6)" in str(PDARTS)
    assert Genotype.from_str("genotypes.Genotype(" + str(DARTS_V2)[len("Genotype("):]) == DARTS_V2


@pytest.mark.parametrize("text, message", [
    ("Genotype(normal=[('sep_conv_3x3', 0)], normal_concat=range(2, 6), reduce=[], reduce_concat=range(2, 6))",
     "a cell has 8 entries"),
    (str(DARTS_V2).replace("('dil_conv_3x3', 2)", "('dil_conv_3x3', 5)"), "node 5 takes input 5"),
    (str(DARTS_V2).replace("('sep_conv_3x3', 0), ('sep_conv_3x3', 1)", "('sep_conv_3x3', 1), ('sep_conv_3x3', 1)", 1),
     "takes input 1 twice"),
    (str(DARTS_V2).replace("('dil_conv_3x3', 2)", "('none', 2)"), "never holds 'none'"),
    (str(DARTS_V2).replace("dil_conv_3x3", "conv_7x1_1x7"), "unknown op 'conv_7x1_1x7'"),
    (str(DARTS_V2).replace("normal_concat=range(2, 6)", "normal_concat=[1, 2]"), "normal_concat must be"),
    ("Genotype(normal=[('sep_conv_3x3', 0)", "malformed genotype text"),
    ("resnet18", "a genotype looks like Genotype("),
    ("Genotype(normal=__import__('os').system('true'), normal_concat=range(2, 6), reduce=[], "
     "reduce_concat=range(2, 6))", "not a literal"),
    ("Genotype(normal=[], normal_concat=range(2, 6), reduce=[])", "missing ['reduce_concat']"),
])
def test_a_malformed_genotype_fails_with_one_line_saying_what(text, message):
    with pytest.raises(ValueError) as err:
        Genotype.from_str(text)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_published_sizes():
    """CIFAR (C=36, 20 cells, auxiliary head excluded) and ImageNet mobile (C=48, 14 cells):
    DARTS 3.3M / 4.7M, P-DARTS 3.4M / 4.9M, as the papers print them (to 0.1M)."""
    assert round(count_params(DARTS_V2) / 1e6, 1) == 3.3
    assert round(count_params(PDARTS) / 1e6, 1) == 3.4
    assert round(count_params_imagenet(DARTS_V2) / 1e6, 1) == 4.7
    assert round(count_params_imagenet(PDARTS) / 1e6, 1) == 4.9
    assert (count_params(DARTS_V2), count_params(PDARTS)) == (3_349_342, 3_433_798)
    # Multiply-adds (convolutions + classifier, 224 px): 530M and 543M. The papers print 574M and
    # 557M; their counter was never published, and conv+fc counts of DARTS_V2 by others give
    # 523-545M too (quark0/darts issue #46). We pin ours and hold it within 8 % of the papers'.
    darts, pdarts = count_macs(DARTS_V2), count_macs(PDARTS)
    assert (darts, pdarts) == (529_911_552, 542_819_328)
    assert abs(darts / 574e6 - 1) < 0.08 and abs(pdarts / 557e6 - 1) < 0.08


@pytest.mark.parametrize("layers", [5, 8, 11, 17, 20])
def test_reductions_sit_at_a_third_and_two_thirds(layers):
    net = SuperNet(C=2, layers=layers, candidates={t: [[3]] * NUM_EDGES for t in ("normal", "reduce")})
    assert [i for i, t in enumerate(net.cell_types) if t == "reduce"] == [layers // 3, 2 * layers // 3]


def _small(**kw) -> SuperNet:
    torch.manual_seed(0)
    return SuperNet(C=4, layers=5, num_classes=10, **kw)


def test_a_single_path_is_the_standalone_network_with_the_same_weights():
    net = _small()
    x = torch.randn(3, 3, 16, 16)
    net.train()
    for _ in range(2):  # BN running statistics away from their initial values
        net(x, path_plan(DARTS_V2))
        net(x, path_plan(PDARTS))
    net.eval()
    rng = random.Random(1)
    for g in [DARTS_V2, PDARTS, random_genotype(rng), random_genotype(rng)]:
        standalone = net.to_network(g).eval()
        with torch.no_grad():
            assert torch.allclose(standalone(x), net(x, path_plan(g)), atol=1e-5)


def test_candidates_build_only_their_ops_and_a_plan_naming_another_fails():
    alive = [[SKIP, PRIMITIVES.index("sep_conv_3x3")]] * NUM_EDGES
    small = _small(candidates={"normal": alive, "reduce": alive})
    full = _small()
    assert sum(p.numel() for p in small.parameters()) < sum(p.numel() for p in full.parameters()) / 2
    plan = [[Term(PRIMITIVES.index("dil_conv_5x5"))]] + [[] for _ in range(NUM_EDGES - 1)]
    with pytest.raises(ValueError, match="did not build"):
        small(torch.randn(2, 3, 16, 16), (plan, plan))


def test_plans_per_cell_per_channel_per_sample_and_zero_coefficients():
    net = _small().eval()
    x = torch.randn(2, 3, 16, 16)
    shared = weighted_plan(torch.rand(NUM_EDGES, len(PRIMITIVES)), torch.rand(NUM_EDGES, len(PRIMITIVES)))
    per_cell = [shared[0] if t == "normal" else shared[1] for t in net.cell_types]
    with torch.no_grad():
        assert torch.equal(net(x, shared), net(x, per_cell))
        # a per-channel coefficient of ones and a per-sample one of ones change nothing
        ones_c = [[Term(t.op, t.coef * torch.ones(1, 1, 1, 1)) for t in e] for e in shared[0]]
        assert torch.allclose(net(x, (ones_c, shared[1])), net(x, shared), atol=1e-6)
        # a literal 0 coefficient never runs the op: same output as leaving the term out
        zeroed = [[Term(t.op, 0.0) if t.op == SKIP else t for t in e] for e in shared[0]]
        dropped = [[t for t in e if t.op != SKIP] for e in shared[0]]
        assert torch.equal(net(x, (zeroed, shared[1])), net(x, (dropped, shared[1])))
    with pytest.raises(ValueError, match="one CellPlan per cell"):
        net(x, per_cell[:3])


def test_the_parse_keeps_two_inputs_per_node_and_never_none():
    w = torch.zeros(NUM_EDGES, len(PRIMITIVES))
    w[:, NONE] = 10.0  # none is strongest everywhere: never chosen
    w[edge_index(1, 2), 4] = 5.0
    w[edge_index(0, 2), 3] = 4.0
    w[edge_index(3, 5), 7] = 3.0
    w[edge_index(2, 5), 2] = 2.0
    g = genotype_from_weights(w, w)
    assert g.normal[:2] == (("skip_connect", 0), ("sep_conv_3x3", 1))
    assert g.normal[6:] == (("avg_pool_3x3", 2), ("dil_conv_5x5", 3))
    assert all(op != "none" for op, _ in g.normal + g.reduce)


def test_auxiliary_logits_in_training_only_and_drop_path_in_training_only():
    torch.manual_seed(0)
    net = NetworkCIFAR(DARTS_V2, C=4, layers=5, num_classes=10, auxiliary=True, drop_path_prob=0.5)
    x = torch.randn(2, 3, 32, 32)
    net.train()
    logits, aux = net.forward_aux(x)
    assert aux is not None and aux.shape == logits.shape == (2, 10)
    net.eval()
    with torch.no_grad():
        a, none = net.forward_aux(x)
        assert none is None and torch.equal(a, net(x))  # eval: deterministic, no drop-path
    assert EDGES[edge_index(4, 5)] == (4, 5)
