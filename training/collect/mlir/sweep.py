"""The MLIR program sweep: fifteen families, shapes drawn log-uniformly under work caps, fixed seeds.

:func:`build_sweep` is deterministic: one generator per family (seeded by the sweep seed and the family's
name), draws redrawn while they exceed the caps, and the families interleaved round-robin so that any
prefix of the sweep covers all of them evenly.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

SWEEP_SEED = 20_251_129
DEFAULT_PER_FAMILY = 300

# Families whose ops have an integer form (i8 in, i32 accumulation); the others are float-only.
INTEGER_FAMILIES = (
    "matmul",
    "batch_matmul",
    "matmul_transpose_b",
    "conv_2d",
    "depthwise_conv",
    "pooling",
    "elementwise",
    "reduction",
    "transpose",
)
LINALG_FAMILIES = (*INTEGER_FAMILIES, "softmax", "layernorm", "matmul_bias_act")
ONNX_FAMILIES = ("onnx_mlp", "onnx_conv_block", "onnx_attention")
FAMILIES = (*LINALG_FAMILIES, *ONNX_FAMILIES)
FLOAT_DTYPES = ("f32", "f16", "bf16")
ALL_DTYPES = (*FLOAT_DTYPES, "i8")
# Work caps (FLOPs, or element operations for memory-bound families): the emulated f16/bf16 and i8 paths
# run several times slower than f32, so their cap is lower to keep one call under ~0.3 s here.
MAX_WORK = {"f32": 2e9, "f16": 4e8, "bf16": 4e8, "i8": 1e9}
MAX_ELEMENTS = 1 << 22

# The ops an elementwise chain draws from, with the MLIR op each one is written as.
FLOAT_ELEMENTWISE = {
    "add": "arith.addf",
    "mul": "arith.mulf",
    "sub": "arith.subf",
    "div": "arith.divf",
    "max": "arith.maximumf",
    "exp": "math.exp",
    "tanh": "math.tanh",
    "neg": "arith.negf",
    "abs": "math.absf",
    "sqrt": "math.sqrt",
}
INT_ELEMENTWISE = {"add": "arith.addi", "mul": "arith.muli", "sub": "arith.subi", "max": "arith.maxsi"}
BINARY = {"add", "mul", "sub", "div", "max"}

Params = tuple[tuple[str, Any], ...]


@dataclass(frozen=True)
class ProgramSpec:
    """One program of the sweep: a family, a dtype and integer/string parameters (the stable key)."""

    family: str
    dtype: str
    params: Params

    @property
    def key(self) -> str:
        return "|".join([self.family, self.dtype, *(f"{k}={_fmt(v)}" for k, v in self.params)])

    def p(self, name: str) -> Any:
        return dict(self.params)[name]


def _fmt(value: Any) -> str:
    if isinstance(value, tuple | list):
        return "x".join(str(v) for v in value)
    return str(value)


def _log_int(rng: random.Random, low: int, high: int) -> int:
    """An integer log-uniform in [low, high]: each decade is drawn about equally often."""
    return max(low, min(high, round(math.exp(rng.uniform(math.log(low), math.log(high + 0.999))))))


def _pick_dtype(rng: random.Random, family: str) -> str:
    integer_ok = family in INTEGER_FAMILIES
    if family in ONNX_FAMILIES:
        return "f32" if rng.random() < 0.75 else "f16"
    choices = ALL_DTYPES if integer_ok else FLOAT_DTYPES
    # f32 is what most programs use; half of the draws go to it.
    return "f32" if rng.random() < 0.5 else rng.choice([d for d in choices if d != "f32"])


# Each family's draw returns its parameters, or None when the draw exceeds the work caps (the caller
# redraws); the order of the generator calls is part of the sweep, so it must not change.
def _draw_matmul(rng: random.Random, family: str, dtype: str) -> Params | None:
    m, n, k = (_log_int(rng, 1, 1536) for _ in range(3))
    return (("m", m), ("n", n), ("k", k)) if 2.0 * m * n * k <= MAX_WORK[dtype] else None


def _draw_batch_matmul(rng: random.Random, family: str, dtype: str) -> Params | None:
    b = _log_int(rng, 1, 64)
    m, n, k = (_log_int(rng, 1, 512) for _ in range(3))
    return (("b", b), ("m", m), ("n", n), ("k", k)) if 2.0 * b * m * n * k <= MAX_WORK[dtype] else None


def _draw_window(rng: random.Random, family: str, dtype: str) -> Params | None:
    """conv_2d, depthwise_conv and pooling: NHWC input, square window, stride 1 or 2."""
    batch = rng.choice((1, 1, 2, 4))
    size = _log_int(rng, 4, 112)
    kernel = rng.choice((1, 3, 3, 5, 7)) if family == "conv_2d" else rng.choice((2, 3, 5))
    stride = rng.choice((1, 1, 2))
    if kernel > size:
        return None
    out = (size - kernel) // stride + 1
    channels = _log_int(rng, 1, 256)
    params: list[tuple[str, Any]] = [
        ("n", batch),
        ("hw", size),
        ("c", channels),
        ("kernel", kernel),
        ("stride", stride),
    ]
    if family == "conv_2d":
        filters = _log_int(rng, 1, 256)
        params.append(("f", filters))
        work = 2.0 * batch * out * out * filters * kernel * kernel * channels
    else:
        work = 2.0 * batch * out * out * channels * kernel * kernel
        if family == "pooling":
            params.append(("kind", "max" if rng.random() < 0.6 else "sum"))
    if batch * size * size * channels > MAX_ELEMENTS:
        return None
    return tuple(params) if work <= MAX_WORK[dtype] else None


def _draw_tensor_op(rng: random.Random, family: str, dtype: str) -> Params:
    """elementwise chains, reductions and transposes of a tensor of up to :data:`MAX_ELEMENTS`."""
    rank = rng.choice((1, 2, 3)) if family == "elementwise" else rng.choice((2, 2, 3, 4))
    total = _log_int(rng, 16, MAX_ELEMENTS)
    shape = _split(rng, total, rank)
    params: list[tuple[str, Any]] = [("shape", shape)]
    if family == "elementwise":
        ops = INT_ELEMENTWISE if dtype == "i8" else FLOAT_ELEMENTWISE
        params.append(("ops", tuple(rng.choice(list(ops)) for _ in range(rng.randint(1, 6)))))
    elif family == "reduction":
        rank = len(shape)
        axes = rng.choice([(rank - 1,), (0,), (rank // 2,), tuple(range(rank))])
        params += [("axes", tuple(sorted(set(axes)))), ("kind", "max" if rng.random() < 0.3 else "sum")]
    else:
        perm = list(range(len(shape)))
        while perm == sorted(perm):
            rng.shuffle(perm)
        params.append(("perm", tuple(perm)))
    return tuple(params)


def _draw_rows(rng: random.Random, family: str, dtype: str) -> Params | None:
    """softmax and layernorm over the last axis of rows x cols."""
    rows, cols = _log_int(rng, 1, 4096), _log_int(rng, 4, 4096)
    return (("rows", rows), ("cols", cols)) if rows * cols <= MAX_ELEMENTS else None


def _draw_matmul_bias_act(rng: random.Random, family: str, dtype: str) -> Params | None:
    m, n, k = (_log_int(rng, 1, 1536) for _ in range(3))
    act = rng.choice(("relu", "gelu", "sigmoid", "tanh", "none"))
    return (("m", m), ("n", n), ("k", k), ("act", act)) if 2.0 * m * n * k <= MAX_WORK[dtype] else None


def _draw_onnx_mlp(rng: random.Random, family: str, dtype: str) -> Params | None:
    batch = _log_int(rng, 1, 256)
    widths = tuple(_log_int(rng, 8, 1024) for _ in range(rng.randint(2, 5)))
    work = sum(2.0 * batch * a * b for a, b in zip(widths, widths[1:], strict=False))
    act = rng.choice(("Relu", "Tanh", "Sigmoid"))
    return (("batch", batch), ("widths", widths), ("act", act)) if work <= MAX_WORK[dtype] else None


def _draw_onnx_conv_block(rng: random.Random, family: str, dtype: str) -> Params | None:
    batch = rng.choice((1, 1, 2))
    size = _log_int(rng, 8, 96)
    cin, cout = _log_int(rng, 1, 64), _log_int(rng, 4, 128)
    kernel = rng.choice((1, 3, 3, 5))
    pool = rng.random() < 0.5
    second = rng.random() < 0.4
    work = 2.0 * batch * size * size * cout * kernel * kernel * (cin + (cout if second else 0))
    params = [("n", batch), ("hw", size), ("cin", cin), ("cout", cout), ("kernel", kernel)]
    params += [("pool", int(pool)), ("second", int(second))]
    return tuple(params) if work <= MAX_WORK[dtype] else None


def _draw_onnx_attention(rng: random.Random, family: str, dtype: str) -> Params | None:
    seq = _log_int(rng, 4, 512)
    heads = rng.choice((1, 2, 4, 8))
    head_dim = rng.choice((8, 16, 32, 64))
    d = heads * head_dim
    work = 2.0 * seq * d * d * 4 + 4.0 * seq * seq * d
    return (
        (("seq", seq), ("heads", heads), ("head_dim", head_dim), ("residual", rng.randint(0, 1)))
        if (work <= MAX_WORK[dtype])
        else None
    )


_DRAWS: dict[str, Callable[[random.Random, str, str], Params | None]] = {
    "matmul": _draw_matmul,
    "matmul_transpose_b": _draw_matmul,
    "batch_matmul": _draw_batch_matmul,
    "conv_2d": _draw_window,
    "depthwise_conv": _draw_window,
    "pooling": _draw_window,
    "elementwise": _draw_tensor_op,
    "reduction": _draw_tensor_op,
    "transpose": _draw_tensor_op,
    "softmax": _draw_rows,
    "layernorm": _draw_rows,
    "matmul_bias_act": _draw_matmul_bias_act,
    "onnx_mlp": _draw_onnx_mlp,
    "onnx_conv_block": _draw_onnx_conv_block,
    "onnx_attention": _draw_onnx_attention,
}


def _draw(rng: random.Random, family: str, dtype: str) -> Params | None:
    """Parameters for one program, or None when the draw exceeds the work caps (the caller redraws)."""
    draw = _DRAWS.get(family)
    if draw is None:
        raise ValueError(f"unknown family {family!r}")
    return draw(rng, family, dtype)


def _split(rng: random.Random, total: int, rank: int) -> tuple[int, ...]:
    """A shape of ``rank`` dims whose product is about ``total`` (log-uniform split of the exponent)."""
    if rank == 1:
        return (total,)
    cuts = sorted(rng.random() for _ in range(rank - 1))
    logs = [b - a for a, b in zip([0.0, *cuts], [*cuts, 1.0], strict=True)]
    return tuple(max(1, round(total**w)) for w in logs)


def build_sweep(per_family: int = DEFAULT_PER_FAMILY, seed: int = SWEEP_SEED) -> list[ProgramSpec]:
    """``per_family`` distinct programs per family, interleaved round-robin, in a fixed order."""
    per: dict[str, list[ProgramSpec]] = {}
    for family in FAMILIES:
        # One generator per family: adding a family or changing another's ranges keeps these keys.
        rng = random.Random(f"{seed}:{family}")
        specs: dict[str, ProgramSpec] = {}
        attempts = 0
        while len(specs) < per_family and attempts < per_family * 200:
            attempts += 1
            dtype = _pick_dtype(rng, family)
            params = _draw(rng, family, dtype)
            if params is not None:
                spec = ProgramSpec(family, dtype, params)
                specs.setdefault(spec.key, spec)
        per[family] = list(specs.values())
    out: list[ProgramSpec] = []
    for i in range(per_family):
        out += [per[f][i] for f in FAMILIES if i < len(per[f])]
    return out
