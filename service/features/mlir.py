"""MLIR features: the one place where a program's MLIR text becomes model inputs (no compiler involved).

Training (``training/mlir.py``) and serving (``service/domains/mlir.py``) both call
:func:`features_from_summaries`; a fitted model records :data:`FEATURE_VERSION` and
:data:`FEATURE_COLUMNS` (the last one a runtime baseline whose fitted figures the card carries, see
:class:`RuntimeBaseline`), and loading refuses a model whose record differs from this module. Change the
math here → bump the version.

The text is read with a small line-oriented scanner rather than an MLIR parser, so that any dialect —
including ones this module has never heard of — is counted instead of rejected:

* large constants (``dense_resource`` blobs, the ``{-# dialect_resources #-}`` section, ``dense<...>``
  payloads) are cut out first, so a model's weights never reach the tokenizer;
* each statement's op name is read (custom ``dialect.op`` form, generic ``"dialect.op"(...)`` form, and
  the ONNX op inside ``torch.operator "onnx.X"``) and counted per op (:data:`KNOWN_OPS`) and per dialect
  (:data:`DIALECTS`); anything else lands in ``ops_unknown`` / ``dialects_unknown``;
* every tensor type (``tensor<4x8xf32>``, ``!torch.vtensor<[4,8],f32>``) gives shape and dtype
  statistics, and per linalg / ONNX op the FLOPs and bytes are estimated from its operand types;
* the region nesting depth, and relative frequencies of hashed token uni- and bigrams (SSA names and
  numbers normalised) complete the picture.
"""

from __future__ import annotations

import math
import re
import zlib
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field, fields
from functools import lru_cache
from typing import NamedTuple

import numpy as np
import pandas as pd

FEATURE_VERSION = "mlir-5"

# Op names counted one by one: what linalg-on-tensors programs and IREE's ONNX importer produce. Ops
# outside this list are still counted per dialect and as unknown (and flagged as out of distribution
# when training never saw them).
KNOWN_OPS: tuple[str, ...] = (
    "linalg.matmul",
    "linalg.batch_matmul",
    "linalg.conv_2d_nhwc_hwcf",
    "linalg.depthwise_conv_2d_nhwc_hwc",
    "linalg.pooling_nhwc_max",
    "linalg.pooling_nhwc_sum",
    "linalg.generic",
    "linalg.transpose",
    "linalg.fill",
    "linalg.yield",
    "linalg.softmax",
    "linalg.broadcast",
    "linalg.reduce",
    "linalg.map",
    "tensor.empty",
    "tensor.expand_shape",
    "tensor.collapse_shape",
    "tensor.extract_slice",
    "tensor.insert_slice",
    "tensor.pad",
    "arith.constant",
    "arith.addf",
    "arith.subf",
    "arith.mulf",
    "arith.divf",
    "arith.maximumf",
    "arith.negf",
    "arith.extf",
    "arith.truncf",
    "arith.addi",
    "arith.subi",
    "arith.muli",
    "arith.maxsi",
    "arith.extsi",
    "arith.sitofp",
    "math.exp",
    "math.tanh",
    "math.sqrt",
    "math.rsqrt",
    "math.absf",
    "func.func",
    "func.return",
    "builtin.module",
    "torch.operator",
    "torch.constant.none",
    "torch.constant.int",
    "torch.constant.float",
    "onnx.MatMul",
    "onnx.Gemm",
    "onnx.Add",
    "onnx.Mul",
    "onnx.Sub",
    "onnx.Div",
    "onnx.Relu",
    "onnx.Tanh",
    "onnx.Sigmoid",
    "onnx.Conv",
    "onnx.MaxPool",
    "onnx.Softmax",
    "onnx.Reshape",
    "onnx.Transpose",
    "onnx.Constant",
)
DIALECTS: tuple[str, ...] = (
    "linalg",
    "tensor",
    "arith",
    "math",
    "func",
    "builtin",
    "torch",
    "onnx",
    "scf",
    "memref",
    "vector",
    "affine",
    "tosa",
    "stablehlo",
    "util",
    "flow",
    "hal",
)
DTYPES: tuple[str, ...] = ("f32", "f16", "bf16", "f64", "i8", "i32", "i64", "i1")
DTYPE_BYTES = {"f64": 8, "f32": 4, "f16": 2, "bf16": 2, "i64": 8, "i32": 4, "i16": 2, "i8": 1, "i1": 1}
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
N_HASH = 64
# Extents of the dominant op (output dimensions from the innermost, its reduction size or window, its first
# input's innermost dimension) and what is recorded of each (see _divisibility).
MAIN_EXTENTS = ("last", "second", "third", "k", "input_last")
DIVISIBILITY = ("mod16", "pow2", "div16", "div64")

_SHAPE_STATS = (
    "tensor_types",
    "max_log_elements",
    "mean_log_elements",
    "max_rank",
    "arg_count",
    "log_arg_bytes",
    "log_result_bytes",
    "max_dim_log",
    "min_dim_log",
    "dims_pow2_share",
    "dims_mod16_share",
    "dims_one_share",
    "main_op_code",
    "main_rank",
    "main_log_elements",
    *(f"main_{dim}_{name}" for dim in MAIN_EXTENTS for name in ("log", *DIVISIBILITY)),
)
_COST = (
    "log_flops",
    "log_bytes",
    "log_intensity",
    "log_max_op_flops",
    "log_contraction_flops",
    "log_conv_flops",
    "log_pool_flops",
    "log_elementwise_flops",
    "log_reduction_flops",
    "log_movement_bytes",
    "contraction_share",
    "log_max_k",
    "log_min_mn",
    "generic_reduction_ops",
    "generic_parallel_ops",
    "generic_body_ops",
    "transcendental_ops",
    "work_ops",
)
_STRUCTURE = (
    "ops_total",
    "ops_unknown",
    "dialects_unknown",
    "max_depth",
    "regions",
    "lines",
    "log_text_bytes",
    "log_tokens",
    "blobs",
    "torch_frontend",
)
# LightGBM refuses JSON punctuation (':' ',' '"' brackets) in feature names, so op names are spelled
# with underscores.
SUMMARY_COLUMNS: tuple[str, ...] = (
    *(f"op_{name.replace('.', '_')}" for name in KNOWN_OPS),
    *(f"dialect_{d}" for d in DIALECTS),
    *(f"dtype_{d}" for d in DTYPES),
    *_SHAPE_STATS,
    *_COST,
    *_STRUCTURE,
    *(f"ngram_{i:02d}" for i in range(N_HASH)),
)
BASELINE_COLUMN = "log_baseline_ms"
FEATURE_COLUMNS: tuple[str, ...] = (*SUMMARY_COLUMNS, BASELINE_COLUMN)


class MlirTextError(ValueError):
    """The text is not an MLIR program (the message says why)."""


_BLOB_SECTION = re.compile(r"\{-#.*?#-\}", re.S)
_DENSE_RESOURCE = re.compile(r"dense_resource<[^>]*>")
_STRING = re.compile(r'"(?:[^"\\]|\\.)*"')
_STATEMENT = re.compile(
    r'(?:^|[{=])\s*(?:"([A-Za-z_][\w$]*(?:\.[\w$]+)+)"|([A-Za-z_][\w$]*(?:\.[\w$]+)+|module|return))'
    r"(?![\w$.])(?!\s*=)"
)
_BARE = {"module": "builtin.module", "return": "func.return"}
_ONNX_OP = re.compile(r'torch\.operator\s+"(onnx\.\w+)"')
_TENSOR = re.compile(r"(?<![\w.])tensor<([^<>]*)>")
_VTENSOR = re.compile(r"vtensor<\[([^\]]*)\],\s*(\w+)>")
_TOKEN = re.compile(r"%[\w#]+|@[\w$.]+|[A-Za-z_][\w.$]*|\d+(?:\.\d*)?(?:[eE][-+]?\d+)?|[{}()\[\]<>=:,\-]")
_IN_OUT = re.compile(r"ins\((.*?)\)\s*outs\((.*?)\)")
_FUNC_SIG = re.compile(
    r"func\.func\s+(?:\w+\s+)?@[\w$.]+\((.*?)\)\s*(?:->\s*(.*?))?\s*(?:attributes|\{)", re.S
)
TRANSCENDENTAL = {"math.exp", "math.tanh", "math.log", "math.sqrt", "math.rsqrt", "math.erf", "math.powf"}
BODY_OPS_SKIP = {"linalg.yield", "arith.constant"}


def strip_constants(text: str) -> tuple[str, int]:
    """The text without large constants, and how many were cut: the ``{-# ... #-}`` resource section,
    ``dense_resource<name>`` handles and the payload of every ``dense<...>`` literal."""
    count = 0

    def cut(_: re.Match[str]) -> str:
        nonlocal count
        count += 1
        return ""

    text = _BLOB_SECTION.sub(cut, text)
    text = _DENSE_RESOURCE.sub(lambda m: (cut(m), "dense_resource<blob>")[1], text)
    out: list[str] = []
    pos = 0
    while True:
        start = text.find("dense<", pos)
        if start < 0:
            out.append(text[pos:])
            break
        i = start + len("dense<")
        depth = 1
        in_string = False
        # Scan to the matching '>' (payloads nest brackets and may quote hex strings; a string is skipped).
        while i < len(text) and depth:
            ch = text[i]
            if in_string:
                if ch == "\\":
                    i += 1
                elif ch == '"':
                    in_string = False
            elif ch == '"':
                in_string = True
            elif ch == "<":
                depth += 1
            elif ch == ">":
                depth -= 1
            i += 1
        out.append(text[pos:start] + "dense<C>")
        count += 1
        pos = i
    return "".join(out), count


def check_mlir(text: str) -> None:
    """Raise :class:`MlirTextError` unless the text looks like an MLIR program: non-empty, with a
    ``module`` or a ``func.func``, and with balanced braces, parentheses and brackets outside strings."""
    if not text.strip():
        raise MlirTextError("the text is empty")
    body, _ = strip_constants(text)
    body = _STRING.sub('""', body)
    if not re.search(r"(^|\s)module\b|func\.func\b", body):
        raise MlirTextError("no 'module' or 'func.func' found: this is not an MLIR program")
    for open_, close in ("{}", "()", "[]"):
        depth = 0
        for line_no, line in enumerate(body.splitlines(), 1):
            for ch in line:
                if ch == open_:
                    depth += 1
                elif ch == close:
                    depth -= 1
                    if depth < 0:
                        raise MlirTextError(f"unbalanced '{close}' at line {line_no}")
        if depth:
            raise MlirTextError(f"unbalanced '{open_}': {depth} left open at the end of the text")


@dataclass
class TensorType:
    shape: tuple[int, ...]
    dtype: str

    @property
    def elements(self) -> float:
        return float(math.prod(self.shape)) if self.shape else 1.0

    @property
    def nbytes(self) -> float:
        return self.elements * DTYPE_BYTES.get(self.dtype, 4)


def parse_types(text: str) -> list[TensorType]:
    """Every ranked tensor type in ``text`` (builtin and torch); dynamic dims (``?``, ``-1``) count as 1."""
    found = []
    for m in _TENSOR.finditer(text):
        parts = m.group(1).split(",")[0].strip().split("x")
        dtype = parts[-1].strip()
        dims = tuple(int(p) if p.isdigit() else 1 for p in parts[:-1])
        found.append(TensorType(dims, dtype))
    for m in _VTENSOR.finditer(text):
        dims = tuple(
            int(p) if p.strip().lstrip("-").isdigit() and int(p) > 0 else 1
            for p in m.group(1).split(",")
            if p.strip()
        )
        found.append(TensorType(dims, m.group(2)))
    return found


@dataclass
class Summary:
    """What the scanner read from one program (also returned to API clients as the op summary)."""

    ops: Counter[str] = field(default_factory=Counter)
    dialects: Counter[str] = field(default_factory=Counter)
    values: dict[str, float] = field(default_factory=dict)
    ngrams: np.ndarray = field(default_factory=lambda: np.zeros(N_HASH))


def _op_names(line: str) -> list[str]:
    """Op names of the statements on one line: usually one, several when a program is written on one
    line (``module { func.func @f() { foo.bar } }``). A dotted name counts as an op at the start of a
    statement (line start, after ``=`` or ``{``) unless an ``=`` follows it (an attribute name)."""
    onnx = _ONNX_OP.search(line)
    if onnx:
        return [onnx.group(1)]
    names = []
    for m in _STATEMENT.finditer(_STRING.sub(_keep_op_string, line)):
        word = m.group(1) or m.group(2)
        names.append(_BARE.get(word, word))
    return names


def _keep_op_string(m: re.Match[str]) -> str:
    """Strings are blanked before scanning, except a generic-form op name (``"dialect.op"(``)."""
    return m.group(0) if re.fullmatch(r'"[A-Za-z_][\w$]*(?:\.[\w$]+)+"', m.group(0)) else '""'


def _log(x: float) -> float:
    return math.log(x) if x > 0 else 0.0


class OpCost(NamedTuple):
    """What one linalg or ONNX op costs and how its loops are shaped."""

    flops: float
    nbytes: float
    cls: str
    k: float = 0.0  # reduction size of a contraction
    mn: float = 0.0  # min(m, n) of a contraction
    window: float = 0.0  # what a convolution or pooling reduces over per output element
    inner: int = 0  # innermost extent of the first input


def _innermost(ins: Sequence[TensorType]) -> int:
    return ins[0].shape[-1] if ins and ins[0].shape else 0


def _linalg_cost(name: str, line: str) -> OpCost:
    """Cost of one linalg statement from its ``ins``/``outs`` types."""
    m = _IN_OUT.search(line)
    if not m:
        return OpCost(0.0, 0.0, "other")
    ins, outs = parse_types(m.group(1)), parse_types(m.group(2))
    nbytes = sum(t.nbytes for t in ins) + sum(t.nbytes for t in outs)
    inner = _innermost(ins)
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


_PERMUTATION = re.compile(r"permutation\s*=\s*\[([\d,\s]*)\]")
_ITERATORS = re.compile(r"iterator_types\s*=\s*\[([^\]]*)\]")


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


def _reduces_only_unit_dims(line: str, shape: tuple[int, ...]) -> bool:
    """A linalg.generic whose every reduction dimension has extent 1 combines each element with the
    init value once: with a single body op it is a copy (or a reshape), which compilers fold."""
    m = _ITERATORS.search(line)
    if not m:
        return False
    kinds = re.findall(r'"(\w+)"', m.group(1))
    if len(kinds) != len(shape) or "reduction" not in kinds:
        return False
    return all(extent == 1 for kind, extent in zip(kinds, shape, strict=True) if kind == "reduction")


def _onnx_cost(name: str, line: str) -> OpCost:
    """Cost of one ONNX op from its ``(operand types) -> result type``."""
    sig = line.rsplit(") : (", 1)
    types = parse_types(sig[1] if len(sig) == 2 else line)
    if not types:
        return OpCost(0.0, 0.0, "other")
    out, ins = types[-1], types[:-1]
    nbytes = sum(t.nbytes for t in types)
    inner = _innermost(ins)
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


_CONTINUATION = ("ins(", "outs(", "->", "iterator_types", "indexing_maps", ":", "attributes", "permutation")


def logical_lines(text: str) -> list[str]:
    """Physical lines joined into one line per statement head: a statement continues while a ``(`` or
    ``[`` is open, after a trailing comma, or when the next line starts with ``ins(``/``outs(``/``->``
    and the like (how hand-written and pretty-printed linalg wraps long ops)."""
    out: list[str] = []
    depth = 0
    for raw in text.splitlines():
        line = raw.strip()
        if not line:
            continue
        if out and (depth > 0 or out[-1].endswith(",") or line.startswith(_CONTINUATION)):
            out[-1] += " " + line
        else:
            out.append(line)
        blank = _STRING.sub('""', line)
        depth = max(0, depth + blank.count("(") + blank.count("[") - blank.count(")") - blank.count("]"))
    return out


@lru_cache(maxsize=1 << 16)
def _bucket(token: str) -> int:
    # Cached: programs repeat the same few hundred tokens and n-grams thousands of times.
    return zlib.crc32(token.encode()) % N_HASH


def summarize(text: str) -> Summary:
    """Scan one program (see the module docstring). Never raises on unknown ops or dialects."""
    stripped, blobs = strip_constants(text)
    summary = Summary()
    values = summary.values
    flops = {"contraction": 0.0, "conv": 0.0, "pool": 0.0, "elementwise": 0.0, "reduction": 0.0}
    total_bytes = movement_bytes = max_op = max_k = 0.0
    min_mn = math.inf
    generic_red = generic_par = body_ops = transcendental = work_ops = 0
    depth = max_depth = regions = 0
    # The linalg.generic being read: its iteration space and whether it reduces; its body ops are
    # counted until the region closes.
    generic: dict[str, float] | None = None
    generic_shape: tuple[int, ...] = ()
    generic_depth = 0
    # The op doing the most work (FLOPs, else bytes) shapes the dominant dispatch: its name, shape and
    # reduction size, and how those align with vector widths, drive code size and register use.
    main: dict[str, object] = {"work": -1.0, "name": "", "shape": (), "k": 0.0, "inner": 0}

    def consider(name: str, work: float, shape: tuple[int, ...], k: float, inner: int) -> None:
        if work > float(main["work"]):  # type: ignore[arg-type]
            main.update(work=work, name=name, shape=shape, k=k, inner=inner)

    lines = logical_lines(stripped)
    for line in lines:
        code = _STRING.sub(lambda m: m.group(0) if m.group(0).startswith('"onnx.') else '""', line)
        for name in _op_names(line):
            summary.ops[name] += 1
            summary.dialects[name.split(".", 1)[0]] += 1
            if generic is not None and name not in BODY_OPS_SKIP and not name.startswith("linalg."):
                generic["body"] += 1
                body_ops += 1
                if name in TRANSCENDENTAL:
                    generic["trans"] += 1
                    transcendental += 1
            if name == "linalg.generic":
                types = parse_types(line)
                space = max((t.elements for t in types), default=1.0)
                reduces = "reduction" in line
                generic_red += reduces
                generic_par += not reduces
                generic = {"space": space, "body": 0.0, "trans": 0.0, "reduces": float(reduces), "bytes": 0.0}
                generic_shape = max(types, key=lambda t: t.elements).shape if types else ()
                generic["unit_reduction"] = float(_reduces_only_unit_dims(line, generic_shape))
                m = _IN_OUT.search(line)
                generic["inner"] = float(_innermost(parse_types(m.group(1)) if m else []))
                if m:
                    generic["bytes"] = sum(t.nbytes for t in parse_types(m.group(1) + "," + m.group(2)))
                generic_depth = depth
            elif name.startswith(("linalg.", "onnx.")):
                cost = _linalg_cost if name.startswith("linalg.") else _onnx_cost
                op = cost(name, line)
                f, b, cls, k, mn = op.flops, op.nbytes, op.cls, op.k, op.mn
                # The result types follow the last "->" (the whole line when there is none).
                out_types = parse_types(line.rsplit("->", 1)[-1])
                if name != "linalg.fill":  # a fill is fused into its consumer: never the dominant op
                    consider(name, f or b, out_types[-1].shape if out_types else (), k or op.window, op.inner)
                total_bytes += b
                # A fill only initialises what its consumer writes; compilers fuse it into that consumer.
                work_ops += cls not in ("reshape", "other") and name != "linalg.fill"
                if cls in flops:
                    flops[cls] += f
                    max_op = max(max_op, f)
                elif cls == "movement":
                    movement_bytes += b
                if k:
                    max_k, min_mn = max(max_k, k), min(min_mn, mn)
        opened, closed = code.count("{"), code.count("}")
        depth += opened - closed
        regions += max(0, opened - closed)
        max_depth = max(max_depth, depth)
        if generic is not None and depth <= generic_depth and "}" in code:
            if not (generic["unit_reduction"] and generic["body"] <= 1):  # else a copy in disguise: no work
                work_ops += 1
                # Exp-like functions cost several FLOPs per element on a CPU.
                per_element = max(1.0, generic["body"] + 7.0 * generic["trans"])
                f = generic["space"] * per_element
                flops["reduction" if generic["reduces"] else "elementwise"] += f
                max_op = max(max_op, f)
                total_bytes += generic["bytes"]
                consider(
                    "linalg.generic",
                    f,
                    generic_shape,
                    generic_shape[-1] if generic["reduces"] and generic_shape else 0.0,
                    int(generic["inner"]),
                )
            generic = None

    types = parse_types(stripped)
    log_elems = [_log(t.elements) for t in types]
    dims = [d for t in types for d in t.shape]
    values["tensor_types"] = float(len(types))
    values["max_log_elements"] = max(log_elems, default=0.0)
    values["mean_log_elements"] = float(np.mean(log_elems)) if log_elems else 0.0
    values["max_rank"] = float(max((len(t.shape) for t in types), default=0))
    values["max_dim_log"] = _log(max(dims, default=1))
    values["min_dim_log"] = _log(min(dims, default=1))
    values["dims_pow2_share"] = float(np.mean([d & (d - 1) == 0 for d in dims])) if dims else 0.0
    values["dims_mod16_share"] = float(np.mean([d % 16 == 0 for d in dims])) if dims else 0.0
    values["dims_one_share"] = float(np.mean([d == 1 for d in dims])) if dims else 0.0
    shape: tuple[int, ...] = main["shape"]  # type: ignore[assignment]
    k_main = float(main["k"])  # type: ignore[arg-type]
    values["main_op_code"] = (
        float(zlib.crc32(str(main["name"]).encode()) % 1_000_003) if main["name"] else -1.0
    )
    values["main_rank"] = float(len(shape))
    values["main_log_elements"] = _log(float(math.prod(shape))) if shape else 0.0
    extents = {
        "last": shape[-1] if shape else 0,
        "second": shape[-2] if len(shape) > 1 else 0,
        "third": shape[-3] if len(shape) > 2 else 0,
        "k": int(k_main),
        "input_last": int(main["inner"]),  # type: ignore[call-overload]
    }
    for dim, extent in extents.items():
        values[f"main_{dim}_log"] = _log(extent)
        values.update({f"main_{dim}_{name}": value for name, value in _divisibility(extent).items()})
    dtype_counts = Counter(t.dtype for t in types)
    for d in DTYPES:
        values[f"dtype:{d}"] = dtype_counts.get(d, 0) / max(len(types), 1)
    sig = _FUNC_SIG.search(stripped)
    arg_types = parse_types(sig.group(1)) if sig else []
    res_types = parse_types(sig.group(2) or "") if sig else []
    values["arg_count"] = float(len(arg_types))
    values["log_arg_bytes"] = _log(sum(t.nbytes for t in arg_types))
    values["log_result_bytes"] = _log(sum(t.nbytes for t in res_types))

    total_flops = sum(flops.values())
    values["log_flops"] = _log(total_flops)
    values["log_bytes"] = _log(total_bytes)
    values["log_intensity"] = _log(total_flops / total_bytes) if total_bytes and total_flops else 0.0
    values["log_max_op_flops"] = _log(max_op)
    for cls in flops:
        values[f"log_{cls}_flops"] = _log(flops[cls])
    values["log_movement_bytes"] = _log(movement_bytes)
    values["contraction_share"] = (flops["contraction"] + flops["conv"]) / total_flops if total_flops else 0.0
    values["log_max_k"] = _log(max_k)
    values["log_min_mn"] = _log(min_mn) if math.isfinite(min_mn) else 0.0
    values["generic_reduction_ops"] = float(generic_red)
    values["generic_parallel_ops"] = float(generic_par)
    values["generic_body_ops"] = float(body_ops)
    values["transcendental_ops"] = float(transcendental)
    values["work_ops"] = float(work_ops)

    known_ops, known_dialects = set(KNOWN_OPS), set(DIALECTS)
    values["ops_total"] = float(sum(summary.ops.values()))
    values["ops_unknown"] = float(sum(n for op, n in summary.ops.items() if op not in known_ops))
    values["dialects_unknown"] = float(sum(n for d, n in summary.dialects.items() if d not in known_dialects))
    values["max_depth"] = float(max_depth)
    values["regions"] = float(regions)
    values["lines"] = float(len(lines))
    values["log_text_bytes"] = _log(len(stripped))
    values["blobs"] = float(blobs)
    values["torch_frontend"] = float(summary.dialects.get("torch", 0) > 0)

    tokens = [_normalise(t) for t in _TOKEN.findall(stripped)]
    values["log_tokens"] = _log(len(tokens))
    grams = np.zeros(N_HASH)
    for first, second in zip(tokens, tokens[1:], strict=False):
        grams[_bucket(first)] += 1
        grams[_bucket(first + " " + second)] += 1
    summary.ngrams = grams / max(grams.sum(), 1.0)
    return summary


def _divisibility(extent: int) -> dict[str, float]:
    """How a loop extent splits into vector-width tiles (-1 when the op has no such dimension).

    The compiler picks tile sizes that divide an extent where it can and peels or unrolls what remains,
    so code size and register use jump with divisibility rather than size: the largest power of two
    dividing the extent (capped at 128), its largest divisor up to 16 and up to 64, and the remainder
    modulo 16 (IREE-compiled matmuls here: 75% → 55% CV MAPE of the instruction count with these).
    """
    if extent <= 0:
        return dict.fromkeys(DIVISIBILITY, -1.0)
    return {
        "mod16": float(extent % 16),
        "pow2": float(min(extent & -extent, 128)),
        "div16": float(_largest_divisor(extent, 16)),
        "div64": float(_largest_divisor(extent, 64)),
    }


@lru_cache(maxsize=4096)
def _largest_divisor(extent: int, cap: int) -> int:
    return max(d for d in range(1, min(extent, cap) + 1) if extent % d == 0)


def _normalise(token: str) -> str:
    """SSA values and numbers carry no meaning across programs: map them to placeholders."""
    if token[0] == "%":
        return "%"
    if token[0].isdigit():
        return "#"
    return token


def feature_row(summary: Summary) -> list[float]:
    row = [float(summary.ops.get(name, 0)) for name in KNOWN_OPS]
    row += [float(summary.dialects.get(d, 0)) for d in DIALECTS]
    row += [summary.values[f"dtype:{d}"] for d in DTYPES]
    row += [summary.values[c] for c in (*_SHAPE_STATS, *_COST, *_STRUCTURE)]
    row += list(summary.ngrams)
    return row


@dataclass(frozen=True)
class RuntimeBaseline:
    """A program's runtime in ms before any tree: ``floor_ms``, plus ``call_ms + flops / flops_per_ms +
    bytes / bytes_per_ms`` when some op does work (a program the compiler folds away entirely runs no
    dispatch). Its four figures are fitted on one machine's measurements in training and recorded in the
    model card; the runtime model may learn its target relative to it (cross-validation decides).

    Trees cannot extrapolate: on a program family training never saw, they answer with the runtimes of the
    families they know. This baseline scales with the estimated work instead. Leaving each family of
    mlir-cpu-local out in turn, runtime MAPE over all programs went from 92% to 59%: transposes 626% →
    104%, reductions 119% → 37%; elementwise chains went the other way, 221% → 330%."""

    floor_ms: float
    call_ms: float
    flops_per_ms: float
    bytes_per_ms: float

    CARD_KEY = "runtime_baseline"

    def log_ms(self, table: pd.DataFrame) -> np.ndarray:
        """The log-scale baseline of each row of a table of :data:`SUMMARY_COLUMNS`."""
        log_flops = table["log_flops"].to_numpy(dtype=float)
        log_bytes = table["log_bytes"].to_numpy(dtype=float)
        # _log maps 0 to 0: a zero column means no FLOPs (bytes), not one.
        flops = np.where(log_flops != 0, np.exp(log_flops), 0.0)
        nbytes = np.where(log_bytes != 0, np.exp(log_bytes), 0.0)
        works = table["work_ops"].to_numpy(dtype=float) > 0
        roofline = self.call_ms + flops / self.flops_per_ms + nbytes / self.bytes_per_ms
        return np.log(self.floor_ms + np.where(works, roofline, 0.0))

    def to_card(self) -> dict[str, float]:
        return {f.name: float(getattr(self, f.name)) for f in fields(self)}

    @classmethod
    def from_card(cls, card: dict[str, object]) -> RuntimeBaseline:
        """The baseline a model card records; :class:`ValueError` naming the field when it is missing or
        not a positive finite number."""
        entry = card.get(cls.CARD_KEY)
        if not isinstance(entry, dict):
            raise ValueError(f"the card has no {cls.CARD_KEY!r} object (MLIR models record their baseline)")
        names = [f.name for f in fields(cls)]
        return cls(**{name: positive_figure(entry.get(name), f"{cls.CARD_KEY}.{name}") for name in names})


def positive_figure(value: object, name: str) -> float:
    """``value`` as a float when it is a positive finite number; :class:`ValueError` naming ``name``
    otherwise (for figures a model card carries)."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    if value <= 0:
        raise ValueError(f"{name} must be positive, got {value!r}")
    return float(value)


def summary_table(summaries: Sequence[Summary]) -> pd.DataFrame:
    """Every feature but the baseline: exactly :data:`SUMMARY_COLUMNS`, one row per summary, in order."""
    rows = [feature_row(s) for s in summaries]
    matrix = np.asarray(rows, dtype=float) if rows else np.empty((0, len(SUMMARY_COLUMNS)))
    return pd.DataFrame(matrix, columns=list(SUMMARY_COLUMNS))


def with_baseline(table: pd.DataFrame, baseline: RuntimeBaseline) -> pd.DataFrame:
    """A summary table completed with the baseline column: exactly :data:`FEATURE_COLUMNS`."""
    out = table.loc[:, list(SUMMARY_COLUMNS)].copy()
    out[BASELINE_COLUMN] = baseline.log_ms(out)
    return out


def features_from_summaries(summaries: Sequence[Summary], baseline: RuntimeBaseline) -> pd.DataFrame:
    """The model inputs, exactly :data:`FEATURE_COLUMNS`, one row per summary (the service keeps the
    summaries for its response)."""
    return with_baseline(summary_table(summaries), baseline)
