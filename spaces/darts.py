"""The DARTS search space (Liu et al., ICLR 2019): the space four of the seeds published in.

Three layers, as in ``spaces.nb201``:

* ``Genotype`` — a frozen, validated value (normal and reduction cells; each of the 4
  intermediate nodes takes 2 inputs from distinct earlier nodes, each through one of the 7
  non-``none`` ops), with the exact text the DARTS-family code prints, so a published genotype
  pastes in (``Genotype.from_str``) and prints back the same;
* ``NetworkCIFAR`` / ``NetworkImageNet`` — the evaluation networks of a genotype (affine BN,
  auxiliary head at 2/3 depth, drop-path), and their parameter and multiply-add counts;
* ``SuperNet`` — the one weight-sharing search network: 2 input nodes, 4 intermediate nodes,
  14 mixed edges per cell, normal and reduction cells (reductions at 1/3 and 2/3 of the depth),
  any depth; its forward takes a *plan* (``spaces.plan.Term`` per edge, as in NB201), one per
  cell type or one per cell. Search BN has no affine parameters, and pooling ops are followed
  by an affine-free BN as in DARTS's ``MixedOp`` (``pool_bn``).

Conventions follow the DARTS code (quark0/darts ``cnn/operations.py``, ``model.py``,
``model_search.py``): op order, node ids (0 and 1 are the cell inputs c_{k-2} and c_{k-1},
2..5 the intermediate nodes), edge order (node 2's inputs 0, 1; node 3's 0, 1, 2; ...),
``sep_conv`` = two stacked (ReLU, depthwise, pointwise, BN), ``dil_conv`` = one dilated
(ReLU, depthwise, pointwise, BN), a stride-2 ``skip_connect`` = ``FactorizedReduce``.
"""
from __future__ import annotations

import ast
import random
import re
from dataclasses import dataclass
from typing import Any, Sequence, Union, cast

import torch
import torch.nn.functional as F
from torch import nn

from spaces.measure import conv_linear_macs, deployed_params
from spaces.plan import CellPlan, EdgePlan, Term, apply_term, skipped, sum_terms

__all__ = ["PRIMITIVES", "NONE", "SKIP", "STEPS", "EDGES", "NUM_EDGES", "CELL_TYPES", "Genotype", "edge_index",
           "random_genotype", "genotype_from_weights", "NetworkCIFAR", "NetworkImageNet", "SuperNet", "path_plan",
           "weighted_plan", "count_params", "count_params_imagenet", "count_macs", "DARTS_V1", "DARTS_V2",
           "PDARTS", "Term", "EdgePlan", "CellPlan"]

PRIMITIVES: tuple[str, ...] = ("none", "max_pool_3x3", "avg_pool_3x3", "skip_connect", "sep_conv_3x3",
                               "sep_conv_5x5", "dil_conv_3x3", "dil_conv_5x5")
NONE = 0
SKIP = PRIMITIVES.index("skip_connect")
STEPS = 4                                 # intermediate nodes per cell
NODES = tuple(range(2, 2 + STEPS))        # their ids
EDGES: tuple[tuple[int, int], ...] = tuple((src, dst) for dst in NODES for src in range(dst))  # (src, dst)
NUM_EDGES = len(EDGES)                    # 14
CELL_TYPES = ("normal", "reduce")
DEFAULT_CONCAT = tuple(NODES)

DartsPlan = Union[tuple[CellPlan, CellPlan], Sequence[CellPlan]]


def edge_index(src: int, dst: int) -> int:
    """The index in ``EDGES`` of the edge ``src -> dst``."""
    try:
        return EDGES.index((src, dst))
    except ValueError:
        raise ValueError(f"no edge {src} -> {dst}: node {dst} takes inputs from nodes 0..{dst - 1} "
                         f"(intermediate nodes are {NODES[0]}..{NODES[-1]})") from None


# --------------------------------------------------------------------------- the genotype value

Cell = tuple[tuple[str, int], ...]


def _check_cell(name: str, cell: Sequence[Sequence[object]], concat: Sequence[int]) -> tuple[Cell, tuple[int, ...]]:
    entries: list[tuple[str, int]] = []
    for item in cell:
        if not isinstance(item, (tuple, list)) or len(item) != 2:
            raise ValueError(f"{name}: each entry is (op name, input node), got {item!r}")
        op, node = item
        if not isinstance(op, str) or isinstance(node, bool) or not isinstance(node, int):
            raise ValueError(f"{name}: each entry is (op name, input node), got {item!r}")
        entries.append((op, node))
    if len(entries) != 2 * STEPS:
        raise ValueError(f"{name}: a cell has {2 * STEPS} entries (2 inputs for each of the {STEPS} intermediate "
                         f"nodes), got {len(entries)}")
    for i, (op, src) in enumerate(entries):
        node = NODES[i // 2]
        if op == "none":
            raise ValueError(f"{name}: node {node} takes input {src} through 'none'; a genotype never holds 'none'")
        if op not in PRIMITIVES:
            raise ValueError(f"{name}: unknown op {op!r}; the ops are {', '.join(PRIMITIVES[1:])}")
        if not 0 <= src < node:
            raise ValueError(f"{name}: node {node} takes input {src}, but only nodes 0..{node - 1} come before it")
    for i in range(0, len(entries), 2):
        if entries[i][1] == entries[i + 1][1]:
            raise ValueError(f"{name}: node {NODES[i // 2]} takes input {entries[i][1]} twice; its 2 inputs must "
                             "come from distinct nodes")
    concat_t = tuple(int(c) for c in concat)
    if not concat_t or len(set(concat_t)) != len(concat_t) or not set(concat_t) <= set(NODES):
        raise ValueError(f"{name}_concat must be distinct intermediate nodes among {list(NODES)}, got {list(concat_t)}")
    return tuple(entries), concat_t


@dataclass(frozen=True)
class Genotype:
    """A DARTS cell pair. ``normal`` / ``reduce``: ``(op name, input node)`` × 2 per intermediate
    node, node 2's pair first; ``*_concat``: the nodes concatenated into the cell output."""

    normal: Cell
    normal_concat: tuple[int, ...]
    reduce: Cell
    reduce_concat: tuple[int, ...]

    def __post_init__(self) -> None:
        for name in CELL_TYPES:
            cell, concat = _check_cell(name, getattr(self, name), getattr(self, f"{name}_concat"))
            object.__setattr__(self, name, cell)
            object.__setattr__(self, f"{name}_concat", concat)

    @classmethod
    def from_str(cls, text: str) -> "Genotype":
        """Parse the text DARTS-family code prints (``Genotype(normal=[...], normal_concat=range(2, 6),
        reduce=[...], reduce_concat=range(2, 6))``; lists for the concats work too). Never ``eval``s."""
        body = text.strip()
        match = re.fullmatch(r"(?:\w+\.)?Genotype\s*\((.*)\)", body, flags=re.S)
        if not match:
            raise ValueError(f"a genotype looks like Genotype(normal=[...], normal_concat=..., reduce=[...], "
                             f"reduce_concat=...), got {_clip(text)}")
        inner = re.sub(r"range\(\s*(\d+)\s*,\s*(\d+)\s*\)", lambda m: repr(list(range(int(m[1]), int(m[2])))),
                       match[1])
        try:
            call = ast.parse(f"f({inner})", mode="eval").body
        except SyntaxError as err:
            raise ValueError(f"malformed genotype text ({err.msg}): {_clip(text)}") from None
        assert isinstance(call, ast.Call)
        if call.args:
            raise ValueError(f"name every genotype field (normal=..., normal_concat=..., reduce=..., reduce_concat=...): "
                             f"{_clip(text)}")
        fields: dict[str, object] = {}
        for kw in call.keywords:
            try:
                fields[str(kw.arg)] = ast.literal_eval(kw.value)
            except ValueError:
                raise ValueError(f"genotype field {kw.arg} is not a literal list: {_clip(text)}") from None
        wanted = {"normal", "normal_concat", "reduce", "reduce_concat"}
        if set(fields) != wanted:
            missing, extra = sorted(wanted - set(fields)), sorted(set(fields) - wanted)
            raise ValueError(f"a genotype has the fields {sorted(wanted)}" + (f"; missing {missing}" if missing else "")
                             + (f"; unknown {extra}" if extra else ""))
        for key in ("normal_concat", "reduce_concat"):
            if not isinstance(fields[key], (list, tuple)):
                raise ValueError(f"{key} must be range(2, 6) or a list of nodes, got {fields[key]!r}")
        for key in CELL_TYPES:
            if not isinstance(fields[key], (list, tuple)):
                raise ValueError(f"{key} must be a list of (op name, input node) pairs, got {_clip(repr(fields[key]))}")
        values = cast(dict[str, Any], fields)

        def entries(key: str) -> Any:
            return tuple(tuple(e) if isinstance(e, (list, tuple)) else e for e in values[key])

        return cls(entries("normal"), tuple(values["normal_concat"]), entries("reduce"), tuple(values["reduce_concat"]))

    def to_str(self) -> str:
        def concat(c: tuple[int, ...]) -> str:
            return f"range({c[0]}, {c[-1] + 1})" if list(c) == list(range(c[0], c[-1] + 1)) else repr(list(c))

        def cell(entries: Cell) -> str:
            return "[" + ", ".join(f"({op!r}, {node})" for op, node in entries) + "]"

        return (f"Genotype(normal={cell(self.normal)}, normal_concat={concat(self.normal_concat)}, "
                f"reduce={cell(self.reduce)}, reduce_concat={concat(self.reduce_concat)})")

    def __str__(self) -> str:
        return self.to_str()

    def cell(self, cell_type: str) -> Cell:
        if cell_type not in CELL_TYPES:
            raise ValueError(f"cell type is one of {CELL_TYPES}, got {cell_type!r}")
        return cast(Cell, getattr(self, cell_type))

    def edges(self, cell_type: str) -> list[tuple[int, int]]:
        """``(edge index, op index)`` of the cell's 8 chosen edges, in genotype order."""
        return [(edge_index(src, NODES[i // 2]), PRIMITIVES.index(op))
                for i, (op, src) in enumerate(self.cell(cell_type))]


def _clip(text: str, n: int = 120) -> str:
    flat = " ".join(str(text).split())
    return repr(flat if len(flat) <= n else flat[:n] + "...")


# Published genotypes, as in the authors' repositories (quark0/darts cnn/genotypes.py;
# chenxin061/pdarts genotypes.py).
DARTS_V1 = Genotype.from_str(
    "Genotype(normal=[('sep_conv_3x3', 1), ('sep_conv_3x3', 0), ('skip_connect', 0), ('sep_conv_3x3', 1), "
    "('skip_connect', 0), ('sep_conv_3x3', 1), ('sep_conv_3x3', 0), ('skip_connect', 2)], normal_concat=[2, 3, 4, 5], "
    "reduce=[('max_pool_3x3', 0), ('max_pool_3x3', 1), ('skip_connect', 2), ('max_pool_3x3', 0), ('max_pool_3x3', 0), "
    "('skip_connect', 2), ('skip_connect', 2), ('avg_pool_3x3', 0)], reduce_concat=[2, 3, 4, 5])")
DARTS_V2 = Genotype.from_str(
    "Genotype(normal=[('sep_conv_3x3', 0), ('sep_conv_3x3', 1), ('sep_conv_3x3', 0), ('sep_conv_3x3', 1), "
    "('sep_conv_3x3', 1), ('skip_connect', 0), ('skip_connect', 0), ('dil_conv_3x3', 2)], normal_concat=[2, 3, 4, 5], "
    "reduce=[('max_pool_3x3', 0), ('max_pool_3x3', 1), ('skip_connect', 2), ('max_pool_3x3', 1), ('max_pool_3x3', 0), "
    "('skip_connect', 2), ('skip_connect', 2), ('max_pool_3x3', 1)], reduce_concat=[2, 3, 4, 5])")
PDARTS = Genotype.from_str(
    "Genotype(normal=[('skip_connect', 0), ('dil_conv_3x3', 1), ('skip_connect', 0), ('sep_conv_3x3', 1), "
    "('sep_conv_3x3', 1), ('sep_conv_3x3', 3), ('sep_conv_3x3', 0), ('dil_conv_5x5', 4)], normal_concat=range(2, 6), "
    "reduce=[('avg_pool_3x3', 0), ('sep_conv_5x5', 1), ('sep_conv_3x3', 0), ('dil_conv_5x5', 2), ('max_pool_3x3', 0), "
    "('dil_conv_3x3', 1), ('dil_conv_3x3', 1), ('dil_conv_5x5', 3)], reduce_concat=range(2, 6))")


def random_genotype(rng: random.Random) -> Genotype:
    """Per intermediate node 2 distinct inputs uniformly, each through a uniform non-``none`` op."""
    def cell() -> Cell:
        out: list[tuple[str, int]] = []
        for node in NODES:
            for src in sorted(rng.sample(range(node), 2)):
                out.append((rng.choice(PRIMITIVES[1:]), src))
        return tuple(out)

    return Genotype(cell(), DEFAULT_CONCAT, cell(), DEFAULT_CONCAT)


def _parse_cell(weights: torch.Tensor, alive: torch.Tensor | None) -> Cell:
    w = weights.detach().double().cpu().clone()
    if alive is not None:
        w[~alive.cpu().bool()] = float("-inf")
    w[:, NONE] = float("-inf")
    out: list[tuple[str, int]] = []
    for node in NODES:
        cands = []
        for src in range(node):
            e = edge_index(src, node)
            best = int(torch.argmax(w[e]))
            cands.append((float(w[e, best]), -src, src, best))
        cands.sort(reverse=True)
        if cands[1][0] == float("-inf"):
            raise ValueError(f"node {node} has fewer than 2 input edges with a non-none op alive")
        out.extend((PRIMITIVES[op], src) for _, _, src, op in sorted(cands[:2], key=lambda c: c[2]))
    return tuple(out)


def genotype_from_weights(normal: torch.Tensor, reduce: torch.Tensor, alive_normal: torch.Tensor | None = None,
                          alive_reduce: torch.Tensor | None = None) -> Genotype:
    """DARTS's parse: per edge its strongest non-``none`` op (among the alive ones); per node the
    2 edges whose op is strongest. ``normal`` / ``reduce``: ``(14, 8)`` weights (any scale)."""
    for name, w in (("normal", normal), ("reduce", reduce)):
        if tuple(w.shape) != (NUM_EDGES, len(PRIMITIVES)):
            raise ValueError(f"{name} weights must be ({NUM_EDGES}, {len(PRIMITIVES)}), got {tuple(w.shape)}")
    return Genotype(_parse_cell(normal, alive_normal), DEFAULT_CONCAT, _parse_cell(reduce, alive_reduce),
                    DEFAULT_CONCAT)


# --------------------------------------------------------------------------- operations


class ReLUConvBN(nn.Sequential):
    def __init__(self, c_in: int, c_out: int, kernel: int, stride: int, padding: int, affine: bool):
        super().__init__(nn.ReLU(inplace=False), nn.Conv2d(c_in, c_out, kernel, stride, padding, bias=False),
                         nn.BatchNorm2d(c_out, affine=affine))


class DilConv(nn.Sequential):
    def __init__(self, c_in: int, c_out: int, kernel: int, stride: int, padding: int, dilation: int, affine: bool):
        super().__init__(nn.ReLU(inplace=False),
                         nn.Conv2d(c_in, c_in, kernel, stride, padding, dilation=dilation, groups=c_in, bias=False),
                         nn.Conv2d(c_in, c_out, 1, bias=False), nn.BatchNorm2d(c_out, affine=affine))


class SepConv(nn.Sequential):
    def __init__(self, c_in: int, c_out: int, kernel: int, stride: int, padding: int, affine: bool):
        super().__init__(DilConv(c_in, c_in, kernel, stride, padding, 1, affine),
                         DilConv(c_in, c_out, kernel, 1, padding, 1, affine))


class FactorizedReduce(nn.Module):
    """Stride-2 1x1 convs on two pixel grids offset by one, concatenated (DARTS)."""

    def __init__(self, c_in: int, c_out: int, affine: bool):
        super().__init__()
        if c_out % 2:
            raise ValueError(f"FactorizedReduce needs an even number of output channels, got {c_out}")
        self.relu = nn.ReLU(inplace=False)
        self.conv_1 = nn.Conv2d(c_in, c_out // 2, 1, stride=2, bias=False)
        self.conv_2 = nn.Conv2d(c_in, c_out // 2, 1, stride=2, bias=False)
        self.bn = nn.BatchNorm2d(c_out, affine=affine)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(x)
        return self.bn(torch.cat([self.conv_1(x), self.conv_2(x[:, :, 1:, 1:])], dim=1))


def make_op(op: str, c: int, stride: int, affine: bool, pool_bn: bool = False) -> nn.Module | None:
    """The module of a DARTS op on ``c`` channels; ``None`` for ``none`` (it contributes nothing)."""
    if op == "none":
        return None
    module: nn.Module
    if op == "avg_pool_3x3":
        module = nn.AvgPool2d(3, stride=stride, padding=1, count_include_pad=False)
    elif op == "max_pool_3x3":
        module = nn.MaxPool2d(3, stride=stride, padding=1)
    elif op == "skip_connect":
        return nn.Identity() if stride == 1 else FactorizedReduce(c, c, affine)
    elif op == "sep_conv_3x3":
        return SepConv(c, c, 3, stride, 1, affine)
    elif op == "sep_conv_5x5":
        return SepConv(c, c, 5, stride, 2, affine)
    elif op == "dil_conv_3x3":
        return DilConv(c, c, 3, stride, 2, 2, affine)
    elif op == "dil_conv_5x5":
        return DilConv(c, c, 5, stride, 4, 2, affine)
    else:
        raise ValueError(f"unknown op {op!r}; the ops are {', '.join(PRIMITIVES)}")
    # pooling: DARTS's search MixedOp follows it with an affine-free BN (pool_bn)
    return nn.Sequential(module, nn.BatchNorm2d(c, affine=affine)) if pool_bn else nn.Sequential(module)


def drop_path(x: torch.Tensor, p: float) -> torch.Tensor:
    """Zero whole samples with probability ``p`` and rescale the rest by 1/(1-p) (DARTS's drop-path)."""
    keep = 1.0 - p
    mask = torch.empty(x.shape[0], 1, 1, 1, device=x.device, dtype=x.dtype).bernoulli_(keep)
    return x / keep * mask


def _preprocess(c_prev_prev: int, c_prev: int, c: int, reduction_prev: bool, affine: bool) -> tuple[nn.Module, nn.Module]:
    pre0 = FactorizedReduce(c_prev_prev, c, affine) if reduction_prev else ReLUConvBN(c_prev_prev, c, 1, 1, 0, affine)
    return pre0, ReLUConvBN(c_prev, c, 1, 1, 0, affine)


def _layout(layers: int) -> list[bool]:
    """Which cells reduce: those at ``layers // 3`` and ``2 * layers // 3`` (DARTS)."""
    if layers < 3:
        raise ValueError(f"a DARTS network needs >= 3 cells (reductions at 1/3 and 2/3 of the depth), got {layers}")
    return [i in (layers // 3, 2 * layers // 3) for i in range(layers)]


# --------------------------------------------------------------------------- evaluation networks


class EvalCell(nn.Module):
    def __init__(self, genotype: Genotype, c_prev_prev: int, c_prev: int, c: int, reduction: bool,
                 reduction_prev: bool, affine: bool = True, pool_bn: bool = False):
        super().__init__()
        self.reduction = reduction
        self.preprocess0, self.preprocess1 = _preprocess(c_prev_prev, c_prev, c, reduction_prev, affine)
        cell = genotype.reduce if reduction else genotype.normal
        self.concat = genotype.reduce_concat if reduction else genotype.normal_concat
        self.indices = [src for _, src in cell]
        self.ops = nn.ModuleList([cast(nn.Module, make_op(op, c, 2 if reduction and src < 2 else 1, affine, pool_bn))
                                  for op, src in cell])
        self.multiplier = len(self.concat)

    def forward(self, s0: torch.Tensor, s1: torch.Tensor, drop_prob: float) -> torch.Tensor:
        states = [self.preprocess0(s0), self.preprocess1(s1)]
        for i in range(STEPS):
            hs = []
            for j in (2 * i, 2 * i + 1):
                op = self.ops[j]
                h = op(states[self.indices[j]])
                if self.training and drop_prob > 0 and not isinstance(op, nn.Identity):
                    h = drop_path(h, drop_prob)
                hs.append(h)
            states.append(hs[0] + hs[1])
        return torch.cat([states[i] for i in self.concat], dim=1)


class AuxiliaryHeadCIFAR(nn.Module):
    """DARTS's auxiliary classifier on an 8x8 feature map."""

    def __init__(self, c: int, num_classes: int):
        super().__init__()
        self.features = nn.Sequential(
            nn.ReLU(inplace=False), nn.AvgPool2d(5, stride=3, padding=0, count_include_pad=False),
            nn.Conv2d(c, 128, 1, bias=False), nn.BatchNorm2d(128), nn.ReLU(inplace=False),
            nn.Conv2d(128, 768, 2, bias=False), nn.BatchNorm2d(768), nn.ReLU(inplace=False))
        self.classifier = nn.Linear(768, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x).flatten(1))


class AuxiliaryHeadImageNet(nn.Module):
    """DARTS's auxiliary classifier on a 14x14 feature map (no BN after the 2x2 conv, as published)."""

    def __init__(self, c: int, num_classes: int):
        super().__init__()
        self.features = nn.Sequential(
            nn.ReLU(inplace=False), nn.AvgPool2d(5, stride=2, padding=0, count_include_pad=False),
            nn.Conv2d(c, 128, 1, bias=False), nn.BatchNorm2d(128), nn.ReLU(inplace=False),
            nn.Conv2d(128, 768, 2, bias=False), nn.ReLU(inplace=False))
        self.classifier = nn.Linear(768, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x).flatten(1))


class _EvalNetwork(nn.Module):
    """Cells of a genotype between a stem and a global-pool classifier; ``forward`` -> logits,
    ``forward_aux`` -> (logits, auxiliary logits in training mode with ``auxiliary``, else None)."""

    stem: nn.Module
    auxiliary_head: nn.Module | None
    num_classes: int
    drop_path_prob: float

    def _build_cells(self, genotype: Genotype, c: int, layers: int, c_stem: tuple[int, int], reduction_prev: bool,
                     pool_bn: bool) -> int:
        c_prev_prev, c_prev = c_stem
        c_curr = c
        self.cells = nn.ModuleList()
        self.aux_at = 2 * layers // 3
        c_aux = c_prev
        for i, reduction in enumerate(_layout(layers)):
            if reduction:
                c_curr *= 2
            cell = EvalCell(genotype, c_prev_prev, c_prev, c_curr, reduction, reduction_prev, True, pool_bn)
            reduction_prev = reduction
            self.cells.append(cell)
            c_prev_prev, c_prev = c_prev, cell.multiplier * c_curr
            if i == self.aux_at:
                c_aux = c_prev
        self.classifier = nn.Linear(c_prev, self.num_classes)
        return c_aux

    def _stems(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        s = self.stem(x)
        return s, s

    def forward_aux(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        s0, s1 = self._stems(x)
        aux = None
        for i, cell in enumerate(self.cells):
            s0, s1 = s1, cell(s0, s1, self.drop_path_prob)
            if i == self.aux_at and self.auxiliary_head is not None and self.training:
                aux = self.auxiliary_head(s1)
        out = F.adaptive_avg_pool2d(s1, 1).flatten(1)
        return self.classifier(out), aux

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_aux(x)[0]


class NetworkCIFAR(_EvalNetwork):
    """The CIFAR evaluation network (DARTS: C=36, 20 cells; stem 3C; reductions at 1/3, 2/3)."""

    def __init__(self, genotype: Genotype, C: int = 36, layers: int = 20, num_classes: int = 10,
                 auxiliary: bool = False, drop_path_prob: float = 0.0, pool_bn: bool = False,
                 stem_multiplier: int = 3):
        super().__init__()
        self.genotype, self.C, self.layers, self.num_classes = genotype, C, layers, num_classes
        self.drop_path_prob = drop_path_prob
        c_stem = stem_multiplier * C
        self.stem = nn.Sequential(nn.Conv2d(3, c_stem, 3, padding=1, bias=False), nn.BatchNorm2d(c_stem))
        c_aux = self._build_cells(genotype, C, layers, (c_stem, c_stem), False, pool_bn)
        self.auxiliary_head = AuxiliaryHeadCIFAR(c_aux, num_classes) if auxiliary else None


class NetworkImageNet(_EvalNetwork):
    """The ImageNet mobile network (DARTS: C=48, 14 cells, 224 px): two stems, 224 -> 28 px."""

    def __init__(self, genotype: Genotype, C: int = 48, layers: int = 14, num_classes: int = 1000,
                 auxiliary: bool = False, drop_path_prob: float = 0.0, pool_bn: bool = False):
        super().__init__()
        self.genotype, self.C, self.layers, self.num_classes = genotype, C, layers, num_classes
        self.drop_path_prob = drop_path_prob
        self.stem0 = nn.Sequential(
            nn.Conv2d(3, C // 2, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(C // 2), nn.ReLU(inplace=True),
            nn.Conv2d(C // 2, C, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(C))
        self.stem1 = nn.Sequential(nn.ReLU(inplace=True), nn.Conv2d(C, C, 3, stride=2, padding=1, bias=False),
                                   nn.BatchNorm2d(C))
        self.stem = self.stem0
        c_aux = self._build_cells(genotype, C, layers, (C, C), True, pool_bn)
        self.auxiliary_head = AuxiliaryHeadImageNet(c_aux, num_classes) if auxiliary else None

    def _stems(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        s0 = self.stem0(x)
        return s0, self.stem1(s0)


def count_params(genotype: Genotype, C: int = 36, layers: int = 20, num_classes: int = 10) -> int:
    """Parameters of the CIFAR evaluation network, auxiliary head excluded (as DARTS counts)."""
    return deployed_params(NetworkCIFAR(genotype, C, layers, num_classes))


def count_params_imagenet(genotype: Genotype, C: int = 48, layers: int = 14, num_classes: int = 1000) -> int:
    """Parameters of the ImageNet mobile network, auxiliary head excluded."""
    return deployed_params(NetworkImageNet(genotype, C, layers, num_classes))


def count_macs(genotype: Genotype, C: int = 48, layers: int = 14, num_classes: int = 1000, resolution: int = 224,
               network: str = "imagenet") -> int:
    """Multiply-adds of one image's forward pass: convolutions and the classifier (BN, pooling,
    ReLU and additions not counted — the convention of the multiply-add counts the papers print)."""
    if network not in ("imagenet", "cifar"):
        raise ValueError(f"network is 'imagenet' or 'cifar', got {network!r}")
    model: nn.Module = (NetworkImageNet(genotype, C, layers, num_classes) if network == "imagenet"
                        else NetworkCIFAR(genotype, C, layers, num_classes))
    return conv_linear_macs(model, resolution, "cpu")


# --------------------------------------------------------------------------- the search supernet


def path_plan(genotype: Genotype) -> tuple[list[list[Term]], list[list[Term]]]:
    """The single-path plan of ``genotype``: its 8 edges per cell type, each its one op."""
    def cell(cell_type: str) -> list[list[Term]]:
        plan: list[list[Term]] = [[] for _ in EDGES]
        for e, op in genotype.edges(cell_type):
            plan[e].append(Term(op))
        return plan

    return cell("normal"), cell("reduce")


def weighted_plan(w_normal: torch.Tensor, w_reduce: torch.Tensor, alive_normal: torch.Tensor | None = None,
                  alive_reduce: torch.Tensor | None = None) -> tuple[list[list[Term]], list[list[Term]]]:
    """A scalar coefficient ``w[e, o]`` for every alive non-``none`` op of every edge, per cell type."""
    def cell(w: torch.Tensor, alive: torch.Tensor | None) -> list[list[Term]]:
        mask = torch.ones(NUM_EDGES, len(PRIMITIVES), dtype=torch.bool) if alive is None else alive.cpu().bool()
        return [[Term(o, w[e, o]) for o in range(1, len(PRIMITIVES)) if bool(mask[e, o])] for e in range(NUM_EDGES)]

    return cell(w_normal, alive_normal), cell(w_reduce, alive_reduce)


Candidates = dict[str, Sequence[Sequence[int]]]


class SearchCell(nn.Module):
    """Every candidate op of every edge (or the ``candidates`` subset); runs the terms a plan names."""

    def __init__(self, c_prev_prev: int, c_prev: int, c: int, reduction: bool, reduction_prev: bool,
                 ops: Sequence[Sequence[int]], affine: bool, pool_bn: bool):
        super().__init__()
        self.reduction = reduction
        self.preprocess0, self.preprocess1 = _preprocess(c_prev_prev, c_prev, c, reduction_prev, affine)
        self.edges = nn.ModuleList()
        for e, (src, _dst) in enumerate(EDGES):
            stride = 2 if reduction and src < 2 else 1
            built = [make_op(PRIMITIVES[o], c, stride, affine, pool_bn) if o in ops[e] else None
                     for o in range(len(PRIMITIVES))]
            self.edges.append(nn.ModuleList([m if m is not None else nn.Identity() for m in built]))
        self.built = [frozenset(o for o in ops[e] if o != NONE) for e in range(NUM_EDGES)]
        self.multiplier = STEPS

    def forward(self, s0: torch.Tensor, s1: torch.Tensor, plan: CellPlan) -> torch.Tensor:
        states = [self.preprocess0(s0), self.preprocess1(s1)]
        e = 0
        for node in NODES:
            terms = []
            for src in range(node):
                ops = cast(nn.ModuleList, self.edges[e])
                for term in plan[e]:
                    if term.op == NONE or skipped(term):
                        continue
                    if term.op not in self.built[e]:
                        raise ValueError(f"the plan runs {PRIMITIVES[term.op]} on edge {src}->{node}, which this "
                                         "supernet did not build (see its candidates)")
                    terms.append(apply_term(ops[term.op], states[src], term))
                e += 1
            like = states[1] if not self.reduction else states[1][:, :, ::2, ::2]
            states.append(sum_terms(terms, like))
        return torch.cat(states[2:], dim=1)


class SuperNet(nn.Module):
    """The one weight-sharing supernet of the DARTS space.

    ``forward(x, plan)``: ``plan`` is ``(normal CellPlan, reduce CellPlan)`` shared by all cells of
    each type, or a list of ``num_cells`` CellPlans (one per cell: per-cell dropout draws). A
    CellPlan has one EdgePlan per edge of ``EDGES``. ``candidates`` (``{"normal": [[ops] * 14],
    "reduce": ...}``) builds only those ops per edge: P-DARTS's later stages allocate nothing for
    the ops they dropped. Stem and classifier are affine, as in DARTS's search model.
    """

    def __init__(self, C: int = 16, layers: int = 8, num_classes: int = 10, stem_multiplier: int = 3,
                 candidates: Candidates | None = None, pool_bn: bool = True, affine: bool = False):
        super().__init__()
        self.C, self.layers, self.num_classes = C, layers, num_classes
        self.pool_bn, self.affine = pool_bn, affine
        every = [list(range(len(PRIMITIVES)))] * NUM_EDGES
        self.candidates: dict[str, list[list[int]]] = {
            t: [sorted(set(int(o) for o in ops)) for ops in (candidates or {}).get(t, every)] for t in CELL_TYPES}
        for t, ops in self.candidates.items():
            if len(ops) != NUM_EDGES:
                raise ValueError(f"candidates[{t!r}] needs one op list per edge ({NUM_EDGES}), got {len(ops)}")
            if any(not 0 <= o < len(PRIMITIVES) for edge in ops for o in edge):
                raise ValueError(f"candidates[{t!r}] holds an op index outside 0..{len(PRIMITIVES) - 1}")
        c_stem = stem_multiplier * C
        self.stem = nn.Sequential(nn.Conv2d(3, c_stem, 3, padding=1, bias=False), nn.BatchNorm2d(c_stem))
        c_prev_prev, c_prev, c_curr = c_stem, c_stem, C
        reduction_prev = False
        self.cells = nn.ModuleList()
        self.cell_types: list[str] = []
        for reduction in _layout(layers):
            if reduction:
                c_curr *= 2
            kind = "reduce" if reduction else "normal"
            cell = SearchCell(c_prev_prev, c_prev, c_curr, reduction, reduction_prev, self.candidates[kind], affine,
                              pool_bn)
            self.cells.append(cell)
            self.cell_types.append(kind)
            reduction_prev = reduction
            c_prev_prev, c_prev = c_prev, cell.multiplier * c_curr
        self.classifier = nn.Linear(c_prev, num_classes)

    @property
    def num_cells(self) -> int:
        return len(self.cells)

    def _per_cell(self, plan: DartsPlan) -> list[CellPlan]:
        if len(plan) == 2 and all(len(p) == NUM_EDGES and (len(p[0]) == 0 or isinstance(p[0][0], Term))
                                  for p in plan) and self.num_cells != 2:
            by_type = {"normal": plan[0], "reduce": plan[1]}
            return [by_type[t] for t in self.cell_types]
        if len(plan) != self.num_cells:
            raise ValueError(f"a plan is (normal CellPlan, reduce CellPlan) or one CellPlan per cell "
                             f"({self.num_cells}), got {len(plan)} entries")
        for i, p in enumerate(plan):
            if len(p) != NUM_EDGES:
                raise ValueError(f"cell {i}'s plan needs one EdgePlan per edge ({NUM_EDGES}), got {len(p)}")
        return list(plan)

    def forward(self, x: torch.Tensor, plan: DartsPlan) -> torch.Tensor:
        per_cell = self._per_cell(plan)
        s0 = s1 = self.stem(x)
        for cell, cell_plan in zip(self.cells, per_cell):
            s0, s1 = s1, cell(s0, s1, cell_plan)
        return self.classifier(F.adaptive_avg_pool2d(s1, 1).flatten(1))

    def op_modules(self, cell_type: str, edge: int, op: int) -> list[nn.Module]:
        """The module of (edge, op) in every cell of ``cell_type``."""
        return [cast(nn.ModuleList, cast(SearchCell, cell).edges[edge])[op]
                for cell, t in zip(self.cells, self.cell_types) if t == cell_type]

    def to_network(self, genotype: Genotype) -> NetworkCIFAR:
        """A standalone ``NetworkCIFAR`` of ``genotype`` carrying this supernet's weights and BN
        statistics (affine-free BN -> weight 1, bias 0): in eval mode it computes exactly what
        ``self(x, path_plan(genotype))`` computes."""
        if list(genotype.normal_concat) != list(NODES) or list(genotype.reduce_concat) != list(NODES):
            raise ValueError("the supernet concatenates every intermediate node: the genotype's concat must be 2..5")
        net = NetworkCIFAR(genotype, self.C, self.layers, self.num_classes, pool_bn=self.pool_bn)
        src = self.state_dict()
        dst = net.state_dict()
        for key in dst:
            parts = key.split(".")
            src_key = key
            if parts[0] == "cells" and parts[2] == "ops":
                cell = cast(EvalCell, net.cells[int(parts[1])])
                kind = "reduce" if cell.reduction else "normal"
                e, op = genotype.edges(kind)[int(parts[3])]
                src_key = ".".join(parts[:2] + ["edges", str(e), str(op)] + parts[4:])
            if src_key in src:
                dst[key] = src[src_key].clone()
            elif key.endswith(".weight"):
                dst[key] = torch.ones_like(dst[key])
            elif key.endswith(".bias"):
                dst[key] = torch.zeros_like(dst[key])
            else:
                raise KeyError(f"no supernet tensor for network key {key} (looked for {src_key})")
        net.load_state_dict(dst)
        return net.to(next(self.parameters()).device)
