"""``perfcost collect mlir``: generate MLIR programs, compile them with IREE for this CPU and measure them.

The sweep (:func:`build_sweep`) is a deterministic list of :class:`ProgramSpec` s over fifteen families:
linalg-on-tensors programs written here as text (matmul, batch_matmul, matmul_transpose_b, conv_2d NHWC,
depthwise conv, pooling, elementwise chains, reductions, transposes, softmax, layer-norm, fused
matmul + bias + activation) and whole ONNX graphs (MLP, conv block, attention block) built with ``onnx``
and imported with ``iree-import-onnx`` into torch-dialect MLIR. Shapes are drawn log-uniformly so that
every family spans at least four orders of magnitude of work; dtypes are f32, f16, bf16 and i8 where
the family has an integer form. Families are interleaved round-robin, so any prefix of the sweep (a
``--limit`` or a collection stopped early) covers all of them evenly.

Each program is compiled with ``iree-compile`` for llvm-cpu with ``--iree-llvmcpu-target-cpu=host``
(compile time, dispatch count, and from the dumped executable assembly: static instruction count,
vector-instruction share, distinct vector registers, spills and reloads, code size) and then run with
``iree-benchmark-module`` (warm-up, then ``--repetitions`` repetitions of at least ``--min-time`` s each;
median wall and CPU time per call and the spread between repetitions, ``(p75 - p25) / median``).
Thread utilization is CPU time / (wall time x worker threads). A program that fails to compile or run
is recorded with the tool's first error line and a status, never dropped.

Storage and crash safety: ``programs.jsonl.gz`` holds one gzip member per program (its JSON record,
MLIR text included), each appended with one ``write`` and ``fsync``-ed. On restart a truncated last
member or a duplicated key is dropped (the file is rewritten atomically) and every key already present
is skipped; the GEMM collector's ``flock`` makes a second collector on the same directory refuse.
"""

from __future__ import annotations

import contextlib
import gzip
import json
import logging
import math
import os
import platform
import random
import re
import shutil
import struct
import subprocess
import sys
import tempfile
import time
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

from training.collect import (
    CollectError,
    cli_errors,
    exclusive_lock,
    fsync_dir,
    local_cpu_count,
    write_durably,
)

log = logging.getLogger(__name__)

SOURCE = "mlir-cpu-local"
DEFAULT_OUT = Path("datasets") / SOURCE
PROGRAMS = "programs.jsonl.gz"
ENVIRONMENT_FILE = "environment.json"
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
# -inf in each float type, as MLIR hex literals (the identity of a max reduction).
NEG_INF = {"f32": "0xFF800000", "f16": "0xFC00", "bf16": "0xFF80"}

COMPILE_FLAGS = (
    "--iree-hal-target-backends=llvm-cpu",
    "--iree-llvmcpu-target-cpu=host",
)
COMPILE_TIMEOUT_S = 300.0
RUN_TIMEOUT_S = 300.0


# --- program specs ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class ProgramSpec:
    """One program of the sweep: a family, a dtype and integer/string parameters (the stable key)."""

    family: str
    dtype: str
    params: tuple[tuple[str, Any], ...]

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


def _draw(rng: random.Random, family: str, dtype: str) -> tuple[tuple[str, Any], ...] | None:
    """Parameters for one program, or None when the draw exceeds the work caps (the caller redraws)."""
    cap = MAX_WORK[dtype]
    if family in ("matmul", "matmul_transpose_b"):
        m, n, k = (_log_int(rng, 1, 1536) for _ in range(3))
        return (("m", m), ("n", n), ("k", k)) if 2.0 * m * n * k <= cap else None
    if family == "batch_matmul":
        b = _log_int(rng, 1, 64)
        m, n, k = (_log_int(rng, 1, 512) for _ in range(3))
        return (("b", b), ("m", m), ("n", n), ("k", k)) if 2.0 * b * m * n * k <= cap else None
    if family in ("conv_2d", "depthwise_conv", "pooling"):
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
        return tuple(params) if work <= cap else None
    if family in ("elementwise", "reduction", "transpose"):
        rank = rng.choice((1, 2, 3)) if family == "elementwise" else rng.choice((2, 2, 3, 4))
        total = _log_int(rng, 16, MAX_ELEMENTS)
        shape = _split(rng, total, rank)
        params = [("shape", shape)]
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
    if family in ("softmax", "layernorm"):
        rows, cols = _log_int(rng, 1, 4096), _log_int(rng, 4, 4096)
        return (("rows", rows), ("cols", cols)) if rows * cols <= MAX_ELEMENTS else None
    if family == "matmul_bias_act":
        m, n, k = (_log_int(rng, 1, 1536) for _ in range(3))
        act = rng.choice(("relu", "gelu", "sigmoid", "tanh", "none"))
        return (("m", m), ("n", n), ("k", k), ("act", act)) if 2.0 * m * n * k <= cap else None
    if family == "onnx_mlp":
        batch = _log_int(rng, 1, 256)
        widths = tuple(_log_int(rng, 8, 1024) for _ in range(rng.randint(2, 5)))
        work = sum(2.0 * batch * a * b for a, b in zip(widths, widths[1:], strict=False))
        act = rng.choice(("Relu", "Tanh", "Sigmoid"))
        return (("batch", batch), ("widths", widths), ("act", act)) if work <= cap else None
    if family == "onnx_conv_block":
        batch = rng.choice((1, 1, 2))
        size = _log_int(rng, 8, 96)
        cin, cout = _log_int(rng, 1, 64), _log_int(rng, 4, 128)
        kernel = rng.choice((1, 3, 3, 5))
        pool = rng.random() < 0.5
        second = rng.random() < 0.4
        work = 2.0 * batch * size * size * cout * kernel * kernel * (cin + (cout if second else 0))
        params = [("n", batch), ("hw", size), ("cin", cin), ("cout", cout), ("kernel", kernel)]
        params += [("pool", int(pool)), ("second", int(second))]
        return tuple(params) if work <= cap else None
    if family == "onnx_attention":
        seq = _log_int(rng, 4, 512)
        heads = rng.choice((1, 2, 4, 8))
        head_dim = rng.choice((8, 16, 32, 64))
        d = heads * head_dim
        work = 2.0 * seq * d * d * 4 + 4.0 * seq * seq * d
        return (
            (("seq", seq), ("heads", heads), ("head_dim", head_dim), ("residual", rng.randint(0, 1)))
            if (work <= cap)
            else None
        )
    raise ValueError(f"unknown family {family!r}")


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


# --- rendering linalg programs ---------------------------------------------------------------------
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


def tensor(shape: tuple[int, ...] | list[int], dtype: str) -> str:
    return f"tensor<{'x'.join(str(d) for d in shape)}x{dtype}>" if shape else f"tensor<{dtype}>"


def _acc(dtype: str) -> str:
    return "i32" if dtype == "i8" else "f32"


def _zero(dtype: str) -> str:
    return "0" if dtype.startswith("i") else "0.000000e+00"


def _ident_map(rank: int, dims: tuple[int, ...] | None = None) -> str:
    names = [f"d{i}" for i in range(rank)]
    kept = names if dims is None else [names[i] for i in dims]
    return f"affine_map<({', '.join(names)}) -> ({', '.join(kept)})>"


class _Builder:
    """Accumulates SSA lines of one ``func.func @main``."""

    def __init__(self) -> None:
        self.lines: list[str] = []
        self.count = 0

    def fresh(self) -> str:
        self.count += 1
        return f"%v{self.count}"

    def emit(self, text: str) -> str:
        name = self.fresh()
        self.lines.append(f"    {name} = {text}")
        return name

    def filled(self, shape: tuple[int, ...], dtype: str, value: str) -> str:
        cst = self.emit(f"arith.constant {value} : {dtype}")
        empty = self.emit(f"tensor.empty() : {tensor(shape, dtype)}")
        t = tensor(shape, dtype)
        return self.emit(f"linalg.fill ins({cst} : {dtype}) outs({empty} : {t}) -> {t}")

    def generic(
        self,
        inputs: list[tuple[str, str, str]],
        out: tuple[str, str, str],
        iterators: list[str],
        body: Callable[[list[str], str], list[str]],
    ) -> str:
        """``linalg.generic`` over ``inputs`` (name, tensor type, map) into ``out``; ``body`` gets the block
        argument names and the output's block argument and returns lines ending in ``linalg.yield``."""
        maps = ", ".join(m for _, _, m in [*inputs, out])
        its = ", ".join(f'"{i}"' for i in iterators)
        ins = ", ".join(n for n, _, _ in inputs)
        in_types = ", ".join(t for _, t, _ in inputs)
        args = [f"%in{i}" for i in range(len(inputs))]
        block_args = ", ".join(
            [*(f"{a}: {_elem(t)}" for a, (_, t, _) in zip(args, inputs, strict=True)), f"%o: {_elem(out[1])}"]
        )
        lines = [
            f"linalg.generic {{indexing_maps = [{maps}], iterator_types = [{its}]}} "
            f"ins({ins} : {in_types}) outs({out[0]} : {out[1]}) {{",
            f"    ^bb0({block_args}):",
            *(f"      {line}" for line in body(args, "%o")),
            f"    }} -> {out[1]}",
        ]
        name = self.fresh()
        self.lines.append(f"    {name} = " + "\n".join(lines))
        return name


def _elem(tensor_type: str) -> str:
    return tensor_type.rsplit("x", 1)[-1].rstrip(">") if "x" in tensor_type else tensor_type[7:-1]


def _module(args: list[tuple[str, str]], results: list[tuple[str, str]], b: _Builder) -> str:
    sig = ", ".join(f"{n}: {t}" for n, t in args)
    res_types = ", ".join(t for _, t in results)
    ret = f"    return {', '.join(n for n, _ in results)} : {res_types}"
    return "\n".join(
        ["module {", f"  func.func @main({sig}) -> ({res_types}) {{", *b.lines, ret, "  }", "}", ""]
    )


def _cast(value: str, src: str, dst: str, fresh: Callable[[], str], lines: list[str]) -> str:
    """Lines converting a scalar between element types (extension or truncation), in place in ``lines``."""
    if src == dst:
        return value
    name = fresh()
    if src.startswith("i") and dst.startswith("i"):
        op = "arith.extsi" if int(src[1:]) < int(dst[1:]) else "arith.trunci"
    elif src.startswith("i"):
        op = "arith.sitofp"
    elif dst.startswith("i"):
        op = "arith.fptosi"
    else:
        op = "arith.extf" if _fbits(src) < _fbits(dst) else "arith.truncf"
    lines.append(f"{name} = {op} {value} : {src} to {dst}")
    return name


def _fbits(dtype: str) -> int:
    return {"f16": 16, "bf16": 16, "f32": 32, "f64": 64}[dtype]


def _local() -> Callable[[], str]:
    counter = iter(range(1, 1 << 30))
    return lambda: f"%t{next(counter)}"


def _activation(act: str, x: str, dtype: str, fresh: Callable[[], str], lines: list[str]) -> str:
    def op(text: str) -> str:
        name = fresh()
        lines.append(f"{name} = {text}")
        return name

    if act == "none":
        return x
    if act == "relu":
        zero = op(f"arith.constant 0.000000e+00 : {dtype}")
        return op(f"arith.maximumf {x}, {zero} : {dtype}")
    if act == "tanh":
        return op(f"math.tanh {x} : {dtype}")
    if act == "sigmoid":
        one = op(f"arith.constant 1.000000e+00 : {dtype}")
        e = op(f"math.exp {op(f'arith.negf {x} : {dtype}')} : {dtype}")
        return op(f"arith.divf {one}, {op(f'arith.addf {one}, {e} : {dtype}')} : {dtype}")
    # gelu, tanh approximation: 0.5 x (1 + tanh(0.79788456 (x + 0.044715 x^3)))
    half, one = op(f"arith.constant 5.000000e-01 : {dtype}"), op(f"arith.constant 1.000000e+00 : {dtype}")
    c1, c2 = op(f"arith.constant 7.978846e-01 : {dtype}"), op(f"arith.constant 4.471500e-02 : {dtype}")
    x3 = op(f"arith.mulf {op(f'arith.mulf {x}, {x} : {dtype}')}, {x} : {dtype}")
    inner = op(f"arith.addf {x}, {op(f'arith.mulf {c2}, {x3} : {dtype}')} : {dtype}")
    t = op(f"math.tanh {op(f'arith.mulf {c1}, {inner} : {dtype}')} : {dtype}")
    left, right = op(f"arith.mulf {half}, {x} : {dtype}"), op(f"arith.addf {one}, {t} : {dtype}")
    return op(f"arith.mulf {left}, {right} : {dtype}")


def _matmul_like(spec: ProgramSpec, b: _Builder) -> tuple[list[tuple[str, str]], str, tuple[int, ...]]:
    """The contraction of the matmul families; returns (args, result name, result shape)."""
    dt, acc = spec.dtype, _acc(spec.dtype)
    fam = spec.family
    out_shape: tuple[int, ...]
    if fam == "batch_matmul":
        bb, m, n, k = (spec.p(x) for x in ("b", "m", "n", "k"))
        a_t, b_t, out_shape = tensor((bb, m, k), dt), tensor((bb, k, n), dt), (bb, m, n)
    else:
        m, n, k = (spec.p(x) for x in ("m", "n", "k"))
        b_shape = (n, k) if fam == "matmul_transpose_b" else (k, n)
        a_t, b_t, out_shape = tensor((m, k), dt), tensor(b_shape, dt), (m, n)
    init = b.filled(out_shape, acc, _zero(acc))
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


def render_linalg(spec: ProgramSpec) -> str:
    """MLIR text (linalg on tensors, func/arith/math/tensor dialects) of a linalg-family program."""
    fam, dt = spec.family, spec.dtype
    b = _Builder()
    if fam in ("matmul", "batch_matmul", "matmul_transpose_b"):
        args, r, shape = _matmul_like(spec, b)
        return _module(args, [(r, tensor(shape, _acc(dt)))], b)
    if fam == "matmul_bias_act":
        args, mm, shape = _matmul_like(spec, b)
        n = shape[-1]
        args.append(("%bias", tensor((n,), dt)))
        empty = b.emit(f"tensor.empty() : {tensor(shape, dt)}")
        act = spec.p("act")

        def body(a: list[str], _o: str) -> list[str]:
            fresh, lines = _local(), list[str]()
            bias = _cast(a[1], dt, "f32", fresh, lines)
            s = fresh()
            lines.append(f"{s} = arith.addf {a[0]}, {bias} : f32")
            y = _cast(_activation(act, s, "f32", fresh, lines), "f32", dt, fresh, lines)
            return [*lines, f"linalg.yield {y} : {dt}"]

        r = b.generic(
            [(mm, tensor(shape, "f32"), _ident_map(2)), ("%bias", tensor((n,), dt), _ident_map(2, (1,)))],
            (empty, tensor(shape, dt), _ident_map(2)),
            ["parallel", "parallel"],
            body,
        )
        return _module(args, [(r, tensor(shape, dt))], b)
    if fam in ("conv_2d", "depthwise_conv", "pooling"):
        n, hw, c, kern, stride = (spec.p(x) for x in ("n", "hw", "c", "kernel", "stride"))
        out = (hw - kern) // stride + 1
        x_t = tensor((n, hw, hw, c), dt)
        attrs = f"{{dilations = dense<1> : tensor<2xi64>, strides = dense<{stride}> : tensor<2xi64>}}"
        if fam == "conv_2d":
            f = spec.p("f")
            w_t, shape, acc = tensor((kern, kern, c, f), dt), (n, out, out, f), _acc(dt)
            init = b.filled(shape, acc, _zero(acc))
            o_t = tensor(shape, acc)
            r = b.emit(
                f"linalg.conv_2d_nhwc_hwcf {attrs} ins(%x, %w : {x_t}, {w_t}) outs({init} : {o_t}) -> {o_t}"
            )
            return _module([("%x", x_t), ("%w", w_t)], [(r, o_t)], b)
        if fam == "depthwise_conv":
            w_t, shape, acc = tensor((kern, kern, c), dt), (n, out, out, c), _acc(dt)
            init = b.filled(shape, acc, _zero(acc))
            o_t = tensor(shape, acc)
            operands = f"ins(%x, %w : {x_t}, {w_t}) outs({init} : {o_t})"
            r = b.emit(f"linalg.depthwise_conv_2d_nhwc_hwc {attrs} {operands} -> {o_t}")
            return _module([("%x", x_t), ("%w", w_t)], [(r, o_t)], b)
        kind = spec.p("kind")
        shape = (n, out, out, c)
        if kind == "max":
            acc, ident = dt, ("-128" if dt == "i8" else NEG_INF[dt])
        else:
            acc, ident = _acc(dt), _zero(_acc(dt))
        init = b.filled(shape, acc, ident)
        window = b.emit(f"tensor.empty() : {tensor((kern, kern), dt)}")
        o_t = tensor(shape, acc)
        r = b.emit(
            f"linalg.pooling_nhwc_{kind} {attrs} ins(%x, {window} : {x_t}, {tensor((kern, kern), dt)}) "
            f"outs({init} : {o_t}) -> {o_t}"
        )
        return _module([("%x", x_t)], [(r, o_t)], b)
    if fam == "elementwise":
        shape = spec.p("shape")
        t = tensor(shape, dt)
        rank = len(shape)
        table = INT_ELEMENTWISE if dt == "i8" else FLOAT_ELEMENTWISE
        cur = "%a"
        for name in spec.p("ops"):
            empty = b.emit(f"tensor.empty() : {t}")
            binary = name in BINARY
            inputs = [(cur, t, _ident_map(rank))] + ([("%b", t, _ident_map(rank))] if binary else [])
            op = table[name]

            def ebody(a: list[str], _o: str, op: str = op, binary: bool = binary) -> list[str]:
                operands = ", ".join(a) if binary else a[0]
                return [f"%y = {op} {operands} : {dt}", f"linalg.yield %y : {dt}"]

            cur = b.generic(inputs, (empty, t, _ident_map(rank)), ["parallel"] * rank, ebody)
        return _module([("%a", t), ("%b", t)], [(cur, t)], b)
    if fam == "reduction":
        shape, axes, kind = spec.p("shape"), spec.p("axes"), spec.p("kind")
        rank = len(shape)
        kept = tuple(i for i in range(rank) if i not in axes)
        out_shape = tuple(shape[i] for i in kept)
        if kind == "max":
            acc, ident = dt, ("-128" if dt == "i8" else NEG_INF[dt])
        else:
            acc, ident = _acc(dt), _zero(_acc(dt))
        init = b.filled(out_shape, acc, ident)
        its = ["reduction" if i in axes else "parallel" for i in range(rank)]
        combine = {
            ("max", True): "arith.maxsi",
            ("max", False): "arith.maximumf",
            ("sum", True): "arith.addi",
            ("sum", False): "arith.addf",
        }[(kind, dt == "i8")]

        def rbody(a: list[str], o: str) -> list[str]:
            fresh, lines = _local(), list[str]()
            x = _cast(a[0], dt, acc, fresh, lines)
            return [*lines, f"%y = {combine} {x}, {o} : {acc}", f"linalg.yield %y : {acc}"]

        r = b.generic(
            [("%a", tensor(shape, dt), _ident_map(rank))],
            (init, tensor(out_shape, acc), _ident_map(rank, kept)),
            its,
            rbody,
        )
        return _module([("%a", tensor(shape, dt))], [(r, tensor(out_shape, acc))], b)
    if fam == "transpose":
        shape, perm = spec.p("shape"), spec.p("perm")
        out_shape = tuple(shape[i] for i in perm)
        empty = b.emit(f"tensor.empty() : {tensor(out_shape, dt)}")
        o_t = tensor(out_shape, dt)
        r = b.emit(
            f"linalg.transpose ins(%a : {tensor(shape, dt)}) outs({empty} : {o_t}) "
            f"permutation = [{', '.join(str(i) for i in perm)}]"
        )
        return _module([("%a", tensor(shape, dt))], [(r, o_t)], b)
    if fam in ("softmax", "layernorm"):
        return _render_norm(spec, b)
    raise ValueError(f"{fam!r} is not a linalg family")


def _render_norm(spec: ProgramSpec, b: _Builder) -> str:
    """Softmax or layer-norm over the last axis of a rows x cols tensor, composed of linalg.generic ops
    (the form front ends lower these to), computed in f32 for f16/bf16 inputs."""
    dt = spec.dtype
    rows, cols = spec.p("rows"), spec.p("cols")
    x_t, full = tensor((rows, cols), dt), tensor((rows, cols), "f32")
    row_t = tensor((rows,), "f32")
    m2, m_row = _ident_map(2), _ident_map(2, (0,))
    par, red = ["parallel", "parallel"], ["parallel", "reduction"]

    def upcast(a: list[str], _o: str) -> list[str]:
        lines: list[str] = []
        y = _cast(a[0], dt, "f32", _local(), lines)
        return [*lines, f"linalg.yield {y} : f32"]

    x = b.generic([("%x", x_t, m2)], (b.emit(f"tensor.empty() : {full}"), full, m2), par, upcast)
    args = [("%x", x_t)]
    if spec.family == "softmax":
        mx = b.generic(
            [(x, full, m2)],
            (b.filled((rows,), "f32", NEG_INF["f32"]), row_t, m_row),
            red,
            lambda a, o: [f"%y = arith.maximumf {a[0]}, {o} : f32", "linalg.yield %y : f32"],
        )
        e = b.generic(
            [(x, full, m2), (mx, row_t, m_row)],
            (b.emit(f"tensor.empty() : {full}"), full, m2),
            par,
            lambda a, o: [
                f"%s = arith.subf {a[0]}, {a[1]} : f32",
                "%y = math.exp %s : f32",
                "linalg.yield %y : f32",
            ],
        )
        s = b.generic(
            [(e, full, m2)],
            (b.filled((rows,), "f32", "0.000000e+00"), row_t, m_row),
            red,
            lambda a, o: [f"%y = arith.addf {a[0]}, {o} : f32", "linalg.yield %y : f32"],
        )
        y_in: list[tuple[str, str, str]] = [(e, full, m2), (s, row_t, m_row)]
        final = ["%q = arith.divf {0}, {1} : f32"]
    else:
        args += [("%gamma", tensor((cols,), dt)), ("%beta", tensor((cols,), dt))]
        total = b.generic(
            [(x, full, m2)],
            (b.filled((rows,), "f32", "0.000000e+00"), row_t, m_row),
            red,
            lambda a, o: [f"%y = arith.addf {a[0]}, {o} : f32", "linalg.yield %y : f32"],
        )
        inv_n = f"{1.0 / cols:.8e}"
        centered = b.generic(
            [(x, full, m2), (total, row_t, m_row)],
            (b.emit(f"tensor.empty() : {full}"), full, m2),
            par,
            lambda a, o: [
                f"%c = arith.constant {inv_n} : f32",
                f"%m = arith.mulf {a[1]}, %c : f32",
                f"%y = arith.subf {a[0]}, %m : f32",
                "linalg.yield %y : f32",
            ],
        )
        var = b.generic(
            [(centered, full, m2)],
            (b.filled((rows,), "f32", "0.000000e+00"), row_t, m_row),
            red,
            lambda a, o: [
                f"%q = arith.mulf {a[0]}, {a[0]} : f32",
                f"%y = arith.addf %q, {o} : f32",
                "linalg.yield %y : f32",
            ],
        )
        g_t = tensor((cols,), dt)
        m_col = _ident_map(2, (1,))
        y_in = [(centered, full, m2), (var, row_t, m_row), ("%gamma", g_t, m_col), ("%beta", g_t, m_col)]
        final = [
            f"%c = arith.constant {inv_n} : f32",
            "%eps = arith.constant 9.99999974e-06 : f32",
            "%v = arith.mulf {1}, %c : f32",
            "%ve = arith.addf %v, %eps : f32",
            "%r = math.rsqrt %ve : f32",
            "%n = arith.mulf {0}, %r : f32",
        ]

    def out_body(a: list[str], _o: str) -> list[str]:
        fresh, lines = _local(), [line.format(*a) for line in final]
        if spec.family == "softmax":
            result = "%q"
        else:
            g = _cast(a[2], dt, "f32", fresh, lines)
            bt = _cast(a[3], dt, "f32", fresh, lines)
            lines += [f"%s = arith.mulf %n, {g} : f32", f"%q = arith.addf %s, {bt} : f32"]
            result = "%q"
        y = _cast(result, "f32", dt, fresh, lines)
        return [*lines, f"linalg.yield {y} : {dt}"]

    out = b.generic(y_in, (b.emit(f"tensor.empty() : {x_t}"), x_t, m2), par, out_body)
    return _module(args, [(out, x_t)], b)


# --- ONNX programs ---------------------------------------------------------------------------------
def build_onnx(spec: ProgramSpec) -> Any:
    """The ``onnx.ModelProto`` of an ONNX-family program (graph and function name ``main``). Weights are
    graph inputs (so the text stays small); biases and shape constants are initializers, which the
    importer writes as ``dense_resource`` blobs as real exported models have."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    elem = TensorProto.FLOAT if spec.dtype == "f32" else TensorProto.FLOAT16
    np_dtype = np.float32 if spec.dtype == "f32" else np.float16
    rng = np.random.default_rng(zlib.crc32(spec.key.encode()))
    inputs, inits, nodes = [], [], []

    def inp(name: str, shape: list[int]) -> str:
        inputs.append(helper.make_tensor_value_info(name, elem, shape))
        return name

    def init(name: str, array: np.ndarray) -> str:
        inits.append(numpy_helper.from_array(array, name))
        return name

    def node(op: str, ins: list[str], out: str, **attrs: Any) -> str:
        nodes.append(helper.make_node(op, ins, [out], **attrs))
        return out

    if spec.family == "onnx_mlp":
        batch, widths, act = spec.p("batch"), spec.p("widths"), spec.p("act")
        h = inp("x", [batch, widths[0]])
        for i, (a, b) in enumerate(zip(widths, widths[1:], strict=False)):
            h = node("MatMul", [h, inp(f"w{i}", [a, b])], f"mm{i}")
            h = node("Add", [h, init(f"b{i}", rng.standard_normal(b).astype(np_dtype))], f"add{i}")
            if i < len(widths) - 2:
                h = node(act, [h], f"act{i}")
        out_shape = [batch, widths[-1]]
    elif spec.family == "onnx_conv_block":
        n, hw, cin, cout, k = (spec.p(x) for x in ("n", "hw", "cin", "cout", "kernel"))
        pads = [k // 2] * 4
        h = inp("x", [n, cin, hw, hw])
        bias = init("b0", rng.standard_normal(cout).astype(np_dtype))
        h = node("Conv", [h, inp("w0", [cout, cin, k, k]), bias], "conv0", pads=pads, kernel_shape=[k, k])
        h = node("Relu", [h], "relu0")
        size = hw
        if spec.p("second"):
            bias1 = init("b1", rng.standard_normal(cout).astype(np_dtype))
            h = node(
                "Conv", [h, inp("w1", [cout, cout, k, k]), bias1], "conv1", pads=pads, kernel_shape=[k, k]
            )
            h = node("Relu", [h], "relu1")
        if spec.p("pool") and size >= 2:
            h = node("MaxPool", [h], "pool", kernel_shape=[2, 2], strides=[2, 2])
            size //= 2
        out_shape = [n, cout, size, size]
    elif spec.family == "onnx_attention":
        seq, heads, hd = spec.p("seq"), spec.p("heads"), spec.p("head_dim")
        d = heads * hd
        x = inp("x", [1, seq, d])
        split = init("split_shape", np.array([1, seq, heads, hd], dtype=np.int64))
        merge = init("merge_shape", np.array([1, seq, d], dtype=np.int64))
        scale = init("scale", np.array(1.0 / math.sqrt(hd), dtype=np_dtype))
        proj = {}
        for name in ("q", "k", "v"):
            p = node("MatMul", [x, inp(f"w{name}", [d, d])], f"{name}_proj")
            proj[name] = node("Reshape", [p, split], f"{name}_heads")
        q = node("Transpose", [proj["q"]], "q_t", perm=[0, 2, 1, 3])
        kt = node("Transpose", [proj["k"]], "k_t", perm=[0, 2, 3, 1])
        v = node("Transpose", [proj["v"]], "v_t", perm=[0, 2, 1, 3])
        scores = node("Mul", [node("MatMul", [q, kt], "qk"), scale], "scores")
        probs = node("Softmax", [scores], "probs", axis=-1)
        ctx = node("Transpose", [node("MatMul", [probs, v], "ctx")], "ctx_t", perm=[0, 2, 1, 3])
        h = node("MatMul", [node("Reshape", [ctx, merge], "ctx_m"), inp("wo", [d, d])], "out_proj")
        if spec.p("residual"):
            h = node("Add", [h, x], "residual")
        out_shape = [1, seq, d]
    else:
        raise ValueError(f"{spec.family!r} is not an ONNX family")
    nodes[-1].output[0] = "y"
    graph = helper.make_graph(
        nodes, "main", inputs, [helper.make_tensor_value_info("y", elem, out_shape)], inits
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model)
    return model


def _tool(name: str) -> str:
    """Path of an IREE command-line tool: next to this Python first (the venv), then on PATH."""
    beside = Path(sys.executable).parent / name
    found = str(beside) if beside.is_file() else shutil.which(name)
    if not found:
        raise CollectError(f"{name} not found; install iree-base-compiler and iree-base-runtime")
    return found


def render(spec: ProgramSpec, workdir: Path) -> str:
    """The MLIR text of a program (ONNX families go through ``iree-import-onnx``)."""
    if spec.family in LINALG_FAMILIES:
        return render_linalg(spec)
    import onnx

    path = workdir / "model.onnx"
    onnx.save(build_onnx(spec), str(path))
    out = workdir / "imported.mlir"
    proc = subprocess.run(
        [_tool("iree-import-onnx"), str(path), "-o", str(out)],
        capture_output=True,
        text=True,
        timeout=COMPILE_TIMEOUT_S,
        check=False,
    )
    if proc.returncode != 0:
        raise RenderError(first_error_line(proc.stderr) or f"iree-import-onnx exited {proc.returncode}")
    return out.read_text()


class RenderError(RuntimeError):
    """A program could not be turned into MLIR text (the ONNX importer failed)."""


_INPUT_TYPE = re.compile(r"tensor<([^>]*)>|vtensor<\[([^\]]*)\],(\w+)>")


def benchmark_inputs(mlir: str) -> list[str]:
    """``--input`` values (``2x3xf32=1``) for ``@main``'s arguments, read from its signature."""
    match = re.search(r"func\.func @main\((.*?)\)\s*->", mlir, re.S)
    if not match:
        raise ValueError("no func.func @main(...) -> signature in the program")
    values = []
    for arg in re.split(r",\s*(?=%)", match.group(1).strip()):
        found = _INPUT_TYPE.search(arg)
        if not found:
            raise ValueError(f"unsupported argument type in {arg!r}")
        if found.group(1) is not None:
            spec = found.group(1)
        else:
            dims = [d.strip() for d in found.group(2).split(",") if d.strip()]
            spec = "x".join([*dims, found.group(3)])
        values.append(f"{spec}=1")
    return values


# --- compiling and measuring -----------------------------------------------------------------------
def first_error_line(stderr: str) -> str:
    """The first line mentioning an error (else the first non-empty line), trimmed to 500 characters."""
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    picked = next((line for line in lines if "error" in line.lower()), lines[0] if lines else "")
    return picked[:500]


_VREG = re.compile(r"%[xyz]mm(\d+)")
_FUNC = re.compile(r"^\s*\.type\s+([^,]+),@function", re.M)
_DISPATCH = re.compile(r"_dispatch_\d+")


def _empty_stats() -> dict[str, Any]:
    return {"instructions": 0, "vector": 0, "spills": 0, "reloads": 0, "registers": set()}


def assembly_stats(text: str) -> dict[str, float]:
    """Static statistics of x86-64 AT&T assembly as LLVM prints it, over the dispatch functions (named
    ``<function>_dispatch_<n>_...``; the runtime library's helpers linked into every executable — fp16
    conversions, the library query, ~1,400 instructions — are counted apart, in
    ``executable_instructions``): instructions (lines that are not labels, directives or comments), the
    ones that are vector instructions (operating on ymm/zmm, or packed SSE/AVX on xmm), distinct vector
    registers (xmm/ymm/zmm N share register N), and the spill stores and reloads LLVM annotates with
    ``# N-byte Spill`` / ``# N-byte (Folded) Reload``."""
    functions = set(_FUNC.findall(text))
    dispatch, everything = _empty_stats(), _empty_stats()
    in_dispatch = False
    for raw in text.splitlines():
        line = raw.strip()
        if not line:
            continue
        if not raw[:1].isspace() and line.endswith(":"):
            label = line[:-1]
            if label in functions:
                in_dispatch = _DISPATCH.search(label) is not None
            continue
        if line[0] in ".#" or not raw[:1].isspace():
            continue
        targets = (dispatch, everything) if in_dispatch else (everything,)
        code = line.split("#", 1)[0]
        regs = _VREG.findall(code)
        mnemonic = code.split(None, 1)[0] if code.strip() else ""
        is_vector = bool(regs) and (
            "%ymm" in code or "%zmm" in code or not mnemonic.endswith(("ss", "sd", "sh", "si", "2sd", "2ss"))
        )
        for stats in targets:
            stats["instructions"] += 1
            stats["spills"] += "Spill" in line
            stats["reloads"] += "Reload" in line
            stats["registers"].update(regs)
            stats["vector"] += is_vector
    return {
        "instructions": dispatch["instructions"],
        "vector_instructions": dispatch["vector"],
        "vector_registers": len(dispatch["registers"]),
        "spill_stores": dispatch["spills"],
        "spill_reloads": dispatch["reloads"],
        "executable_instructions": everything["instructions"],
        "executable_vector_registers": len(everything["registers"]),
    }


def code_bytes(path: Path) -> tuple[int, int]:
    """(bytes of the dispatch functions, bytes of all executable sections) of an ELF64 little-endian
    object file: function sizes from its symbol table, section sizes from its section headers."""
    data = path.read_bytes()
    if data[:4] != b"\x7fELF" or data[4] != 2 or data[5] != 1:
        return 0, 0
    shoff = struct.unpack_from("<Q", data, 0x28)[0]
    shentsize, shnum = struct.unpack_from("<HH", data, 0x3A)
    sections = []
    for i in range(shnum):
        base = shoff + i * shentsize
        sh_type, sh_flags = struct.unpack_from("<IQ", data, base + 4)
        offset, size = struct.unpack_from("<QQ", data, base + 24)
        link = struct.unpack_from("<I", data, base + 40)[0]
        entsize = struct.unpack_from("<Q", data, base + 56)[0]
        sections.append((sh_type, sh_flags, offset, size, link, entsize))
    total = sum(size for _, flags, _, size, _, _ in sections if flags & 0x4)  # SHF_EXECINSTR
    dispatch = 0
    for sh_type, _, offset, size, link, entsize in sections:
        if sh_type != 2 or not entsize:  # SHT_SYMTAB
            continue
        str_offset = sections[link][2]
        for pos in range(offset, offset + size, entsize):
            name_idx, info = struct.unpack_from("<IB", data, pos)
            sym_size = struct.unpack_from("<Q", data, pos + 16)[0]
            if info & 0xF != 2:  # STT_FUNC
                continue
            end = data.index(b"\0", str_offset + name_idx)
            if _DISPATCH.search(data[str_offset + name_idx : end].decode(errors="replace")):
                dispatch += sym_size
    return dispatch, total


def default_workers() -> int:
    """IREE worker threads: every usable CPU but one. A worker sharing its CPU with the benchmark's own
    thread, the collector or the OS waits for it, and the whole dispatch with it: on this 2-vCPU guest,
    two workers moved a program's runtime between launches by a median of 10% (mean 17%), one worker by
    5% (mean 9%), measured back to back on the same 30 programs."""
    return max(1, local_cpu_count() - 1)


@dataclass(frozen=True)
class BenchSettings:
    repetitions: int = 5
    min_time_s: float = 0.02
    warmup_s: float = 0.02
    threads: int = field(default_factory=default_workers)
    # Separate launches of iree-benchmark-module per program, their median the runtime: where the threads
    # land at a launch moves a short program's time far more than the repetitions within one launch do.
    invocations: int = 3

    @classmethod
    def from_environment(cls, environment: dict[str, Any]) -> BenchSettings:
        """The settings a collection recorded in its ``environment.json`` (see :func:`environment`); data
        collected before launches were counted had one launch per program."""
        bench = environment["benchmark"]
        return cls(
            repetitions=int(bench["repetitions"]),
            min_time_s=float(bench["min_time_s"]),
            warmup_s=float(bench["warmup_s"]),
            threads=int(bench["worker_threads"]),
            invocations=int(bench.get("invocations", 1)),
        )


def compile_program(mlir_path: Path, workdir: Path) -> dict[str, Any]:
    """Compile with iree-compile (llvm-cpu, host CPU), dumping executable assembly; the compile and
    assembly fields of a record (``status`` "ok" or "compile_error" with ``error``)."""
    dump = workdir / "dump"
    vmfb = workdir / "module.vmfb"
    cmd = [
        _tool("iree-compile"),
        *COMPILE_FLAGS,
        f"--iree-hal-dump-executable-intermediates-to={dump}",
        str(mlir_path),
        "-o",
        str(vmfb),
    ]
    start = time.perf_counter()
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=COMPILE_TIMEOUT_S, check=False)
    except subprocess.TimeoutExpired:
        return {"status": "compile_error", "error": f"iree-compile timed out after {COMPILE_TIMEOUT_S:.0f} s"}
    compile_ms = (time.perf_counter() - start) * 1e3
    if proc.returncode != 0 or not vmfb.is_file():
        return {
            "status": "compile_error",
            # The temporary directory's name says nothing about the program: drop it from the line.
            "error": first_error_line(proc.stderr.replace(f"{workdir}/", ""))
            or f"iree-compile exited {proc.returncode}",
            "compile_ms": round(compile_ms, 3),
        }
    text = "\n".join(p.read_text(errors="replace") for p in sorted(dump.glob("*.s")))
    stats = assembly_stats(text)
    # Entry points are named <function>_dispatch_<n>_<description>; helpers (half-float conversions, the
    # library query) are not dispatches.
    dispatches = {name[: m.end()] for name in _FUNC.findall(text) if (m := _DISPATCH.search(name))}
    sizes = [code_bytes(p) for p in dump.glob("*.o")]
    return {
        "status": "ok",
        "compile_ms": round(compile_ms, 3),
        "dispatches": len(dispatches),
        **stats,
        "vector_share": round(stats["vector_instructions"] / stats["instructions"], 6)
        if stats["instructions"]
        else 0.0,
        "spills": stats["spill_stores"] + stats["spill_reloads"],
        "code_bytes": sum(d for d, _ in sizes),
        "executable_code_bytes": sum(t for _, t in sizes),
        "vmfb_bytes": vmfb.stat().st_size,
    }


def _invocation(cmd: list[str]) -> tuple[np.ndarray, np.ndarray, int] | dict[str, Any]:
    """Per-call wall and CPU times (ms) of each repetition of one launch and the calls per repetition, or
    the run_error record."""
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=RUN_TIMEOUT_S, check=False)
    except subprocess.TimeoutExpired:
        return {
            "status": "run_error",
            "error": f"iree-benchmark-module timed out after {RUN_TIMEOUT_S:.0f} s",
        }
    try:
        report = json.loads(proc.stdout)
        runs = [b for b in report["benchmarks"] if b.get("run_type") == "iteration"]
    except (ValueError, KeyError, TypeError):
        runs = []
    if proc.returncode != 0 or not runs:
        return {"status": "run_error", "error": first_error_line(proc.stderr) or f"exit {proc.returncode}"}
    scale = {"ns": 1e-6, "us": 1e-3, "ms": 1.0, "s": 1e3}
    wall = np.array([r["real_time"] * scale[r.get("time_unit", "ns")] for r in runs], dtype=float)
    cpu = np.array([r["cpu_time"] * scale[r.get("time_unit", "ns")] for r in runs], dtype=float)
    return wall, cpu, int(runs[0].get("iterations", 0))


def _spread(wall: np.ndarray) -> float:
    """(p75 - p25) / median of one launch's repetitions."""
    p25, median, p75 = np.percentile(wall, [25, 50, 75])
    return float((p75 - p25) / median) if median > 0 else 0.0


def benchmark_module(vmfb: Path, inputs: list[str], settings: BenchSettings) -> dict[str, Any]:
    """Run ``@main`` with iree-benchmark-module on the local-task driver, ``settings.invocations`` times;
    per-call wall and CPU time (median over launches of each launch's median over repetitions), the spread
    within a launch and between launches, and the utilization of the worker threads."""
    cmd = [
        _tool("iree-benchmark-module"),
        f"--module={vmfb}",
        "--device=local-task",
        "--function=main",
        *(f"--input={v}" for v in inputs),
        f"--task_topology_group_count={settings.threads}",
        f"--benchmark_repetitions={settings.repetitions}",
        f"--benchmark_min_time={settings.min_time_s}s",
        f"--benchmark_min_warmup_time={settings.warmup_s}",
        "--benchmark_format=json",
    ]
    walls, cpus, iterations = [], [], 0
    for _ in range(settings.invocations):
        result = _invocation(cmd)
        if isinstance(result, dict):
            return result
        walls.append(result[0])
        cpus.append(result[1])
        iterations = result[2]
    medians = np.array([np.median(w) for w in walls])
    median = float(np.median(medians))
    cpu_median = float(np.median([np.median(c) for c in cpus]))
    return {
        "status": "ok",
        "runtime_ms": float(f"{median:.6g}"),
        "runtime_min_ms": float(f"{min(w.min() for w in walls):.6g}"),
        "runtime_spread": round(float(np.median([_spread(w) for w in walls])), 5),
        "runtime_launch_spread": round(float(np.ptp(medians) / median), 5) if median > 0 else 0.0,
        "cpu_time_ms": float(f"{cpu_median:.6g}"),
        "utilization": round(cpu_median / (median * settings.threads), 5) if median > 0 else 0.0,
        "threads": settings.threads,
        "invocations": settings.invocations,
        "repetitions": len(walls[0]),
        "iterations": iterations,
    }


def measure_program(spec: ProgramSpec, settings: BenchSettings, mlir: str | None = None) -> dict[str, Any]:
    """The full record of one program: key, family, dtype, parameters, MLIR text, compile and benchmark
    results (a failure is recorded with its status and first error line)."""
    record: dict[str, Any] = {
        "key": spec.key,
        "family": spec.family,
        "dtype": spec.dtype,
        "params": {k: list(v) if isinstance(v, tuple) else v for k, v in spec.params},
    }
    with tempfile.TemporaryDirectory(prefix="perfcost-mlir-") as tmp:
        workdir = Path(tmp)
        try:
            text = mlir if mlir is not None else render(spec, workdir)
        except (RenderError, subprocess.TimeoutExpired) as exc:
            return {**record, "status": "import_error", "error": str(exc)[:500], "mlir": None}
        record["mlir"] = text
        path = workdir / "program.mlir"
        path.write_text(text)
        compiled = compile_program(path, workdir)
        record.update(compiled)
        if compiled["status"] != "ok":
            return record
        try:
            inputs = benchmark_inputs(text)
        except ValueError as exc:
            return {**record, "status": "run_error", "error": str(exc)}
        record.update(benchmark_module(workdir / "module.vmfb", inputs, settings))
    return record


# --- the output file -------------------------------------------------------------------------------
def read_records(path: Path) -> Iterator[dict[str, Any]]:
    """Every complete record of a ``programs.jsonl.gz`` (a truncated last member is ignored)."""
    for _, record in _members(path.read_bytes() if path.exists() else b""):
        yield record


def _members(raw: bytes) -> Iterator[tuple[bytes, dict[str, Any]]]:
    """(member bytes, record) for each complete, parseable gzip member, stopping at the first bad one."""
    pos = 0
    while pos < len(raw):
        d = zlib.decompressobj(wbits=31)
        try:
            data = d.decompress(raw[pos:])
        except zlib.error:
            return
        if not d.eof:
            return
        end = len(raw) - len(d.unused_data)
        try:
            record = json.loads(data)
        except ValueError:
            return
        if not isinstance(record, dict) or not record.get("key"):
            return
        yield raw[pos:end], record
        pos = end


def recover(path: Path) -> set[str]:
    """Keys already in ``path``, after dropping a truncated tail, unreadable members and repeated keys
    (the file is rewritten atomically when anything was dropped)."""
    raw = path.read_bytes() if path.exists() else b""
    kept: list[bytes] = []
    keys: set[str] = set()
    duplicates = 0
    for member, record in _members(raw):
        if record["key"] in keys:
            duplicates += 1
            continue
        keys.add(record["key"])
        kept.append(member)
    good = sum(len(m) for m in kept)
    if good != len(raw) or duplicates or not path.exists():
        if path.exists():
            log.warning(
                "%s: repairing: dropping %d bytes of unreadable tail and %d duplicated records; keeping %d",
                path,
                len(raw) - good,
                duplicates,
                len(keys),
            )
        tmp = path.with_name(path.name + ".tmp")
        with open(tmp, "wb") as fh:
            fh.write(b"".join(kept))
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
        fsync_dir(path.parent)
    return keys


class RecordWriter:
    """Appends each record as its own gzip member with one ``write`` followed by ``fsync``."""

    def __init__(self, path: Path) -> None:
        self._fd = os.open(path, os.O_WRONLY | os.O_APPEND)

    def append(self, record: dict[str, Any]) -> None:
        write_durably(
            self._fd, gzip.compress((json.dumps(record, separators=(",", ":")) + "\n").encode(), mtime=0)
        )

    def close(self) -> None:
        os.close(self._fd)


def iree_versions() -> dict[str, str]:
    out = {}
    for dist in ("iree-base-compiler", "iree-base-runtime", "onnx"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[dist] = "not installed"
    return out


def cpu_flags() -> list[str]:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return sorted(line.split(":", 1)[1].split())
    except OSError:
        pass
    return []


def environment(settings: BenchSettings, extra: dict[str, Any]) -> dict[str, Any]:
    model_name = ""
    with contextlib.suppress(OSError, StopIteration):
        model_name = next(
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        )
    return {
        "collector": "perfcost collect mlir",
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "versions": iree_versions(),
        "compile_flags": list(COMPILE_FLAGS),
        "benchmark": {
            "driver": "local-task",
            "repetitions": settings.repetitions,
            "min_time_s": settings.min_time_s,
            "warmup_s": settings.warmup_s,
            "worker_threads": settings.threads,
            "invocations": settings.invocations,
            "runtime": "median over launches of each launch's median over repetitions of the mean wall time "
            "per call; runtime_spread = median over launches of (p75 - p25) / median over repetitions; "
            "runtime_launch_spread = (max - min) / runtime of the launches' medians; "
            "utilization = cpu_time / (runtime x worker_threads)",
        },
        "cpu_model": model_name,
        "cpu_flags": cpu_flags(),
        "usable_cpus": local_cpu_count(),
        "python": sys.version,
        "platform": platform.platform(),
        **extra,
    }


def collect(
    out: Path,
    specs: list[ProgramSpec],
    settings: BenchSettings,
    progress: Callable[[int, int, dict[str, Any]], None] | None = None,
) -> int:
    """Measure every spec not yet in ``out/programs.jsonl.gz``; returns how many were measured now."""
    out.mkdir(parents=True, exist_ok=True)
    with exclusive_lock(out):
        path = out / PROGRAMS
        existing = recover(path)
        load = os.getloadavg()[0]
        env = environment(settings, {"load_average_at_start": round(load, 2), "sweep_size": len(specs)})
        env_path = out / ENVIRONMENT_FILE
        tmp = env_path.with_name(env_path.name + ".tmp")
        tmp.write_text(json.dumps(env, indent=2) + "\n")
        os.replace(tmp, env_path)
        todo = [s for s in specs if s.key not in existing]
        log.info("%d of %d programs already measured in %s", len(specs) - len(todo), len(specs), path)
        writer = RecordWriter(path)
        try:
            for i, spec in enumerate(todo):
                record = measure_program(spec, settings)
                record["measured_at"] = datetime.now(UTC).isoformat(timespec="seconds")
                record["load_average"] = round(os.getloadavg()[0], 2)
                writer.append(record)
                if progress is not None:
                    progress(i + 1, len(todo), record)
        finally:
            writer.close()
        return len(todo)


def run_cli(
    out: Path,
    per_family: int,
    limit: int | None,
    repetitions: int,
    min_time: float,
    threads: int | None,
    invocations: int,
    dry_run: bool,
) -> None:
    """The body of ``perfcost collect mlir`` (options validated by the command)."""
    import typer

    specs = build_sweep(per_family)
    if limit is not None:
        specs = specs[:limit]
    if dry_run:
        by_family = {f: sum(s.family == f for s in specs) for f in FAMILIES}
        typer.echo(f"{len(specs)} programs: " + ", ".join(f"{f} {n}" for f, n in by_family.items()))
        return
    settings = BenchSettings(
        repetitions=repetitions,
        min_time_s=min_time,
        warmup_s=min_time,
        threads=threads or default_workers(),
        invocations=invocations,
    )
    started = time.monotonic()

    def progress(done: int, total: int, record: dict[str, Any]) -> None:
        elapsed = time.monotonic() - started
        log.info(
            "[%d/%d %.0fs] %s %s %s",
            done,
            total,
            elapsed,
            record["status"],
            record.get("runtime_ms", record.get("error", "")),
            record["key"],
        )

    with cli_errors(out, "program"):
        n = collect(out, specs, settings, progress)
    typer.echo(f"measured {n} programs in {time.monotonic() - started:.0f} s -> {out / PROGRAMS}")
