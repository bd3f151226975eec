"""MLIR text of the linalg families: linalg on tensors with the func, arith, math and tensor dialects,
one renderer per family (softmax and layer-norm are :mod:`.norm`'s)."""

from __future__ import annotations

from collections.abc import Callable

from training.collect.mlir.builder import (
    NEG_INF,
    Builder,
    acc_dtype,
    activation,
    cast,
    ident_map,
    local_names,
    module,
    tensor,
    zero,
)
from training.collect.mlir.norm import render_norm
from training.collect.mlir.sweep import BINARY, FLOAT_ELEMENTWISE, INT_ELEMENTWISE, ProgramSpec


def _matmul_like(spec: ProgramSpec, b: Builder) -> tuple[list[tuple[str, str]], str, tuple[int, ...]]:
    """The contraction of the matmul families; returns (args, result name, result shape)."""
    dt, acc = spec.dtype, acc_dtype(spec.dtype)
    fam = spec.family
    out_shape: tuple[int, ...]
    if fam == "batch_matmul":
        bb, m, n, k = (spec.p(x) for x in ("b", "m", "n", "k"))
        a_t, b_t, out_shape = tensor((bb, m, k), dt), tensor((bb, k, n), dt), (bb, m, n)
    else:
        m, n, k = (spec.p(x) for x in ("m", "n", "k"))
        b_shape = (n, k) if fam == "matmul_transpose_b" else (k, n)
        a_t, b_t, out_shape = tensor((m, k), dt), tensor(b_shape, dt), (m, n)
    init = b.filled(out_shape, acc, zero(acc))
    o_t = tensor(out_shape, acc)
    if fam == "matmul_transpose_b":
        # The named op linalg.matmul_transpose_b was folded into linalg.matmul with explicit maps upstream.
        maps = (
            "indexing_maps = [affine_map<(d0, d1, d2) -> (d0, d2)>, affine_map<(d0, d1, d2) -> (d1, d2)>, "
            "affine_map<(d0, d1, d2) -> (d0, d1)>] "
        )
        r = b.emit(f"linalg.matmul {maps}ins(%a, %b : {a_t}, {b_t}) outs({init} : {o_t}) -> {o_t}")
    else:
        op = "linalg.batch_matmul" if fam == "batch_matmul" else "linalg.matmul"
        r = b.emit(f"{op} ins(%a, %b : {a_t}, {b_t}) outs({init} : {o_t}) -> {o_t}")
    return [("%a", a_t), ("%b", b_t)], r, out_shape


def _render_matmul(spec: ProgramSpec, b: Builder) -> str:
    args, r, shape = _matmul_like(spec, b)
    return module(args, [(r, tensor(shape, acc_dtype(spec.dtype)))], b)


def _render_matmul_bias_act(spec: ProgramSpec, b: Builder) -> str:
    """The matmul, then + bias and the activation in one elementwise op, computed in f32."""
    dt = spec.dtype
    args, mm, shape = _matmul_like(spec, b)
    n = shape[-1]
    args.append(("%bias", tensor((n,), dt)))
    empty = b.emit(f"tensor.empty() : {tensor(shape, dt)}")
    act = spec.p("act")

    def body(a: list[str], _o: str) -> list[str]:
        fresh, lines = local_names(), list[str]()
        bias = cast(a[1], dt, "f32", fresh, lines)
        s = fresh()
        lines.append(f"{s} = arith.addf {a[0]}, {bias} : f32")
        y = cast(activation(act, s, "f32", fresh, lines), "f32", dt, fresh, lines)
        return [*lines, f"linalg.yield {y} : {dt}"]

    r = b.generic(
        [(mm, tensor(shape, "f32"), ident_map(2)), ("%bias", tensor((n,), dt), ident_map(2, (1,)))],
        (empty, tensor(shape, dt), ident_map(2)),
        ["parallel", "parallel"],
        body,
    )
    return module(args, [(r, tensor(shape, dt))], b)


def _reduction_start(kind: str, dt: str) -> tuple[str, str]:
    """(accumulator type, identity) of a max or sum over ``dt``: max stays in ``dt``, sum widens."""
    if kind == "max":
        return dt, ("-128" if dt == "i8" else NEG_INF[dt])
    return acc_dtype(dt), zero(acc_dtype(dt))


def _window_op(spec: ProgramSpec) -> tuple[tuple[int, int, int, int], str, str]:
    """What the window families share: (batch, output size, channels, kernel), the input's type and the
    op's dilation/stride attributes."""
    n, hw, c, kern, stride = (spec.p(x) for x in ("n", "hw", "c", "kernel", "stride"))
    out = (hw - kern) // stride + 1
    attrs = f"{{dilations = dense<1> : tensor<2xi64>, strides = dense<{stride}> : tensor<2xi64>}}"
    return (n, out, c, kern), tensor((n, hw, hw, c), spec.dtype), attrs


def _render_conv(spec: ProgramSpec, b: Builder) -> str:
    """conv_2d (NHWC input, HWCF filter) and depthwise_conv (HWC filter)."""
    dt, acc = spec.dtype, acc_dtype(spec.dtype)
    (n, out, c, kern), x_t, attrs = _window_op(spec)
    if spec.family == "conv_2d":
        f = spec.p("f")
        w_t, shape, op = tensor((kern, kern, c, f), dt), (n, out, out, f), "linalg.conv_2d_nhwc_hwcf"
    else:
        w_t, shape, op = tensor((kern, kern, c), dt), (n, out, out, c), "linalg.depthwise_conv_2d_nhwc_hwc"
    init = b.filled(shape, acc, zero(acc))
    o_t = tensor(shape, acc)
    r = b.emit(f"{op} {attrs} ins(%x, %w : {x_t}, {w_t}) outs({init} : {o_t}) -> {o_t}")
    return module([("%x", x_t), ("%w", w_t)], [(r, o_t)], b)


def _render_pooling(spec: ProgramSpec, b: Builder) -> str:
    dt = spec.dtype
    (n, out, c, kern), x_t, attrs = _window_op(spec)
    kind = spec.p("kind")
    shape = (n, out, out, c)
    acc, ident = _reduction_start(kind, dt)
    init = b.filled(shape, acc, ident)
    window = b.emit(f"tensor.empty() : {tensor((kern, kern), dt)}")
    o_t = tensor(shape, acc)
    r = b.emit(
        f"linalg.pooling_nhwc_{kind} {attrs} ins(%x, {window} : {x_t}, {tensor((kern, kern), dt)}) "
        f"outs({init} : {o_t}) -> {o_t}"
    )
    return module([("%x", x_t)], [(r, o_t)], b)


def _render_elementwise(spec: ProgramSpec, b: Builder) -> str:
    """A chain of unary and binary ops, each its own linalg.generic (the second operand always %b)."""
    dt = spec.dtype
    shape = spec.p("shape")
    t = tensor(shape, dt)
    rank = len(shape)
    table = INT_ELEMENTWISE if dt == "i8" else FLOAT_ELEMENTWISE
    cur = "%a"
    for name in spec.p("ops"):
        empty = b.emit(f"tensor.empty() : {t}")
        binary = name in BINARY
        inputs = [(cur, t, ident_map(rank))] + ([("%b", t, ident_map(rank))] if binary else [])
        op = table[name]

        def ebody(a: list[str], _o: str, op: str = op, binary: bool = binary) -> list[str]:
            operands = ", ".join(a) if binary else a[0]
            return [f"%y = {op} {operands} : {dt}", f"linalg.yield %y : {dt}"]

        cur = b.generic(inputs, (empty, t, ident_map(rank)), ["parallel"] * rank, ebody)
    return module([("%a", t), ("%b", t)], [(cur, t)], b)


def _render_reduction(spec: ProgramSpec, b: Builder) -> str:
    dt = spec.dtype
    shape, axes, kind = spec.p("shape"), spec.p("axes"), spec.p("kind")
    rank = len(shape)
    kept = tuple(i for i in range(rank) if i not in axes)
    out_shape = tuple(shape[i] for i in kept)
    acc, ident = _reduction_start(kind, dt)
    init = b.filled(out_shape, acc, ident)
    its = ["reduction" if i in axes else "parallel" for i in range(rank)]
    combine = {
        ("max", True): "arith.maxsi",
        ("max", False): "arith.maximumf",
        ("sum", True): "arith.addi",
        ("sum", False): "arith.addf",
    }[(kind, dt == "i8")]

    def rbody(a: list[str], o: str) -> list[str]:
        fresh, lines = local_names(), list[str]()
        x = cast(a[0], dt, acc, fresh, lines)
        return [*lines, f"%y = {combine} {x}, {o} : {acc}", f"linalg.yield %y : {acc}"]

    r = b.generic(
        [("%a", tensor(shape, dt), ident_map(rank))],
        (init, tensor(out_shape, acc), ident_map(rank, kept)),
        its,
        rbody,
    )
    return module([("%a", tensor(shape, dt))], [(r, tensor(out_shape, acc))], b)


def _render_transpose(spec: ProgramSpec, b: Builder) -> str:
    dt = spec.dtype
    shape, perm = spec.p("shape"), spec.p("perm")
    out_shape = tuple(shape[i] for i in perm)
    empty = b.emit(f"tensor.empty() : {tensor(out_shape, dt)}")
    o_t = tensor(out_shape, dt)
    r = b.emit(
        f"linalg.transpose ins(%a : {tensor(shape, dt)}) outs({empty} : {o_t}) "
        f"permutation = [{', '.join(str(i) for i in perm)}]"
    )
    return module([("%a", tensor(shape, dt))], [(r, o_t)], b)


_RENDERERS: dict[str, Callable[[ProgramSpec, Builder], str]] = {
    "matmul": _render_matmul,
    "batch_matmul": _render_matmul,
    "matmul_transpose_b": _render_matmul,
    "matmul_bias_act": _render_matmul_bias_act,
    "conv_2d": _render_conv,
    "depthwise_conv": _render_conv,
    "pooling": _render_pooling,
    "elementwise": _render_elementwise,
    "reduction": _render_reduction,
    "transpose": _render_transpose,
    "softmax": render_norm,
    "layernorm": render_norm,
}


def render_linalg(spec: ProgramSpec) -> str:
    """MLIR text (linalg on tensors, func/arith/math/tensor dialects) of a linalg-family program."""
    renderer = _RENDERERS.get(spec.family)
    if renderer is None:
        raise ValueError(f"{spec.family!r} is not a linalg family")
    return renderer(spec, Builder())
