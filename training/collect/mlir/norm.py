"""Softmax and layer-norm over the last axis of a rows x cols tensor, composed of linalg.generic ops (the
form front ends lower these to), computed in f32 for f16/bf16 inputs."""

from __future__ import annotations

from collections.abc import Callable

from training.collect.mlir.builder import NEG_INF, Builder, cast, ident_map, local_names, module, tensor
from training.collect.mlir.sweep import ProgramSpec

M2, M_ROW, M_COL = ident_map(2), ident_map(2, (0,)), ident_map(2, (1,))
PARALLEL, REDUCTION = ["parallel", "parallel"], ["parallel", "reduction"]
Body = Callable[[list[str], str], list[str]]
Inputs = list[tuple[str, str, str]]


def _reduce_rows(b: Builder, x: str, rows: int, cols: int, init: str, body: Body) -> str:
    """A rows-vector of f32, filled with ``init``, that ``body`` folds each row of ``x`` into."""
    row_t = tensor((rows,), "f32")
    return b.generic(
        [(x, tensor((rows, cols), "f32"), M2)],
        (b.filled((rows,), "f32", init), row_t, M_ROW),
        REDUCTION,
        body,
    )


def _combine_rows(combine: str) -> Body:
    """The body folding each element into its row's value with ``combine`` (arith.addf, arith.maximumf)."""
    return lambda a, o: [f"%y = {combine} {a[0]}, {o} : f32", "linalg.yield %y : f32"]


def _with_rows(b: Builder, x: str, row: str, rows: int, cols: int, body: Body) -> str:
    """An f32 rows x cols tensor of ``body`` over each element of ``x`` and its row's value in ``row``."""
    full = tensor((rows, cols), "f32")
    inputs = [(x, full, M2), (row, tensor((rows,), "f32"), M_ROW)]
    return b.generic(inputs, (b.emit(f"tensor.empty() : {full}"), full, M2), PARALLEL, body)


def _softmax(b: Builder, x: str, rows: int, cols: int) -> tuple[Inputs, list[str]]:
    """exp(x - row max) and its row sums; returns the final op's inputs and its first body lines."""
    mx = _reduce_rows(b, x, rows, cols, NEG_INF["f32"], _combine_rows("arith.maximumf"))
    e = _with_rows(
        b,
        x,
        mx,
        rows,
        cols,
        lambda a, o: [
            f"%s = arith.subf {a[0]}, {a[1]} : f32",
            "%y = math.exp %s : f32",
            "linalg.yield %y : f32",
        ],
    )
    s = _reduce_rows(b, e, rows, cols, "0.000000e+00", _combine_rows("arith.addf"))
    return [(e, tensor((rows, cols), "f32"), M2), (s, tensor((rows,), "f32"), M_ROW)], [
        "%q = arith.divf {0}, {1} : f32"
    ]


def _layernorm(b: Builder, x: str, rows: int, cols: int, dt: str) -> tuple[Inputs, list[str]]:
    """x minus its row mean and the row sums of its squares; returns the final op's inputs (gamma and
    beta among them) and its first body lines (up to the normalized value %n)."""
    total = _reduce_rows(b, x, rows, cols, "0.000000e+00", _combine_rows("arith.addf"))
    inv_n = f"{1.0 / cols:.8e}"
    centered = _with_rows(
        b,
        x,
        total,
        rows,
        cols,
        lambda a, o: [
            f"%c = arith.constant {inv_n} : f32",
            f"%m = arith.mulf {a[1]}, %c : f32",
            f"%y = arith.subf {a[0]}, %m : f32",
            "linalg.yield %y : f32",
        ],
    )
    var = _reduce_rows(
        b,
        centered,
        rows,
        cols,
        "0.000000e+00",
        lambda a, o: [
            f"%q = arith.mulf {a[0]}, {a[0]} : f32",
            f"%y = arith.addf %q, {o} : f32",
            "linalg.yield %y : f32",
        ],
    )
    g_t = tensor((cols,), dt)
    inputs = [
        (centered, tensor((rows, cols), "f32"), M2),
        (var, tensor((rows,), "f32"), M_ROW),
        ("%gamma", g_t, M_COL),
        ("%beta", g_t, M_COL),
    ]
    final = [
        f"%c = arith.constant {inv_n} : f32",
        "%eps = arith.constant 9.99999974e-06 : f32",
        "%v = arith.mulf {1}, %c : f32",
        "%ve = arith.addf %v, %eps : f32",
        "%r = math.rsqrt %ve : f32",
        "%n = arith.mulf {0}, %r : f32",
    ]
    return inputs, final


def render_norm(spec: ProgramSpec, b: Builder) -> str:
    """The program of a softmax or layernorm spec (see the module docstring)."""
    dt = spec.dtype
    rows, cols = spec.p("rows"), spec.p("cols")
    x_t, full = tensor((rows, cols), dt), tensor((rows, cols), "f32")

    def upcast(a: list[str], _o: str) -> list[str]:
        lines: list[str] = []
        y = cast(a[0], dt, "f32", local_names(), lines)
        return [*lines, f"linalg.yield {y} : f32"]

    x = b.generic([("%x", x_t, M2)], (b.emit(f"tensor.empty() : {full}"), full, M2), PARALLEL, upcast)
    args = [("%x", x_t)]
    if spec.family == "softmax":
        y_in, final = _softmax(b, x, rows, cols)
    else:
        args += [("%gamma", tensor((cols,), dt)), ("%beta", tensor((cols,), dt))]
        y_in, final = _layernorm(b, x, rows, cols, dt)

    def out_body(a: list[str], _o: str) -> list[str]:
        fresh, lines = local_names(), [line.format(*a) for line in final]
        if spec.family != "softmax":
            g = cast(a[2], dt, "f32", fresh, lines)
            bt = cast(a[3], dt, "f32", fresh, lines)
            lines += [f"%s = arith.mulf %n, {g} : f32", f"%q = arith.addf %s, {bt} : f32"]
        y = cast("%q", "f32", dt, fresh, lines)
        return [*lines, f"linalg.yield {y} : {dt}"]

    out = b.generic(y_in, (b.emit(f"tensor.empty() : {x_t}"), x_t, M2), PARALLEL, out_body)
    return module(args, [(out, x_t)], b)
