"""The ONNX families' models: an MLP, a conv block and an attention block, built with ``onnx`` (imported
only here, when a model is built) for ``iree-import-onnx`` to turn into torch-dialect MLIR."""

from __future__ import annotations

import math
import zlib
from collections.abc import Callable
from typing import Any

import numpy as np

from training.collect.mlir.sweep import ProgramSpec


class _Graph:
    """The inputs, initializers and nodes of one graph, in the order they are added."""

    def __init__(self, spec: ProgramSpec) -> None:
        from onnx import TensorProto

        self.elem = TensorProto.FLOAT if spec.dtype == "f32" else TensorProto.FLOAT16
        self.np_dtype = np.float32 if spec.dtype == "f32" else np.float16
        self.rng = np.random.default_rng(zlib.crc32(spec.key.encode()))
        self.inputs: list[Any] = []
        self.inits: list[Any] = []
        self.nodes: list[Any] = []

    def inp(self, name: str, shape: list[int]) -> str:
        from onnx import helper

        self.inputs.append(helper.make_tensor_value_info(name, self.elem, shape))
        return name

    def init(self, name: str, array: np.ndarray) -> str:
        from onnx import numpy_helper

        self.inits.append(numpy_helper.from_array(array, name))
        return name

    def bias(self, name: str, size: int) -> str:
        """A random bias of ``size`` (from the generator seeded by the program's key) as an initializer."""
        return self.init(name, self.rng.standard_normal(size).astype(self.np_dtype))

    def node(self, op: str, ins: list[str], out: str, **attrs: Any) -> str:
        from onnx import helper

        self.nodes.append(helper.make_node(op, ins, [out], **attrs))
        return out


def _mlp(g: _Graph, spec: ProgramSpec) -> list[int]:
    """MatMul + Add per layer, the activation between layers; returns the output shape."""
    batch, widths, act = spec.p("batch"), spec.p("widths"), spec.p("act")
    h = g.inp("x", [batch, widths[0]])
    for i, (a, b) in enumerate(zip(widths, widths[1:], strict=False)):
        h = g.node("MatMul", [h, g.inp(f"w{i}", [a, b])], f"mm{i}")
        h = g.node("Add", [h, g.bias(f"b{i}", b)], f"add{i}")
        if i < len(widths) - 2:
            h = g.node(act, [h], f"act{i}")
    return [batch, widths[-1]]


def _conv_block(g: _Graph, spec: ProgramSpec) -> list[int]:
    """Conv + Relu, optionally a second Conv + Relu and a 2x2 MaxPool; returns the output shape."""
    n, hw, cin, cout, k = (spec.p(x) for x in ("n", "hw", "cin", "cout", "kernel"))
    pads = [k // 2] * 4
    h = g.inp("x", [n, cin, hw, hw])
    bias = g.bias("b0", cout)
    h = g.node("Conv", [h, g.inp("w0", [cout, cin, k, k]), bias], "conv0", pads=pads, kernel_shape=[k, k])
    h = g.node("Relu", [h], "relu0")
    size = hw
    if spec.p("second"):
        bias1 = g.bias("b1", cout)
        h = g.node(
            "Conv", [h, g.inp("w1", [cout, cout, k, k]), bias1], "conv1", pads=pads, kernel_shape=[k, k]
        )
        h = g.node("Relu", [h], "relu1")
    if spec.p("pool") and size >= 2:
        h = g.node("MaxPool", [h], "pool", kernel_shape=[2, 2], strides=[2, 2])
        size //= 2
    return [n, cout, size, size]


def _attention(g: _Graph, spec: ProgramSpec) -> list[int]:
    """Multi-head self-attention (Q, K, V and output projections), optionally with the residual; returns
    the output shape."""
    seq, heads, hd = spec.p("seq"), spec.p("heads"), spec.p("head_dim")
    d = heads * hd
    x = g.inp("x", [1, seq, d])
    split = g.init("split_shape", np.array([1, seq, heads, hd], dtype=np.int64))
    merge = g.init("merge_shape", np.array([1, seq, d], dtype=np.int64))
    scale = g.init("scale", np.array(1.0 / math.sqrt(hd), dtype=g.np_dtype))
    proj = {}
    for name in ("q", "k", "v"):
        p = g.node("MatMul", [x, g.inp(f"w{name}", [d, d])], f"{name}_proj")
        proj[name] = g.node("Reshape", [p, split], f"{name}_heads")
    q = g.node("Transpose", [proj["q"]], "q_t", perm=[0, 2, 1, 3])
    kt = g.node("Transpose", [proj["k"]], "k_t", perm=[0, 2, 3, 1])
    v = g.node("Transpose", [proj["v"]], "v_t", perm=[0, 2, 1, 3])
    scores = g.node("Mul", [g.node("MatMul", [q, kt], "qk"), scale], "scores")
    probs = g.node("Softmax", [scores], "probs", axis=-1)
    ctx = g.node("Transpose", [g.node("MatMul", [probs, v], "ctx")], "ctx_t", perm=[0, 2, 1, 3])
    h = g.node("MatMul", [g.node("Reshape", [ctx, merge], "ctx_m"), g.inp("wo", [d, d])], "out_proj")
    if spec.p("residual"):
        h = g.node("Add", [h, x], "residual")
    return [1, seq, d]


_GRAPHS: dict[str, Callable[[_Graph, ProgramSpec], list[int]]] = {
    "onnx_mlp": _mlp,
    "onnx_conv_block": _conv_block,
    "onnx_attention": _attention,
}


def build_onnx(spec: ProgramSpec) -> Any:
    """The ``onnx.ModelProto`` of an ONNX-family program (graph and function name ``main``). Weights are
    graph inputs (so the text stays small); biases and shape constants are initializers, which the
    importer writes as ``dense_resource`` blobs as real exported models have."""
    import onnx
    from onnx import helper

    build = _GRAPHS.get(spec.family)
    if build is None:
        raise ValueError(f"{spec.family!r} is not an ONNX family")
    g = _Graph(spec)
    out_shape = build(g, spec)
    g.nodes[-1].output[0] = "y"
    graph = helper.make_graph(
        g.nodes, "main", g.inputs, [helper.make_tensor_value_info("y", g.elem, out_shape)], g.inits
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model)
    return model
