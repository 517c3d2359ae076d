"""Zero-cost proxies: each formula against a hand computation, then the NB201 glue and the registry."""
from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from methods.base import SearchSetup
from methods.registry import get_method
from methods.proxies import (
    DISCONNECTED_FLOOR, PROXIES, ProxyConfig, ReluCodeKernel, build_network, compute_proxies,
    disconnected_value, fisher_score, grad_norm_score, gradient_pass, images_needed, is_disconnected,
    jacob_cov_score, log_rank_aggregate, nwot_score, relu_code_kernel, snip_score, synflow_score, zico_score,
)
from spaces.nb201 import Arch

CPU = torch.device("cpu")
SMALL = dict(C=8, N=1, batch_size=8, nwot_batch_size=16, zico_batches=2)
ALL_NONE = Arch(("none",) * 6)
# conv edges 1<-0, 2<-0, 2<-1 but every edge into node 3 is `none`: input cut from output
CUT = Arch(("nor_conv_3x3", "nor_conv_3x3", "nor_conv_1x1", "none", "none", "none"))
CONNECTED = [
    Arch(("nor_conv_3x3",) * 6),
    Arch(("skip_connect",) * 6),
    Arch(("none", "none", "none", "nor_conv_1x1", "none", "none")),
    Arch.from_str("|nor_conv_3x3~0|+|nor_conv_3x3~0|avg_pool_3x3~1|+|skip_connect~0|nor_conv_3x3~1|skip_connect~2|"),
]


def random_batch(n: int, seed: int, classes: int = 10) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, 32, 32, generator=g), torch.randint(0, classes, (n,), generator=g)


def linear(weight: list[list[float]]) -> nn.Linear:
    layer = nn.Linear(len(weight[0]), len(weight), bias=False)
    with torch.no_grad():
        layer.weight.copy_(torch.tensor(weight))
    return layer


# --------------------------------------------------------------------------- formulas by hand


def test_synflow_of_a_two_layer_net_by_hand():
    # |W1| = [[1,2],[3,4]], |W2| = [[1,2]], input ones: h = [3,7], R = 3 + 14 = 17.
    # dR/dW2 = h -> sum |W2 . h| = 17; dR/dW1[i,j] = |W2|[i] -> sum = 1+2+6+8 = 17. BN is removed.
    model = nn.Sequential(linear([[1.0, -2.0], [3.0, 4.0]]), nn.BatchNorm1d(2), nn.ReLU(), linear([[-1.0, 2.0]]))
    before = [p.clone() for p in model.parameters()]
    assert synflow_score(model, input_shape=(2,)) == pytest.approx(34.0)
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))  # the model is untouched


def test_snip_grad_norm_fisher_of_a_linear_model_by_hand():
    w = np.array([[0.5, -1.0, 2.0], [1.5, 0.25, -0.5]])
    x = np.array([[1.0, 2.0, -1.0], [0.5, -1.0, 3.0]])
    y = np.array([0, 1])
    logits = x @ w.T
    p = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    dlogits = (p - np.eye(2)[y]) / len(y)          # d mean-CE / d logits
    grad = dlogits.T @ x
    model = linear(w.tolist())
    result = gradient_pass(model, torch.tensor(x, dtype=torch.float32), torch.tensor(y), fisher=True)
    assert snip_score([model.weight], result.weight_grads) == pytest.approx(np.abs(w * grad).sum(), rel=1e-5)
    assert grad_norm_score(result.weight_grads) == pytest.approx(np.linalg.norm(grad), rel=1e-5)
    fisher = 3 * (0.5 * ((logits * dlogits) ** 2).mean(0)).sum()  # fan-in 3 x per-channel value
    assert result.fisher == pytest.approx(fisher, rel=1e-5)


def test_fisher_sums_spatially_then_squares_per_channel():
    a = torch.arange(2 * 2 * 2 * 2, dtype=torch.float32).reshape(2, 2, 2, 2)
    g = torch.ones_like(a) * torch.tensor([1.0, -1.0]).view(1, 2, 1, 1)
    expected = 0.0
    for k in range(2):
        per_sample = [float((a[b, k] * g[b, k]).sum()) for b in range(2)]
        expected += 0.5 * np.mean(np.square(per_sample))
    assert fisher_score([a], [g], [5]) == pytest.approx(5 * expected)
    assert fisher_score([a], [None], [5]) == 0.0


def test_jacob_cov_on_two_rows_with_known_correlation():
    k = 1e-5
    rows = torch.tensor([[1.0, 2.0, 3.0, 4.0], [1.0, 3.0, 2.0, 4.0]])
    r = float(np.corrcoef(rows.numpy())[0, 1])  # 0.8: eigenvalues 1 +- r
    expected = -sum(math.log(lam + k) + 1 / (lam + k) for lam in (1 + r, 1 - r))
    assert jacob_cov_score(rows) == pytest.approx(expected, rel=1e-9)
    opposite = torch.tensor([[1.0, 2.0, 3.0, 4.0], [4.0, 3.0, 2.0, 1.0]])  # r = -1: eigenvalues 0 and 2
    assert jacob_cov_score(opposite) == pytest.approx(-(math.log(k) + 1 / k + math.log(2 + k) + 1 / (2 + k)), rel=1e-6)
    assert jacob_cov_score(torch.zeros(3, 4)) == DISCONNECTED_FLOOR  # zero Jacobian: no correlation


def test_nwot_kernel_and_log_det_by_hand():
    codes = torch.tensor([[1, 0, 1], [1, 1, 0]], dtype=torch.bool)
    # c c^T = [[2,1],[1,2]], (1-c)(1-c)^T = [[1,0],[0,1]]  ->  K = [[3,1],[1,3]], det 8
    assert torch.equal(relu_code_kernel(codes), torch.tensor([[3.0, 1.0], [1.0, 3.0]], dtype=torch.float64))
    assert nwot_score(relu_code_kernel(codes)) == pytest.approx(math.log(8.0))
    assert nwot_score(torch.ones(3, 3, dtype=torch.float64)) == DISCONNECTED_FLOOR  # singular


def test_relu_code_hook_counts_every_relu_including_shared_inputs():
    x = torch.tensor([[1.0, -1.0, 2.0], [-3.0, 1.0, 1.0]])

    class TwoReluOnOneInput(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b, self.c = nn.ReLU(), nn.ReLU(), nn.ReLU()

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.c(self.a(x) + self.b(x) - 1.5)

    hook = ReluCodeKernel()
    model = TwoReluOnOneInput()
    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, nn.ReLU)]
    model(x)
    for h in handles:
        h.remove()
    expected = 2 * relu_code_kernel(x > 0) + relu_code_kernel((x.relu() * 2 - 1.5) > 0)
    assert torch.equal(hook.kernel, expected)


def test_zico_on_known_gradients():
    # layer 1: std = [1, 0, 0], mean|g| = [2, 2, 0] -> 2/1 = 2; layer 2: std [1, 1], mean|g| [1, 2] -> 3
    batch1 = [torch.tensor([1.0, 2.0, 0.0]), torch.tensor([-1.0, 1.0]), torch.zeros(2)]
    batch2 = [torch.tensor([3.0, 2.0, 0.0]), torch.tensor([1.0, 3.0]), None]
    assert zico_score([batch1, batch2]) == pytest.approx(math.log(2.0) + math.log(3.0))
    assert zico_score([[torch.zeros(3)], [torch.zeros(3)]]) == DISCONNECTED_FLOOR
    with pytest.raises(ValueError, match="at least 2"):
        zico_score([batch1])


def test_log_rank_aggregate_by_hand():
    out = log_rank_aggregate({"a": np.array([1.0, 2.0, 3.0]), "b": np.array([30.0, 10.0, 20.0])})
    expected = [math.log(1 / 3) + math.log(1.0), math.log(2 / 3) + math.log(1 / 3), math.log(1.0) + math.log(2 / 3)]
    assert out == pytest.approx(expected)
    with pytest.raises(ValueError):
        log_rank_aggregate({})


# --------------------------------------------------------------------------- the NB201 glue


def test_disconnection_is_a_missing_path_from_input_to_output():
    assert is_disconnected(ALL_NONE) and is_disconnected(CUT)
    assert not any(is_disconnected(a) for a in CONNECTED)


def test_magnitude_proxies_really_are_zero_on_a_disconnected_network():
    """What the docstring claims they compute there, so the short cut changes nothing."""
    net = build_network(CUT, 8, 1, 10, seed=0, device=CPU)
    x, y = random_batch(8, seed=0)
    result = gradient_pass(net, x, y, fisher=True)
    weights = [m.weight for m in net.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    assert snip_score(weights, result.weight_grads) == 0.0
    assert grad_norm_score(result.weight_grads) == 0.0
    assert synflow_score(net) == 0.0
    # fisher keeps one term: the classifier's output is its bias, whose product with dL/da is not 0
    logits = net(x).detach()
    dlogits = (logits.softmax(1) - F.one_hot(y, 10)) / len(y)
    classifier_only = net.classifier.in_features * float((0.5 * (logits * dlogits).pow(2).mean(0)).sum())
    assert result.fisher == pytest.approx(classifier_only, rel=1e-5)


def test_same_seed_same_scores_other_seed_other_scores_and_no_global_rng_use():
    arch = CONNECTED[3]
    batch = random_batch(16, seed=0)
    state = torch.get_rng_state()
    first = compute_proxies(arch, PROXIES, num_classes=10, batch=batch, seed=0, device=CPU, **SMALL)
    again = compute_proxies(arch, PROXIES, num_classes=10, batch=batch, seed=0, device=CPU, **SMALL)
    other = compute_proxies(arch, PROXIES, num_classes=10, batch=batch, seed=1, device=CPU, **SMALL)
    assert torch.equal(torch.get_rng_state(), state)
    assert first == again
    assert all(first[p] != other[p] for p in PROXIES)


@pytest.mark.parametrize("nwot_batch_size", [8, 16])  # 8: nwot's codes come from the shared forward
def test_shared_passes_equal_each_proxy_alone(nwot_batch_size):
    arch, batch = CONNECTED[3], random_batch(16, seed=3)
    sizes = {**SMALL, "nwot_batch_size": nwot_batch_size}
    together = compute_proxies(arch, PROXIES, num_classes=10, batch=batch, seed=5, device=CPU, **sizes)
    for proxy in PROXIES:
        alone = compute_proxies(arch, [proxy], num_classes=10, batch=batch, seed=5, device=CPU, **sizes)
        assert alone == {proxy: pytest.approx(together[proxy], rel=1e-6)}


def test_images_needed_and_unknown_names():
    assert images_needed(["synflow"]) == 0
    assert images_needed(["snip"]) == 64 and images_needed(["zico"]) == 128 and images_needed(["nwot"]) == 128
    with pytest.raises(ValueError, match="unknown proxy"):
        compute_proxies(CONNECTED[0], ["synflowz"], num_classes=10, batch=None, seed=0, device=CPU)
    with pytest.raises(ValueError, match="batch of 16"):
        compute_proxies(CONNECTED[0], ["zico"], num_classes=10, batch=random_batch(8, 0), seed=0, device=CPU, **SMALL)


# --------------------------------------------------------------------------- registered methods


def make_setup(seed: int = 0, data: bool = True) -> SearchSetup:
    return SearchSetup(C=8, N=1, num_classes=10, device=CPU, seed=seed,
                       sample_batch=(lambda n, s: random_batch(n, s)) if data else None)


@pytest.mark.parametrize("name", list(PROXIES) + ["az_rank"])
def test_every_proxy_is_registered_usable_and_ranks_disconnected_cells_last(name):
    cls = get_method(name)
    cfg = cls.Config.preset("smoke")
    assert cfg.epochs == 0 and cls.Config.preset("paper") == ProxyConfig()
    with pytest.raises(ValueError):
        cls.Config.preset("huge")
    method = cls(cfg, make_setup())
    assert method.train_epoch([], []) == {} and method.state_dict() == {}
    archs = CONNECTED + [ALL_NONE, CUT]
    scores = method.score(archs)
    assert scores.dtype == np.float64 and scores.shape == (len(archs),) and np.isfinite(scores).all()
    assert scores[-2:].max() < scores[:-2].min()
    assert method.derive() == archs[int(np.argmax(scores))]
    extras = json.loads(json.dumps(method.extras()))
    assert extras["disconnected_archs"] == 2 and extras["score_s_per_arch"] > 0
    if name in PROXIES:
        assert extras["disconnected_value"] == {name: disconnected_value(name)}
        # an arch's score does not depend on the others scored with it
        assert method.score(archs[3:4])[0] == scores[3]


def test_seed_changes_the_method_scores_and_data_free_synflow_needs_no_batch():
    archs = CONNECTED[:2]
    cfg = ProxyConfig.preset("smoke")
    a = get_method("snip")(cfg, make_setup(seed=0)).score(archs)
    b = get_method("snip")(cfg, make_setup(seed=1)).score(archs)
    assert not np.array_equal(a, b)
    assert np.isfinite(get_method("synflow")(cfg, make_setup(data=False)).score(archs)).all()
    with pytest.raises(ValueError, match="sample_batch"):
        get_method("nwot")(cfg, make_setup(data=False)).score(archs)


def test_derive_before_any_score_is_the_largest_cell():
    method = get_method("zico")(ProxyConfig.preset("smoke"), make_setup())
    assert method.derive() == Arch(("nor_conv_3x3",) * 6)


# --------------------------------------------------------------------------- the study CLI


def test_zc_study_writes_scores_and_tables(tmp_path):
    from harness import zc_study

    archs = zc_study.sample_archs(6, arch_seed=3)
    truth = tmp_path / "truth.csv"
    truth.write_text("arch,cifar10_test_acc\n" + "".join(f"{a.to_str()},{80 + i}\n" for i, a in enumerate(archs)))
    out = tmp_path / "study"
    rc = zc_study.main(["--archs", "6", "--arch-seed", "3", "--seeds", "0-1", "--dataset", "synthetic",
                        "--benchmark", str(truth), "--output", str(out), "--C", "8", "--N", "1",
                        "--time-alone", "2", "--n-boot", "20"])
    assert rc == 0
    scores = pd.read_csv(out / "scores_seed1.csv")
    assert list(scores.arch) == [a.to_str() for a in archs]
    assert {*PROXIES, "az_rank", "params", "flops", "cifar10_test_acc"} <= set(scores.columns)
    table = pd.read_csv(out / "table.csv")
    assert len(table) == 10 and table.loc[table.score == "nwot", "published_tau"].item() == 0.571
    assert "| az_rank |" in (out / "table.md").read_text()
    assert json.loads((out / "study.json").read_text())["seeds"] == [0, 1]


@pytest.mark.parametrize("argv", [["--archs", "1", "--output", "x"], ["--seeds", "2-1", "--output", "x"],
                                  ["--output", "x", "--benchmark", "/no/such/table.csv", "--archs", "3"]])
def test_zc_study_bad_input_is_one_error_line(argv, capsys):
    from harness import zc_study

    assert zc_study.main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ")
