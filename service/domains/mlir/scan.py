"""Reading one MLIR program's logical lines in order: what :func:`service.domains.mlir.summary.summarize`
gathers before it lays the program out as summary values.

Part of the math behind :data:`service.domains.mlir.features.FEATURE_VERSION`: change it → bump the
version. Per line, :class:`Scan` counts op names and dialects, follows ``linalg.generic`` regions to count
their body ops, adds each linalg / ONNX op's FLOPs and bytes (:mod:`service.domains.mlir.cost`) to its
op class, tracks the region nesting depth and keeps the op doing the most work (:class:`Dominant`).
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field

from service.domains.mlir.cost import innermost, linalg_cost, onnx_cost, reduces_only_unit_dims
from service.domains.mlir.text import IN_OUT, STRING, op_names, parse_types

TRANSCENDENTAL = {"math.exp", "math.tanh", "math.log", "math.sqrt", "math.rsqrt", "math.erf", "math.powf"}
BODY_OPS_SKIP = {"linalg.yield", "arith.constant"}


@dataclass
class _Generic:
    """The linalg.generic being read: its iteration space and whether it reduces; its body ops are
    counted until its region (opened at ``depth``) closes."""

    space: float
    reduces: bool
    nbytes: float
    unit_reduction: bool
    inner: int
    shape: tuple[int, ...]
    depth: int
    body: float = 0.0
    trans: float = 0.0


@dataclass
class Dominant:
    """The op doing the most work (FLOPs, else bytes) shapes the dominant dispatch: its name, shape and
    reduction size, and how those align with vector widths, drive code size and register use."""

    work: float = -1.0
    name: str = ""
    shape: tuple[int, ...] = ()
    k: float = 0.0
    inner: int = 0

    def consider(self, name: str, work: float, shape: tuple[int, ...], k: float, inner: int) -> None:
        if work > self.work:
            self.work, self.name, self.shape, self.k, self.inner = work, name, shape, k, inner


@dataclass
class Scan:
    """The running totals of one program while its logical lines are read in order."""

    ops: Counter[str] = field(default_factory=Counter)
    dialects: Counter[str] = field(default_factory=Counter)
    # The summary lists its log_<class>_flops values in this order.
    flops: dict[str, float] = field(
        default_factory=lambda: dict.fromkeys(
            ("contraction", "conv", "pool", "elementwise", "reduction"), 0.0
        )
    )
    total_bytes: float = 0.0
    movement_bytes: float = 0.0
    max_op: float = 0.0
    max_k: float = 0.0
    min_mn: float = math.inf
    generic_red: int = 0
    generic_par: int = 0
    body_ops: int = 0
    transcendental: int = 0
    work_ops: int = 0
    depth: int = 0
    max_depth: int = 0
    regions: int = 0
    generic: _Generic | None = None
    main: Dominant = field(default_factory=Dominant)

    def read(self, line: str) -> None:
        code = STRING.sub(lambda m: m.group(0) if m.group(0).startswith('"onnx.') else '""', line)
        for name in op_names(line):
            self.ops[name] += 1
            self.dialects[name.split(".", 1)[0]] += 1
            self._count_body_op(name)
            if name == "linalg.generic":
                self._open_generic(line)
            elif name.startswith(("linalg.", "onnx.")):
                self._add_op(name, line)
        opened, closed = code.count("{"), code.count("}")
        self.depth += opened - closed
        self.regions += max(0, opened - closed)
        self.max_depth = max(self.max_depth, self.depth)
        if self.generic is not None and self.depth <= self.generic.depth and "}" in code:
            self._close_generic(self.generic)
            self.generic = None

    def _count_body_op(self, name: str) -> None:
        if self.generic is not None and name not in BODY_OPS_SKIP and not name.startswith("linalg."):
            self.generic.body += 1
            self.body_ops += 1
            if name in TRANSCENDENTAL:
                self.generic.trans += 1
                self.transcendental += 1

    def _open_generic(self, line: str) -> None:
        types = parse_types(line)
        reduces = "reduction" in line
        self.generic_red += reduces
        self.generic_par += not reduces
        shape = max(types, key=lambda t: t.elements).shape if types else ()
        m = IN_OUT.search(line)
        self.generic = _Generic(
            space=max((t.elements for t in types), default=1.0),
            reduces=reduces,
            nbytes=sum(t.nbytes for t in parse_types(m.group(1) + "," + m.group(2))) if m else 0.0,
            unit_reduction=reduces_only_unit_dims(line, shape),
            inner=innermost(parse_types(m.group(1)) if m else []),
            shape=shape,
            depth=self.depth,
        )

    def _add_op(self, name: str, line: str) -> None:
        cost = linalg_cost if name.startswith("linalg.") else onnx_cost
        op = cost(name, line)
        f, b, cls, k, mn = op.flops, op.nbytes, op.cls, op.k, op.mn
        # The result types follow the last "->" (the whole line when there is none).
        out_types = parse_types(line.rsplit("->", 1)[-1])
        if name != "linalg.fill":  # a fill is fused into its consumer: never the dominant op
            self.main.consider(
                name, f or b, out_types[-1].shape if out_types else (), k or op.window, op.inner
            )
        self.total_bytes += b
        # A fill only initialises what its consumer writes; compilers fuse it into that consumer.
        self.work_ops += cls not in ("reshape", "other") and name != "linalg.fill"
        if cls in self.flops:
            self.flops[cls] += f
            self.max_op = max(self.max_op, f)
        elif cls == "movement":
            self.movement_bytes += b
        if k:
            self.max_k, self.min_mn = max(self.max_k, k), min(self.min_mn, mn)

    def _close_generic(self, generic: _Generic) -> None:
        if generic.unit_reduction and generic.body <= 1:  # a copy in disguise: no work
            return
        self.work_ops += 1
        # Exp-like functions cost several FLOPs per element on a CPU.
        per_element = max(1.0, generic.body + 7.0 * generic.trans)
        f = generic.space * per_element
        self.flops["reduction" if generic.reduces else "elementwise"] += f
        self.max_op = max(self.max_op, f)
        self.total_bytes += generic.nbytes
        shape = generic.shape
        k = float(shape[-1]) if generic.reduces and shape else 0.0
        self.main.consider("linalg.generic", f, shape, k, generic.inner)
