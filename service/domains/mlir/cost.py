"""What one linalg or ONNX op costs, estimated from its operand types: FLOPs, bytes and loop shape.

Part of the math behind :data:`service.domains.mlir.features.FEATURE_VERSION`: change it → bump the version.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from typing import NamedTuple

from service.domains.mlir.text import IN_OUT, TensorType, parse_types

# Op classes for the FLOP/byte split; the names are the last component (linalg.X, onnx.X).
CONTRACTIONS = {"matmul", "batch_matmul", "MatMul", "Gemm"}
CONVOLUTIONS = {"conv_2d_nhwc_hwcf", "depthwise_conv_2d_nhwc_hwc", "Conv"}
POOLING = {"pooling_nhwc_max", "pooling_nhwc_sum", "MaxPool", "AveragePool"}
MOVEMENT = {"transpose", "Transpose", "Reshape", "broadcast", "fill"}
# FLOPs per output element of ONNX elementwise / normalisation ops (exp-like functions count as several).
ONNX_ELEMENT_FLOPS = {
    "Add": 1,
    "Sub": 1,
    "Mul": 1,
    "Div": 1,
    "Relu": 1,
    "Tanh": 8,
    "Sigmoid": 8,
    "Softmax": 12,
    "LayerNormalization": 10,
    "Gelu": 12,
}
# ONNX ops that are folded or free at run time (no FLOPs, no traffic counted).
ONNX_FREE = {"Constant", "Shape", "Identity"}

_PERMUTATION = re.compile(r"permutation\s*=\s*\[([\d,\s]*)\]")
_ITERATORS = re.compile(r"iterator_types\s*=\s*\[([^\]]*)\]")


class OpCost(NamedTuple):
    """What one linalg or ONNX op costs and how its loops are shaped."""

    flops: float
    nbytes: float
    cls: str
    k: float = 0.0  # reduction size of a contraction
    mn: float = 0.0  # min(m, n) of a contraction
    window: float = 0.0  # what a convolution or pooling reduces over per output element
    inner: int = 0  # innermost extent of the first input


def innermost(ins: Sequence[TensorType]) -> int:
    return ins[0].shape[-1] if ins and ins[0].shape else 0


def linalg_cost(name: str, line: str) -> OpCost:
    """Cost of one linalg statement from its ``ins``/``outs`` types."""
    m = IN_OUT.search(line)
    if not m:
        return OpCost(0.0, 0.0, "other")
    ins, outs = parse_types(m.group(1)), parse_types(m.group(2))
    nbytes = sum(t.nbytes for t in ins) + sum(t.nbytes for t in outs)
    inner = innermost(ins)
    out = outs[0] if outs else None
    short = name.split(".", 1)[1]
    if out is None:
        return OpCost(0.0, nbytes, "other", inner=inner)
    if short in CONTRACTIONS and ins:
        k = float(ins[0].shape[-1]) if ins[0].shape else 1.0
        mn = float(min(out.shape[-2:])) if len(out.shape) >= 2 else 1.0
        return OpCost(2.0 * out.elements * k, nbytes, "contraction", k, mn, inner=inner)
    if short in CONVOLUTIONS and len(ins) > 1:
        # Filter HWCF (full) or HWC (depthwise): all but the last dimension are reduced over.
        window = float(math.prod(ins[1].shape[:-1]))
        return OpCost(2.0 * out.elements * window, nbytes, "conv", window=window, inner=inner)
    if short in POOLING and len(ins) > 1:
        window = ins[1].elements
        return OpCost(out.elements * window, nbytes, "pool", window=window, inner=inner)
    if short == "transpose" and ins and _relabels_unit_dims(ins[0].shape, line):
        return OpCost(0.0, 0.0, "reshape", inner=inner)
    if short in MOVEMENT:
        return OpCost(0.0, nbytes, "movement", inner=inner)
    return OpCost(0.0, nbytes, "generic", inner=inner)


def _relabels_unit_dims(shape: tuple[int, ...], line: str) -> bool:
    """A transpose that keeps every dimension larger than 1 in order only renames unit dimensions: a
    reshape, which compilers fold into a view (IREE emits no dispatch for it)."""
    m = _PERMUTATION.search(line)
    if not m:
        return False
    perm = [int(p) for p in m.group(1).split(",") if p.strip()]
    if sorted(perm) != list(range(len(shape))):
        return False
    moved = [p for p in perm if shape[p] != 1]
    return moved == sorted(moved)


def reduces_only_unit_dims(line: str, shape: tuple[int, ...]) -> bool:
    """A linalg.generic whose every reduction dimension has extent 1 combines each element with the
    init value once: with a single body op it is a copy (or a reshape), which compilers fold."""
    m = _ITERATORS.search(line)
    if not m:
        return False
    kinds = re.findall(r'"(\w+)"', m.group(1))
    if len(kinds) != len(shape) or "reduction" not in kinds:
        return False
    return all(extent == 1 for kind, extent in zip(kinds, shape, strict=True) if kind == "reduction")


def onnx_cost(name: str, line: str) -> OpCost:
    """Cost of one ONNX op from its ``(operand types) -> result type``."""
    sig = line.rsplit(") : (", 1)
    types = parse_types(sig[1] if len(sig) == 2 else line)
    if not types:
        return OpCost(0.0, 0.0, "other")
    out, ins = types[-1], types[:-1]
    nbytes = sum(t.nbytes for t in types)
    inner = innermost(ins)
    short = name.split(".", 1)[1]
    if short in CONTRACTIONS and ins:
        k = float(ins[0].shape[-1]) if ins[0].shape else 1.0
        mn = float(min(out.shape[-2:])) if len(out.shape) >= 2 else 1.0
        return OpCost(2.0 * out.elements * k, nbytes, "contraction", k, mn, inner=inner)
    if short in CONVOLUTIONS and len(ins) > 1:
        # Weights FCHW: each output element reduces over C x H x W.
        window = float(math.prod(ins[1].shape[1:]))
        return OpCost(2.0 * out.elements * window, nbytes, "conv", window=window, inner=inner)
    if short in POOLING and ins:
        return OpCost(ins[0].elements, nbytes, "pool", inner=inner)
    if short in MOVEMENT:
        return OpCost(0.0, nbytes, "movement", inner=inner)
    if short in ONNX_FREE:
        return OpCost(0.0, 0.0, "other", inner=inner)
    if short in ONNX_ELEMENT_FLOPS:
        cls = "reduction" if short in ("Softmax", "LayerNormalization") else "elementwise"
        return OpCost(ONNX_ELEMENT_FLOPS[short] * out.elements, nbytes, cls, inner=inner)
    return OpCost(out.elements, nbytes, "elementwise", inner=inner)
