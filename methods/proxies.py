"""Zero-cost proxies: training-free scores of the untrained benchmark network, and a rank aggregate.

Every proxy scores ``spaces.nb201.Network(arch, C, N, num_classes)`` (C=16, N=5: the network the
benchmark's accuracies refer to) at PyTorch's default initialisation — the one the authors' NB201
scripts use (zero-cost-nas ``--init_w_type none``; nas-without-training ``--init ''``; ZiCo's
``getzico`` does not re-initialise) — in train mode (batch statistics in BN, as in all three
codes), on one fixed minibatch of training images. Nothing is trained (``epochs = 0``).
``az_rank`` combines nwot, jacob_cov, zico, synflow and conv FLOPs by AZ-NAS's Σ log(rank/n).

Determinism: the init is seeded from ``(setup.seed, arch string)`` inside a forked RNG, and the
minibatch from ``setup.seed`` alone (the same images for every arch), so an arch's score depends
on neither the global RNG nor the other archs scored; another seed varies both init and batch.
Each proxy uses the first ``batch_size`` images (``nwot_batch_size`` for nwot; zico takes
``zico_batches`` consecutive slices of ``batch_size``) of one drawn batch.

The proxies (θ: the weights of every Conv2d and Linear layer, as in the authors' codes; biases
and BN parameters are not summed; L: mean cross-entropy of the minibatch):

* ``synflow`` — Tanaka et al., NeurIPS 2020; for NAS Abdelfattah et al., ICLR 2021. Data-free:
  a copy of the net with every BatchNorm removed, all parameters replaced by their absolute
  values, float64, one all-ones input; R = Σ output; score = Σ_θ |θ ⊙ ∂R/∂θ|. (zero-cost-nas's
  own NB201 model differs in two details we do not copy, as we score the benchmark's network:
  its reduction blocks keep their BN and its cell convs carry biases. Keeping the reduction BN
  changed tau by < 0.001 on 500 archs.)
* ``snip`` — Lee et al., ICLR 2019: Σ_θ |θ ⊙ ∂L/∂θ| on a batch of 64 (zero-cost-nas default).
* ``grad_norm`` — Abdelfattah et al., ICLR 2021: Σ_layers ‖∂L/∂θ_layer‖₂ on the same batch.
* ``fisher`` — Theis et al. 2018; Turner et al., ICLR 2020: with a the output of a conv/linear
  layer, per channel Δ_k = ½ · mean_batch (Σ_spatial a ⊙ ∂L/∂a)²; summed as the authors' code sums
  it: each channel's Δ_k counted once per weight of that channel (× fan-in), over all layers.
* ``jacob_cov`` — Mellor et al. 2020 (arXiv v1), zero-cost-nas implementation: J = ∂(Σ logits)/∂x
  per sample (one backward; train-mode BN couples the samples, exactly as in the authors' code),
  Σ_J the correlation matrix of the rows of J over the batch of 64, λ its eigenvalues, k = 1e-5:
  score = −Σ_i [log(λ_i + k) + 1/(λ_i + k)].
* ``nwot`` — Mellor et al., ICML 2021: for every ReLU, the binary code c = [input > 0] of each
  sample; K = Σ_ReLU [c cᵀ + (1−c)(1−c)ᵀ] (B × B, B = 128 as in the authors' code), score =
  log |det K|. In the authors' NB201 net every ReLU receives a backward pass (their ``none`` is
  ``x * 0``, which keeps dead-end edges in the graph), so every ReLU counts, as here.
* ``zico`` — Li et al., ICLR 2023: gradients g of each of 2 minibatches of 64 (zero_grad between;
  the authors' ``getzico`` takes whatever loader it is given, 64 is zero-cost-nas's batch); per
  layer, over its weights with non-zero std: s = Σ_θ mean_b |g_θ| / std_b(g_θ) (population std,
  as ``np.std``); score = Σ_layers log s, skipping layers with s = 0.

Disconnected cells (no path of non-``none`` edges from the cell's input to its output, the
all-``none`` cell included) make the network's output independent of its input. For them we
return without computing:

* 0.0 for the four sums of magnitudes (synflow, snip, grad_norm, fisher): the least value a sum
  of magnitudes can take, and positive for every connected cell. It is what synflow, snip and
  grad_norm compute there (every weight gradient is zero: the convs after the cut see all-zero
  inputs, those before it reach no output); fisher would keep one tiny term, the classifier's
  bias times its loss gradient, which says nothing about the cell.
* ``DISCONNECTED_FLOOR`` (−1e9, finite) for jacob_cov, nwot and zico, whose values there are
  undefined or misleading: a zero Jacobian has no correlation matrix; zico has no layer with a
  non-zero std and sums to nothing; nwot would still count the ReLUs of edges before the cut and
  could give such a cell a middling score. Every connected cell scores above it: jacob_cov ≥
  −B(1/k + log B) ≈ −6.4e6; nwot ≥ 0 (K is an integer matrix, so a non-singular one has
  |det| ≥ 1); zico ≥ 0 with 2 batches (each ratio (|g1|+|g2|) / |g1−g2| ≥ 1). The same floor
  replaces a non-finite value of those three on a connected cell, so every score is finite.

Speed: ``compute_proxies`` computes any subset with shared passes — one forward on the first 64
images serves snip, grad_norm, fisher (one loss backward, which also gives zico's first batch)
and jacob_cov (a second backward of Σ logits through the same graph); nwot's codes come from that
forward too when its batch size equals ``batch_size``, else from one inference forward.
"""
from __future__ import annotations

import copy
import hashlib
import math
import time
from dataclasses import dataclass
from typing import Callable, ClassVar, Iterable, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from scipy import stats
from torch import nn

from common.config import check_budget
from methods.base import Batch, SearchSetup, TrainingFree
from spaces.nb201 import EDGES, NUM_NODES, Arch, Network, count_flops

PROXIES: tuple[str, ...] = ("synflow", "snip", "grad_norm", "fisher", "jacob_cov", "nwot", "zico")
MAGNITUDE_PROXIES = frozenset({"synflow", "snip", "grad_norm", "fisher"})
DISCONNECTED_FLOOR = -1e9  # below every connected cell's jacob_cov, nwot and zico (module docstring)
JACOB_COV_K = 1e-5
INPUT_SHAPE = (3, 32, 32)  # synflow's one all-ones sample when no batch gives the shape

# --------------------------------------------------------------------------- pure proxy formulas


def weight_layers(model: nn.Module) -> list[nn.Module]:
    """The Conv2d and Linear layers of ``model``: the layers every proxy sums over."""
    return [m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]


def layer_weights(model: nn.Module) -> list[torch.Tensor]:
    """The weight tensor of each of ``weight_layers(model)``, in the same order."""
    return [layer.weight for layer in weight_layers(model) if isinstance(layer.weight, torch.Tensor)]


def _fan_in(layer: nn.Module) -> int:
    weight = layer.weight
    assert isinstance(weight, torch.Tensor)
    return int(weight[0].numel())


def snip_score(weights: Sequence[torch.Tensor], grads: Sequence[torch.Tensor | None]) -> float:
    """Σ |θ ⊙ g| over all weights (a missing gradient counts as zero)."""
    return float(sum(float((w.detach() * g).abs().sum()) for w, g in zip(weights, grads) if g is not None))


def grad_norm_score(grads: Sequence[torch.Tensor | None]) -> float:
    """Σ over layers of the L2 norm of the layer's weight gradient."""
    return float(sum(float(g.norm()) for g in grads if g is not None))


def fisher_score(activations: Sequence[torch.Tensor], act_grads: Sequence[torch.Tensor | None],
                 fan_ins: Sequence[int]) -> float:
    """Σ_layers fan_in · Σ_channels ½ · mean_batch (Σ_spatial a ⊙ ∂L/∂a)².

    ``activations[i]`` is a layer output (B, C, ...) and ``act_grads[i]`` the loss gradient
    with respect to it; ``fan_ins[i]`` is the weights per output channel of that layer (the
    authors' code broadcasts each channel's value to its weights before summing).
    """
    total = 0.0
    for a, g, fan_in in zip(activations, act_grads, fan_ins):
        if g is None:
            continue
        per_sample = (a.detach() * g).flatten(2).sum(2) if a.dim() > 2 else a.detach() * g
        total += fan_in * float(per_sample.pow(2).mean(0).mul(0.5).sum())
    return total


def jacob_cov_score(jacobian: torch.Tensor, k: float = JACOB_COV_K) -> float:
    """−Σ_i [log(λ_i + k) + 1/(λ_i + k)], λ the eigenvalues of the rows' correlation matrix.

    ``jacobian`` is (B, ...) — one input gradient per sample. Eigenvalues are clamped at 0 (the
    matrix is PSD; eigvalsh may return −1e-16). A sample whose Jacobian is constant leaves the
    correlation undefined: ``DISCONNECTED_FLOOR``.
    """
    rows = jacobian.detach().flatten(1).double()
    if rows.shape[0] < 2 or bool((rows.std(dim=1) == 0).any()):
        return DISCONNECTED_FLOOR
    corr = torch.corrcoef(rows)
    if not bool(torch.isfinite(corr).all()):
        return DISCONNECTED_FLOOR
    lam = torch.linalg.eigvalsh(corr).clamp_min(0.0)
    score = float(-(torch.log(lam + k) + 1.0 / (lam + k)).sum())
    return score if math.isfinite(score) else DISCONNECTED_FLOOR


def relu_code_kernel(codes: torch.Tensor) -> torch.Tensor:
    """c cᵀ + (1−c)(1−c)ᵀ for binary codes (B, D), float64: D minus the Hamming distances.

    Written as D − n_i − n_j + 2 (c cᵀ)_ij (n_i: ones in code i), one matrix product instead of
    two; the product runs in float32, exact for D < 2^24.
    """
    c = codes.flatten(1).to(torch.float32)
    ones = c.sum(1).double()
    gram = (c @ c.T).double()
    return c.shape[1] - ones[:, None] - ones[None, :] + 2.0 * gram


def nwot_score(kernel: torch.Tensor) -> float:
    """log |det K| (``slogdet``, as the authors); a singular K gives ``DISCONNECTED_FLOOR``."""
    _, logabsdet = torch.linalg.slogdet(kernel.double())
    value = float(logabsdet)
    return value if math.isfinite(value) else DISCONNECTED_FLOOR


def zico_score(grads_per_batch: Sequence[Sequence[torch.Tensor | None]]) -> float:
    """Σ_layers log Σ_θ mean_b|g_θ| / std_b(g_θ), over weights with non-zero std.

    ``grads_per_batch[b][i]``: gradient of layer ``i``'s weights on minibatch ``b`` (None = 0).
    Layers whose sum is 0 are skipped (the authors' ``if tmpsum == 0: pass``); when every layer
    is skipped the score is undefined: ``DISCONNECTED_FLOOR``.
    """
    if len(grads_per_batch) < 2:
        raise ValueError(f"zico needs gradients of at least 2 minibatches, got {len(grads_per_batch)}")
    total, used = 0.0, 0
    for layer_grads in zip(*grads_per_batch):
        known = [g for g in layer_grads if g is not None]
        if not known:
            continue
        stacked = torch.stack([g.detach().flatten().double() if g is not None else torch.zeros_like(known[0]).flatten().double()
                               for g in layer_grads])
        std = stacked.std(0, unbiased=False)
        keep = std != 0
        ratio_sum = float((stacked.abs().mean(0)[keep] / std[keep]).sum())
        if ratio_sum > 0:
            total += math.log(ratio_sum)
            used += 1
    return total if used else DISCONNECTED_FLOOR


def without_batchnorm(model: nn.Module) -> nn.Module:
    """A deep copy of ``model`` with every BatchNorm replaced by an identity (synflow's net)."""
    net = copy.deepcopy(model)
    for parent in list(net.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, nn.modules.batchnorm._BatchNorm):
                setattr(parent, name, nn.Identity())
    return net


def synflow_score(model: nn.Module, input_shape: Sequence[int] = INPUT_SHAPE) -> float:
    """Σ_θ |θ ⊙ ∂R/∂θ| of the BN-free, absolute-valued float64 copy; R = Σ f(1). ``model`` is untouched."""
    net = without_batchnorm(model).double()
    with torch.no_grad():
        for p in net.parameters():
            p.abs_()
    device = next(net.parameters()).device
    out = net(torch.ones((1, *input_shape), dtype=torch.float64, device=device))
    weights = layer_weights(net)
    grads = torch.autograd.grad(out.sum(), weights, allow_unused=True)
    return snip_score(weights, grads)


# --------------------------------------------------------------------------- passes shared by proxies


class ReluCodeKernel:
    """Forward hook on ReLUs accumulating nwot's K over every ReLU input of one pass.

    Several ReLUs of a cell read the same node tensor: its kernel is computed once and reused
    (the last few distinct inputs are remembered by identity).
    """

    def __init__(self) -> None:
        self.kernel: torch.Tensor | None = None
        self._recent: list[tuple[torch.Tensor, torch.Tensor]] = []

    def __call__(self, module: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
        x = inputs[0]
        k = next((k for seen, k in self._recent if seen is x), None)
        if k is None:
            k = relu_code_kernel(x.detach() > 0)
            self._recent = [(x, k)] + self._recent[:3]
        self.kernel = k.clone() if self.kernel is None else self.kernel + k


def _hooked(model: nn.Module, kind: type, hook: Callable) -> list[torch.utils.hooks.RemovableHandle]:
    return [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, kind)]


@dataclass
class GradientPass:
    """What one forward + loss backward gives: weight gradients, fisher's sum, J, nwot's K."""

    weight_grads: list[torch.Tensor | None]
    fisher: float | None = None
    jacobian: torch.Tensor | None = None
    kernel: torch.Tensor | None = None


def gradient_pass(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, fisher: bool = False,
                  jacobian: bool = False, codes: bool = False) -> GradientPass:
    """One forward of ``model`` (in its current mode) and the backwards the asked proxies need.

    The loss backward returns the weight gradients and, with ``fisher``, the gradients of every
    conv/linear output (one call); ``jacobian`` adds a backward of Σ logits to the input through
    the same graph; ``codes`` records nwot's K during the forward.
    """
    weights = layer_weights(model)
    outputs: list[tuple[torch.Tensor, int]] = []
    code_kernel = ReluCodeKernel()
    handles = []
    if fisher:
        handles += _hooked(model, nn.Conv2d, lambda m, i, o: outputs.append((o, _fan_in(m))))
        handles += _hooked(model, nn.Linear, lambda m, i, o: outputs.append((o, _fan_in(m))))
    if codes:
        handles += _hooked(model, nn.ReLU, code_kernel)
    try:
        x = x.detach().clone().requires_grad_(True) if jacobian else x
        logits = model(x)
    finally:
        for h in handles:
            h.remove()
    loss = F.cross_entropy(logits, y)
    acts = [o for o, _ in outputs]
    grads = torch.autograd.grad(loss, weights + acts, retain_graph=jacobian, allow_unused=True)
    result = GradientPass(weight_grads=list(grads[:len(weights)]), kernel=code_kernel.kernel)
    if fisher:
        result.fisher = fisher_score(acts, grads[len(weights):], [f for _, f in outputs])
    if jacobian:
        result.jacobian = torch.autograd.grad(logits.sum(), x)[0]
    return result


@torch.inference_mode()
def relu_kernel_pass(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """nwot's K from one forward of ``model`` (in its current mode) on ``x``, no autograd."""
    code_kernel = ReluCodeKernel()
    handles = _hooked(model, nn.ReLU, code_kernel)
    try:
        model(x)
    finally:
        for h in handles:
            h.remove()
    if code_kernel.kernel is None:
        raise ValueError("nwot needs a network with ReLU modules; this one has none")
    return code_kernel.kernel


# --------------------------------------------------------------------------- the NB201 glue


def is_disconnected(arch: Arch) -> bool:
    """True when no path of non-``none`` edges leads from the cell's input (0) to its output (3)."""
    reach = {0}
    for (target, source), op in zip(EDGES, arch.ops):  # EDGES is in topological order of targets
        if op != "none" and source in reach:
            reach.add(target)
    return NUM_NODES - 1 not in reach


def disconnected_value(name: str) -> float:
    """What proxy ``name`` returns for a disconnected cell (module docstring says why)."""
    return 0.0 if name in MAGNITUDE_PROXIES else DISCONNECTED_FLOOR


def init_seed(seed: int, arch: Arch) -> int:
    """A stable 63-bit seed from the run seed and the arch string (Python's hash() is salted)."""
    digest = hashlib.sha256(f"{seed}:{arch.to_str()}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & (2**63 - 1)


def build_network(arch: Arch, C: int, N: int, num_classes: int, seed: int, device: torch.device) -> Network:
    """The benchmark network at PyTorch's default init, seeded without touching the global RNG."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(init_seed(seed, arch))
        net = Network(arch, C=C, N=N, num_classes=num_classes)
    return net.to(device).train()


def images_needed(names: Iterable[str], batch_size: int = 64, nwot_batch_size: int = 128,
                  zico_batches: int = 2) -> int:
    """How many images of the one drawn batch ``names`` read (0: synflow alone is data-free)."""
    wanted = set(names)
    need = batch_size if wanted & {"snip", "grad_norm", "fisher", "jacob_cov"} else 0
    if "zico" in wanted:
        need = max(need, batch_size * zico_batches)
    if "nwot" in wanted:
        need = max(need, nwot_batch_size)
    return need


def _check_names(names: Iterable[str]) -> set[str]:
    wanted = set(names)
    unknown = sorted(wanted - set(PROXIES))
    if unknown:
        raise ValueError(f"unknown proxy name(s) {unknown}; the proxies are {', '.join(PROXIES)}")
    return wanted


def compute_proxies(arch: Arch, names: Iterable[str], *, num_classes: int, batch: Batch | None, seed: int,
                    device: torch.device, C: int = 16, N: int = 5, batch_size: int = 64,
                    nwot_batch_size: int = 128, zico_batches: int = 2) -> dict[str, float]:
    """The proxies ``names`` of ``arch``, sharing forward/backward passes (module docstring).

    ``batch`` holds at least ``images_needed(names, ...)`` images and labels on ``device``; the
    network's init is seeded from ``(seed, arch)``. Disconnected cells return
    ``disconnected_value`` without building a network.
    """
    wanted = _check_names(names)
    if is_disconnected(arch):
        return {name: disconnected_value(name) for name in PROXIES if name in wanted}
    need = images_needed(wanted, batch_size, nwot_batch_size, zico_batches)
    if need and (batch is None or batch[0].shape[0] < need):
        have = 0 if batch is None else batch[0].shape[0]
        raise ValueError(f"proxies {sorted(wanted)} need a batch of {need} images, got {have}")
    net = build_network(arch, C, N, num_classes, seed, device)
    out: dict[str, float] = {}
    if "synflow" in wanted:  # data-free, on a BN-free copy: before the passes change nothing anyway
        out["synflow"] = synflow_score(net, tuple(batch[0].shape[1:]) if batch is not None else INPUT_SHAPE)
    codes_shared = "nwot" in wanted and nwot_batch_size == batch_size
    first: GradientPass | None = None
    if wanted & {"snip", "grad_norm", "fisher", "jacob_cov", "zico"}:
        assert batch is not None
        x, y = batch[0][:batch_size], batch[1][:batch_size]
        first = gradient_pass(net, x, y, fisher="fisher" in wanted, jacobian="jacob_cov" in wanted, codes=codes_shared)
        weights = layer_weights(net)
        if "snip" in wanted:
            out["snip"] = snip_score(weights, first.weight_grads)
        if "grad_norm" in wanted:
            out["grad_norm"] = grad_norm_score(first.weight_grads)
        if "fisher" in wanted:
            out["fisher"] = float(first.fisher or 0.0)
        if "jacob_cov" in wanted:
            assert first.jacobian is not None
            out["jacob_cov"] = jacob_cov_score(first.jacobian)
        if "zico" in wanted:
            grads = [first.weight_grads]
            for b in range(1, zico_batches):
                part = slice(b * batch_size, (b + 1) * batch_size)
                grads.append(gradient_pass(net, batch[0][part], batch[1][part]).weight_grads)
            out["zico"] = zico_score(grads)
    if "nwot" in wanted:
        assert batch is not None
        kernel = first.kernel if codes_shared and first is not None else relu_kernel_pass(net, batch[0][:nwot_batch_size])
        assert kernel is not None
        out["nwot"] = nwot_score(kernel)
    return {name: out[name] for name in PROXIES if name in out}


def flops_or_zero(arch: Arch, C: int, N: int, num_classes: int) -> float:
    """``count_flops`` of the network, 0 for a disconnected cell (none of its work reaches the output)."""
    return 0.0 if is_disconnected(arch) else float(count_flops(arch, C, N, num_classes))


def log_rank_aggregate(columns: Mapping[str, np.ndarray]) -> np.ndarray:
    """AZ-NAS's aggregation (Lee & Ham, CVPR 2024): Σ_p log(rank_p / n).

    Ranks are ascending (1 = lowest score of proxy p, n = highest; ties share their average
    rank, ``scipy.stats.rankdata``), so an arch strong on every proxy scores near 0 and one weak
    on any proxy is pulled down: a product of rank percentiles, not a sum of raw scales.
    """
    if not columns:
        raise ValueError("a rank aggregate needs at least one proxy column")
    lengths = {len(v) for v in columns.values()}
    if len(lengths) != 1:
        raise ValueError(f"aggregate columns differ in length: {sorted(lengths)}")
    n = lengths.pop()
    total = np.zeros(n, dtype=np.float64)
    for values in columns.values():
        total += np.log(stats.rankdata(np.asarray(values, dtype=np.float64)) / n)
    return total


# --------------------------------------------------------------------------- the registered methods


@dataclass(frozen=True)
class ProxyConfig:
    """A proxy's settings: the network and the minibatch sizes of the authors' codes."""

    epochs: int = 0
    batch_size: int = 64        # snip/grad_norm/fisher/jacob_cov batch (zero-cost-nas), each zico batch
    nwot_batch_size: int = 128  # nas-without-training's default
    zico_batches: int = 2       # ZiCo: gradients of >= 2 minibatches
    C: int = 16                 # the benchmark network, whatever the search width
    N: int = 5

    @classmethod
    def preset(cls, budget: str) -> "ProxyConfig":
        check_budget(budget)
        if budget == "smoke":  # seconds in tests: a small network and small batches
            return cls(batch_size=16, nwot_batch_size=32, C=8, N=1)
        return cls()


class _ProxyMethod(TrainingFree):
    """Training-free: ``score`` computes ``components`` per arch with shared passes and combines them."""

    name: ClassVar[str]
    Config: ClassVar[type] = ProxyConfig
    components: ClassVar[tuple[str, ...]]

    def __init__(self, cfg: ProxyConfig, setup: SearchSetup):
        self.cfg, self.setup = cfg, setup
        self._batch: Batch | None = None
        self._best: Arch | None = None
        self._last_s_per_arch: float | None = None
        self._last_disconnected = 0

    def derive(self) -> Arch:
        return self._best if self._best is not None else Arch(("nor_conv_3x3",) * 6)  # the largest cell

    def _proxy_names(self) -> tuple[str, ...]:
        return tuple(c for c in self.components if c in PROXIES)

    def _data(self) -> Batch | None:
        need = images_needed(self._proxy_names(), self.cfg.batch_size, self.cfg.nwot_batch_size, self.cfg.zico_batches)
        if need == 0:
            return None
        if self._batch is None:
            if self.setup.sample_batch is None:
                raise ValueError(f"{self.name} needs a minibatch of {need} training images, but the harness "
                                 "gave no SearchSetup.sample_batch; run it with a dataset")
            self._batch = self.setup.sample_batch(need, self.setup.seed)
        return self._batch

    def proxy_table(self, archs: Sequence[Arch]) -> dict[str, np.ndarray]:
        """Each component's value per arch (flops from ``count_flops`` of the scored network)."""
        batch, cfg = self._data(), self.cfg
        rows = [compute_proxies(a, self._proxy_names(), num_classes=self.setup.num_classes, batch=batch,
                                seed=self.setup.seed, device=self.setup.device, C=cfg.C, N=cfg.N,
                                batch_size=cfg.batch_size, nwot_batch_size=cfg.nwot_batch_size,
                                zico_batches=cfg.zico_batches) for a in archs]
        table = {p: np.array([r[p] for r in rows], dtype=np.float64) for p in self._proxy_names()}
        if "flops" in self.components:
            table["flops"] = np.array([flops_or_zero(a, cfg.C, cfg.N, self.setup.num_classes) for a in archs])
        return table

    def combine(self, table: Mapping[str, np.ndarray]) -> np.ndarray:
        return table[self.components[0]]

    def score(self, archs: Sequence[Arch]) -> np.ndarray:
        if not archs:
            return np.empty(0, dtype=np.float64)
        started = time.perf_counter()
        scores = np.asarray(self.combine(self.proxy_table(archs)), dtype=np.float64)
        self._last_s_per_arch = (time.perf_counter() - started) / len(archs)
        self._last_disconnected = sum(is_disconnected(a) for a in archs)
        self._best = archs[int(np.argmax(scores))]
        return scores

    def extras(self) -> dict:
        return {
            "components": list(self.components),
            "score_s_per_arch": self._last_s_per_arch,
            "disconnected_archs": self._last_disconnected,
            "disconnected_value": {p: disconnected_value(p) for p in self._proxy_names()},
            "network": {"C": self.cfg.C, "N": self.cfg.N, "init": "pytorch default, seeded per (seed, arch)"},
        }


class SynflowProxy(_ProxyMethod):
    name: ClassVar[str] = "synflow"
    summary: ClassVar[str] = "synaptic flow: sum |θ·∂R/∂θ| of the |weights| net on an all-ones input, no data (Tanaka 2020)"
    components: ClassVar[tuple[str, ...]] = ("synflow",)


class SnipProxy(_ProxyMethod):
    name: ClassVar[str] = "snip"
    summary: ClassVar[str] = "sum |θ·∂L/∂θ| on one labelled minibatch of 64 (Lee et al., ICLR 2019)"
    components: ClassVar[tuple[str, ...]] = ("snip",)


class GradNormProxy(_ProxyMethod):
    name: ClassVar[str] = "grad_norm"
    summary: ClassVar[str] = "sum over layers of ‖∂L/∂θ‖₂ on one minibatch of 64 (Abdelfattah et al., ICLR 2021)"
    components: ClassVar[tuple[str, ...]] = ("grad_norm",)


class FisherProxy(_ProxyMethod):
    name: ClassVar[str] = "fisher"
    summary: ClassVar[str] = "sum over channels of (Σ activation·gradient)²/2 on one minibatch of 64 (Theis 2018, Turner 2020)"
    components: ClassVar[tuple[str, ...]] = ("fisher",)


class JacobCovProxy(_ProxyMethod):
    name: ClassVar[str] = "jacob_cov"
    summary: ClassVar[str] = "input-Jacobian correlation eigenvalue score on 64 images (Mellor et al. 2020, v1)"
    components: ClassVar[tuple[str, ...]] = ("jacob_cov",)


class NwotProxy(_ProxyMethod):
    name: ClassVar[str] = "nwot"
    summary: ClassVar[str] = "log|det K| of the ReLU binary-code kernel on 128 images (Mellor et al., ICML 2021)"
    components: ClassVar[tuple[str, ...]] = ("nwot",)


class ZicoProxy(_ProxyMethod):
    name: ClassVar[str] = "zico"
    summary: ClassVar[str] = "sum over layers of log(Σ mean|g|/std(g)) over 2 minibatches of 64 (Li et al., ICLR 2023)"
    components: ClassVar[tuple[str, ...]] = ("zico",)


class AZRankAggregate(_ProxyMethod):
    """``az_rank``: AZ-NAS's rank aggregation (Σ log(rank/n), Lee & Ham, CVPR 2024) of our proxies.

    Not AZ-NAS itself (its expressivity/progressivity/trainability proxies are not implemented
    here); the same rule applied to one proxy per aspect AZ-NAS argues for: expressivity (nwot,
    jacob_cov: how distinct the samples' activation patterns and input Jacobians are),
    trainability (zico: gradient signal-to-noise), signal propagation (synflow) and complexity
    (flops, AZ-NAS's own complexity term). The score of an arch depends on the set scored with it
    (ranks), as in AZ-NAS; disconnected cells take the bottom rank of every component (their flops
    count as 0), hence the bottom of the aggregate.
    """

    name: ClassVar[str] = "az_rank"
    summary: ClassVar[str] = ("AZ-NAS rank aggregation Σ log(rank/n) (Lee & Ham, CVPR 2024) of nwot, jacob_cov, "
                              "zico, synflow and FLOPs")
    components: ClassVar[tuple[str, ...]] = ("nwot", "jacob_cov", "zico", "synflow", "flops")

    def combine(self, table: Mapping[str, np.ndarray]) -> np.ndarray:
        return log_rank_aggregate({c: table[c] for c in self.components})



PROXY_METHODS: tuple[type[_ProxyMethod], ...] = (SynflowProxy, SnipProxy, GradNormProxy, FisherProxy, JacobCovProxy,
                                                 NwotProxy, ZicoProxy, AZRankAggregate)
"""The training-free methods of this module, in the order ``methods.registry`` lists them."""
