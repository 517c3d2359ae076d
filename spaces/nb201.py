"""The NAS-Bench-201 cell search space.

Three layers, kept apart on purpose:

* ``Arch`` — a frozen, validated value (six op names, one per edge) with the benchmark's
  string form, enumeration and the benchmark's own isomorphism canonical form;
* ``Network`` — the standalone network of one arch (affine BN), for from-scratch training;
* ``SuperNet`` — one shared weight-sharing supernet whose forward takes a *plan*: per edge,
  the candidate ops to run and the coefficient of each. Every method of the harness drives
  the same supernet through plans; the supernet itself holds no mode and no arch parameters.

Conventions follow the benchmark's code exactly (NAS-Bench-201, Dong & Yang 2020): op order,
edge order ``1<-0, 2<-0, 2<-1, 3<-0, 3<-1, 3<-2``, ``nor_conv_k`` = ReLU -> Conv(no bias)
-> BN, avg pool 3x3 with ``count_include_pad=False``, a ResNet basic block between stages.
"""
from __future__ import annotations

import itertools
import random
from dataclasses import dataclass
from functools import lru_cache
from typing import Callable, Iterator, Sequence, Union, cast

import torch
import torch.nn.functional as F
from torch import nn

from spaces.plan import CellPlan, Term
from spaces.plan import sum_terms as _sum_node

OPS: tuple[str, ...] = ("none", "skip_connect", "nor_conv_1x1", "nor_conv_3x3", "avg_pool_3x3")
NONE, SKIP, CONV1, CONV3, POOL = range(len(OPS))
# (target node, source node) in the benchmark's string order.
EDGES: tuple[tuple[int, int], ...] = ((1, 0), (2, 0), (2, 1), (3, 0), (3, 1), (3, 2))
NUM_EDGES = len(EDGES)


def edge_name(e: int) -> str:
    """``"target<-source"`` of edge ``e``, as reports and method extras key edges."""
    return f"{EDGES[e][0]}<-{EDGES[e][1]}"

NUM_NODES = 4
_EXAMPLE = "|nor_conv_3x3~0|+|nor_conv_3x3~0|avg_pool_3x3~1|+|skip_connect~0|nor_conv_3x3~1|skip_connect~2|"


# --------------------------------------------------------------------------- the arch value


@dataclass(frozen=True)
class Arch:
    """One NB201 cell: the op name of each of the six edges, in ``EDGES`` order."""

    ops: tuple[str, ...]

    def __post_init__(self) -> None:
        if not isinstance(self.ops, tuple):
            object.__setattr__(self, "ops", tuple(self.ops))
        if len(self.ops) != NUM_EDGES:
            raise ValueError(f"an NB201 cell has {NUM_EDGES} edges, got {len(self.ops)} ops: {self.ops!r}")
        bad = [op for op in self.ops if op not in OPS]
        if bad:
            raise ValueError(f"unknown NB201 op(s) {bad}; the ops are {', '.join(OPS)}")

    # -- constructors
    @classmethod
    def from_str(cls, s: str) -> "Arch":
        """Parse the benchmark string ``|op~0|+|op~0|op~1|+|op~0|op~1|op~2|``."""
        if not isinstance(s, str):
            raise ValueError(f"an NB201 arch string is a str, got {type(s).__name__}")
        text = s.strip()
        nodes = text.split("+")
        if len(nodes) != NUM_NODES - 1:
            raise ValueError(
                f"malformed NB201 arch string {s!r}: expected 3 '+'-separated nodes, got {len(nodes)}; "
                f"expected form: {_EXAMPLE}"
            )
        ops: list[str] = []
        for target, node in enumerate(nodes, start=1):
            if not (node.startswith("|") and node.endswith("|")) or len(node) < 2:
                raise ValueError(f"malformed NB201 arch string {s!r}: node {target} {node!r} must be "
                                 f"enclosed in '|'; expected form: {_EXAMPLE}")
            terms = node[1:-1].split("|")
            if len(terms) != target:
                raise ValueError(f"malformed NB201 arch string {s!r}: node {target} must have {target} "
                                 f"input edge(s), got {len(terms)}; expected form: {_EXAMPLE}")
            for source, term in enumerate(terms):
                op, sep, src = term.partition("~")
                if not sep or src != str(source):
                    raise ValueError(f"malformed NB201 arch string {s!r}: term {term!r} of node {target} "
                                     f"must read 'op~{source}'; expected form: {_EXAMPLE}")
                if op not in OPS:
                    raise ValueError(f"unknown op {op!r} in NB201 arch string {s!r}; the ops are {', '.join(OPS)}")
                ops.append(op)
        return cls(tuple(ops))

    @classmethod
    def from_indices(cls, indices: Sequence[int]) -> "Arch":
        return cls(tuple(OPS[int(i)] for i in indices))

    # -- views
    def to_str(self) -> str:
        parts, k = [], 0
        for target in range(1, NUM_NODES):
            terms = [f"{self.ops[k + s]}~{s}" for s in range(target)]
            parts.append("|" + "|".join(terms) + "|")
            k += target
        return "+".join(parts)

    def __str__(self) -> str:
        return self.to_str()

    @property
    def indices(self) -> tuple[int, ...]:
        return tuple(OPS.index(op) for op in self.ops)

    def canonical(self) -> str:
        """The benchmark's own isomorphism key (6,466 classes over the 15,625 cells).

        Node 0 is ``0``; each later node is the sorted ``+``-join of one term per incoming
        edge: ``#`` for a ``none`` edge or a source whose form is exactly ``#``, the source's
        form for ``skip_connect``, ``(source)@op`` otherwise. Zero terms are kept (dropping
        them gives 5,773 classes, which is not the benchmark's equivalence).
        """
        return _canonical(self.ops)

    def replace(self, edge: int, op: str) -> "Arch":
        ops = list(self.ops)
        ops[edge] = op
        return Arch(tuple(ops))


@lru_cache(maxsize=None)
def _canonical(ops: tuple[str, ...]) -> str:
    forms = ["0"]
    k = 0
    for target in range(1, NUM_NODES):
        terms = []
        for source in range(target):
            op, src = ops[k + source], forms[source]
            if op == "none" or src == "#":
                terms.append("#")
            elif op == "skip_connect":
                terms.append(src)
            else:
                terms.append(f"({src})@{op}")
        forms.append("+".join(sorted(terms)))
        k += target
    return forms[-1]


def all_archs() -> Iterator[Arch]:
    """All 5^6 = 15,625 cells, in op-index product order (NOT the benchmark's index order)."""
    for ops in itertools.product(OPS, repeat=NUM_EDGES):
        yield Arch(ops)


@lru_cache(maxsize=1)
def _unique() -> tuple[Arch, ...]:
    seen: dict[str, Arch] = {}
    for arch in all_archs():
        seen.setdefault(arch.canonical(), arch)
    return tuple(seen.values())


def unique_archs() -> list[Arch]:
    """One representative (the first in ``all_archs`` order) per isomorphism class: 6,466."""
    return list(_unique())


def random_arch(rng: random.Random, unique: bool = False) -> Arch:
    """A uniform draw over the 15,625 encodings, or over the 6,466 classes when ``unique``."""
    if unique:
        return rng.choice(_unique())
    return Arch(tuple(rng.choice(OPS) for _ in range(NUM_EDGES)))


# --------------------------------------------------------------------------- size


def _cell_op_params(op: str, c: int, affine: bool = True) -> int:
    bn = 2 * c if affine else 0
    return {"none": 0, "skip_connect": 0, "avg_pool_3x3": 0,
            "nor_conv_1x1": c * c + bn, "nor_conv_3x3": 9 * c * c + bn}[op]


def _stage_channels(C: int) -> tuple[int, int, int]:
    return C, 2 * C, 4 * C


def count_params(arch: Arch, C: int = 16, N: int = 5, num_classes: int = 10) -> int:
    """Parameters of the benchmark network (affine BN), computed in closed form.

    Equals ``sum(p.numel() for p in Network(arch, C, N, num_classes).parameters())``.
    """
    c1, c2, c3 = _stage_channels(C)
    stem = 27 * C + 2 * C
    cells = sum(N * sum(_cell_op_params(op, c) for op in arch.ops) for c in (c1, c2, c3))
    reductions = sum(9 * ci * co + 2 * co + 9 * co * co + 2 * co + ci * co for ci, co in ((c1, c2), (c2, c3)))
    head = 2 * c3 + c3 * num_classes + num_classes
    return stem + cells + reductions + head


def count_flops(arch: Arch, C: int = 16, N: int = 5, num_classes: int = 10, resolution: int = 32,
                pooling: bool = False) -> int:
    """Multiply-accumulates of one forward pass: convs and the classifier (BN/ReLU/add ignored).

    ``pooling=True`` also counts average pooling as the benchmark's own counter does (xautodl's
    ``flop_benchmark``: kernel² per output element — the cell's 3x3 pools and the 2x2 pools of
    the reduction blocks). Without it the count ranks the 15,625 cells exactly like ``count_params``.
    """
    c1, c2, c3 = _stage_channels(C)
    r1, r2, r3 = resolution, resolution // 2, resolution // 4
    def per_pixel(op: str, c: int) -> int:  # MACs of one cell op per output pixel
        return {"nor_conv_1x1": c * c, "nor_conv_3x3": 9 * c * c,
                "avg_pool_3x3": 9 * c if pooling else 0}.get(op, 0)

    flops = 27 * C * r1 * r1
    for c, r in ((c1, r1), (c2, r2), (c3, r3)):
        flops += N * sum(per_pixel(op, c) for op in arch.ops) * r * r
    for (ci, co), r_out in (((c1, c2), r2), ((c2, c3), r3)):
        flops += (9 * ci * co + 9 * co * co + ci * co) * r_out * r_out
        if pooling:
            flops += 4 * ci * r_out * r_out  # the shortcut's 2x2 average pool
    return flops + c3 * num_classes


# --------------------------------------------------------------------------- modules


class ReLUConvBN(nn.Sequential):
    def __init__(self, c_in: int, c_out: int, kernel: int, stride: int, affine: bool):
        super().__init__(
            nn.ReLU(inplace=False),
            nn.Conv2d(c_in, c_out, kernel, stride=stride, padding=kernel // 2, bias=False),
            nn.BatchNorm2d(c_out, affine=affine),
        )


@lru_cache(maxsize=32)
def _neighbour_count(height: int, width: int, dtype: torch.dtype) -> torch.Tensor:
    """How many of its 3x3 neighbours each pixel has inside the image (9 inside, 4 at corners).

    Built outside inference mode whatever the caller's mode: the cached tensor is reused by
    training steps, which cannot save an inference tensor for backward.
    """
    with torch.inference_mode(False):
        rows = torch.full((height,), 3.0, dtype=dtype)
        cols = torch.full((width,), 3.0, dtype=dtype)
        rows[0] -= 1
        rows[-1] -= 1
        cols[0] -= 1
        cols[-1] -= 1
        return (rows[:, None] * cols[None, :]).view(1, 1, height, width)


class AvgPool3x3(nn.Module):
    """``AvgPool2d(3, stride=1, padding=1, count_include_pad=False)``, fast on the CPU.

    On the CPU, PyTorch's NCHW average pooling is about 8x slower than a depthwise 3x3 box sum
    divided by the number of in-image neighbours (measured at 256x16x32x32: 21 ms vs 2.6 ms),
    and it was a quarter of one-shot scoring time. Same values (to float rounding: the sum of
    the same 9 terms, divided by the same count); elsewhere the library pooling is used.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.device.type != "cpu":
            return F.avg_pool2d(x, 3, stride=1, padding=1, count_include_pad=False)
        channels, height, width = x.shape[1], x.shape[2], x.shape[3]
        box = x.new_ones(channels, 1, 3, 3)
        return F.conv2d(x, box, padding=1, groups=channels) / _neighbour_count(height, width, x.dtype)


def make_op(op: str, c: int, affine: bool) -> nn.Module | None:
    """The module of a cell op on ``c`` channels (stride 1); ``None`` for ``none``."""
    if op == "none":
        return None
    if op == "skip_connect":
        return nn.Identity()
    if op == "nor_conv_1x1":
        return ReLUConvBN(c, c, 1, 1, affine)
    if op == "nor_conv_3x3":
        return ReLUConvBN(c, c, 3, 1, affine)
    if op == "avg_pool_3x3":
        return AvgPool3x3()
    raise ValueError(f"unknown op {op!r}; the ops are {', '.join(OPS)}")


class ResNetBlock(nn.Module):
    """The fixed stride-2 reduction block between stages (always affine, as in the benchmark)."""

    def __init__(self, c_in: int, c_out: int, affine: bool = True):
        super().__init__()
        self.conv_a = ReLUConvBN(c_in, c_out, 3, 2, affine)
        self.conv_b = ReLUConvBN(c_out, c_out, 3, 1, affine)
        self.downsample = nn.Sequential(nn.AvgPool2d(2, stride=2), nn.Conv2d(c_in, c_out, 1, bias=False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.downsample(x) + self.conv_b(self.conv_a(x))


class _Macro(nn.Module):
    """Stem, 3 stages of N cells at C/2C/4C with reductions between, head. Cells come from a factory."""

    def __init__(self, C: int, N: int, num_classes: int, make_cell: Callable[[int], nn.Module], affine: bool):
        super().__init__()
        if C < 1 or N < 1 or num_classes < 1:
            raise ValueError(f"C, N and num_classes must be >= 1, got C={C}, N={N}, num_classes={num_classes}")
        self.C, self.N, self.num_classes = C, N, num_classes
        self.stem = nn.Sequential(nn.Conv2d(3, C, 3, padding=1, bias=False), nn.BatchNorm2d(C))
        layers: list[nn.Module] = []
        self.cell_channels: list[int] = []  # channels of each *searchable* cell, in order
        for stage, c in enumerate(_stage_channels(C)):
            if stage > 0:
                layers.append(ResNetBlock(c // 2, c, affine))
            for _ in range(N):
                layers.append(make_cell(c))
                self.cell_channels.append(c)
        self.layers = nn.ModuleList(layers)
        self.head = nn.Sequential(nn.BatchNorm2d(4 * C), nn.ReLU(inplace=False))
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(4 * C, num_classes)
        # "auto": NHWC (channels_last) on the CPU, where oneDNN convolves it faster (measured on
        # 2 cores at C=16, N=5, batch 64: a training step 215 -> 160 ms); the input's own layout
        # elsewhere. "channels_last" / "contiguous" force one. Values are unchanged either way.
        self.memory_format = "auto"

    def _layout(self, x: torch.Tensor) -> torch.Tensor:
        fmt = self.memory_format
        if fmt == "channels_last" or (fmt == "auto" and x.device.type == "cpu"):
            return x.contiguous(memory_format=torch.channels_last)
        if fmt == "contiguous":
            return x.contiguous()
        return x

    def _logits(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(self.head(x)).flatten(1)
        return self.classifier(x)


class InferCell(nn.Module):
    """A fixed-arch cell: only the arch's ops exist (so parameters count what the arch has)."""

    def __init__(self, arch: Arch, c: int, affine: bool = True):
        super().__init__()
        self.arch = arch
        mods = [make_op(op, c, affine) for op in arch.ops]
        self.edges = nn.ModuleList([m if m is not None else nn.Identity() for m in mods])
        self.active = tuple(m is not None for m in mods)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        nodes = [x]
        k = 0
        for target in range(1, NUM_NODES):
            terms = [self.edges[k + s](nodes[s]) for s in range(target) if self.active[k + s]]
            nodes.append(_sum_node(terms, x))
            k += target
        return nodes[-1]


class Network(_Macro):
    """The standalone benchmark network of one arch (C=16, N=5 is the benchmark's)."""

    def __init__(self, arch: Arch, C: int = 16, N: int = 5, num_classes: int = 10, affine: bool = True):
        self.arch = arch
        super().__init__(C, N, num_classes, lambda c: InferCell(arch, c, affine), affine=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(self._layout(x))
        for layer in self.layers:
            x = layer(x)
        return self._logits(x)


# --------------------------------------------------------------------------- the supernet and its plans

Plan = Union[CellPlan, Sequence[CellPlan]]  # one CellPlan shared by all cells, or one per cell


def path_plan(arch: Arch) -> list[list[Term]]:
    """The single-path plan of ``arch``: each edge runs its one op with no coefficient."""
    return [[] if i == NONE else [Term(i)] for i in arch.indices]


def weighted_plan(weights: torch.Tensor, alive: torch.Tensor | None = None) -> list[list[Term]]:
    """A plan with scalar coefficient ``weights[e, o]`` for every alive, non-``none`` op.

    ``weights`` is ``(6, 5)``; ``alive`` a bool mask of the same shape (default: all). The
    ``none`` column is never run (it is zero whatever its weight).
    """
    if alive is None:
        alive = torch.ones(NUM_EDGES, len(OPS), dtype=torch.bool)
    alive = alive.cpu()
    return [[Term(o, weights[e, o]) for o in range(1, len(OPS)) if bool(alive[e, o])] for e in range(NUM_EDGES)]


class SuperCell(nn.Module):
    """Every candidate op of every edge; computes only the terms a plan names."""

    def __init__(self, c: int, affine: bool = False):
        super().__init__()
        self.channels = c
        self.edges = nn.ModuleList(
            [nn.ModuleList([make_op(op, c, affine) or nn.Identity() for op in OPS]) for _ in EDGES]
        )

    def forward(self, x: torch.Tensor, plan: CellPlan) -> torch.Tensor:
        nodes = [x]
        k = 0
        for target in range(1, NUM_NODES):
            terms = []
            for s in range(target):
                ops = cast(nn.ModuleList, self.edges[k + s])
                for term in plan[k + s]:
                    coef = term.coef
                    if term.op == NONE or (isinstance(coef, (int, float)) and coef == 0):
                        continue  # never run an op whose coefficient is zero
                    out = ops[term.op](nodes[s])
                    if term.transform is not None:
                        out = term.transform(out)
                    terms.append(out if coef is None else out * coef)
            nodes.append(_sum_node(terms, x))
            k += target
        return nodes[-1]


class SuperNet(_Macro):
    """The one weight-sharing supernet of the NB201 space.

    ``forward(x, plan)`` where ``plan`` is a ``CellPlan`` (shared by every cell) or a list of
    ``num_cells`` CellPlans (e.g. per-cell dropout draws, per-stage channel gates). Search-time
    BN inside cells has ``affine=False``; stem, reduction blocks and head keep the benchmark's
    affine BN so a path extracts to a ``Network`` exactly.
    """

    def __init__(self, C: int = 16, N: int = 5, num_classes: int = 10, affine: bool = False):
        super().__init__(C, N, num_classes, lambda c: SuperCell(c, affine), affine=True)
        self.cells = [m for m in self.layers if isinstance(m, SuperCell)]

    @property
    def num_cells(self) -> int:
        return len(self.cells)

    def forward(self, x: torch.Tensor, plan: Plan) -> torch.Tensor:
        per_cell = _per_cell(plan, self.num_cells)
        x = self.stem(self._layout(x))
        i = 0
        for layer in self.layers:
            if isinstance(layer, SuperCell):
                x = layer(x, per_cell[i] if per_cell is not None else plan)
                i += 1
            else:
                x = layer(x)
        return self._logits(x)

    def op_modules(self, edge: int, op: int) -> list[nn.Module]:
        """The module of (edge, op) in every cell — e.g. to freeze it or read its weights."""
        return [cast(nn.ModuleList, cell.edges[edge])[op] for cell in self.cells]

    def to_network(self, arch: Arch) -> Network:
        """A standalone ``Network`` of ``arch`` carrying this supernet's weights and BN statistics.

        Affine-free search BN maps to affine BN with weight 1 and bias 0, so the network computes
        exactly what ``self(x, path_plan(arch))`` computes.
        """
        net = Network(arch, self.C, self.N, self.num_classes)
        dst = net.state_dict()
        src = self.state_dict()
        for key in dst:
            parts = key.split(".")
            if parts[0] == "layers" and isinstance(self.layers[int(parts[1])], SuperCell):
                edge = int(parts[3])
                op = OPS.index(arch.ops[edge])
                src_key = ".".join(parts[:4] + [str(op)] + parts[4:])
            else:
                src_key = key
            if src_key in src:
                dst[key] = src[src_key].clone()
            elif key.endswith(".weight"):  # affine weight of a BN that is affine-free in search
                dst[key] = torch.ones_like(dst[key])
            elif key.endswith(".bias"):
                dst[key] = torch.zeros_like(dst[key])
            else:
                raise KeyError(f"no supernet tensor for network key {key} (looked for {src_key})")
        net.load_state_dict(dst)
        return net.to(next(self.parameters()).device)


def _per_cell(plan: Plan, num_cells: int) -> Sequence[CellPlan] | None:
    """``None`` if ``plan`` is one CellPlan shared by all cells, else the list of per-cell plans."""
    if len(plan) == 0:
        raise ValueError("empty plan: pass one EdgePlan per edge (6), or one CellPlan per cell")
    first = plan[0]
    is_cell_plan = len(first) == 0 or isinstance(first[0], Term)
    if is_cell_plan:
        if len(plan) != NUM_EDGES:
            raise ValueError(f"a cell plan has one entry per edge ({NUM_EDGES}), got {len(plan)}")
        return None
    if len(plan) != num_cells:
        raise ValueError(f"a per-cell plan needs one CellPlan per cell ({num_cells}), got {len(plan)}")
    return plan  # type: ignore[return-value]
