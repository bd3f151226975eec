"""The GPU collector's sweeps: ``calibration`` is the shipped few-shot set
(``training/data/gemm_calibration_sweep.csv``, at most 32 shapes, see :func:`calibration_sweep`), ``full``
adds a few hundred shapes drawn with a fixed seed (:func:`full_sweep`); both are fixed lists, so a
calibration run can be extended by a full run in the same directory.
"""

from __future__ import annotations

import csv
import io
import math
import random
import re
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum
from importlib import resources

import pandas as pd

from service.domains.gemm.features import DTYPES, LAYOUTS, OPS
from training.collect.gemm import GemmShape

# dtypes torch.matmul/bmm run on a CUDA device (int8 needs other entry points).
GPU_DTYPES = ("float32", "float16", "bfloat16", "float64")
SWEEP_FILE = "gemm_calibration_sweep.csv"
SWEEP_COLUMNS = ("op", "batch", "m", "n", "k", "dtype", "layout")
MAX_CALIBRATION_SHAPES = 32
FULL_SEED = 20_261_201


@dataclass(frozen=True, order=True)
class GpuGemmConfig(GemmShape):
    """One measured point. ``gemm``/``linear``: 2-D operands (batch 1); ``bmm``: ``batch`` matrices.
    ``layout``: per operand (A then B) ``n`` stored as used, ``t`` stored transposed."""

    layout: str

    def variant(self) -> str:
        return self.layout


class SweepError(ValueError):
    """A sweep file is malformed; the message names the file, the line and the field."""


def _check_config(cfg: GpuGemmConfig) -> str | None:
    """Why ``cfg`` cannot be measured, naming the field, or None."""
    if cfg.op not in OPS:
        return f"op {cfg.op!r} is not one of {', '.join(OPS)}"
    if cfg.dtype not in DTYPES:
        return f"dtype {cfg.dtype!r} is not one of {', '.join(DTYPES)}"
    if cfg.dtype not in GPU_DTYPES:
        return f"dtype {cfg.dtype!r} is not measured by the GPU collector ({', '.join(GPU_DTYPES)})"
    if cfg.layout not in LAYOUTS:
        return f"layout {cfg.layout!r} is not one of {', '.join(LAYOUTS)}"
    if cfg.op != "bmm" and cfg.batch != 1:
        return f"batch {cfg.batch} must be 1 for op {cfg.op} (a batched product is op bmm)"
    if cfg.op == "linear" and cfg.layout != "nt":
        return f"layout {cfg.layout!r} must be 'nt' for op linear (x @ W.T, W stored (n, k))"
    return None


def parse_sweep(text: str, source: str, max_rows: int | None = MAX_CALIBRATION_SHAPES) -> list[GpuGemmConfig]:
    """The configurations of a sweep CSV (columns :data:`SWEEP_COLUMNS`), validated: sizes positive
    integers, op/dtype/layout known, no duplicate, at most ``max_rows`` rows. Raises :class:`SweepError`
    naming the line and field of the first problem."""
    reader = csv.reader(io.StringIO(text))
    header = next(reader, None)
    if header is None or tuple(h.strip() for h in header) != SWEEP_COLUMNS:
        raise SweepError(f"{source}: line 1: header must be {','.join(SWEEP_COLUMNS)}, got {header!r}")
    configs: list[GpuGemmConfig] = []
    seen: dict[GpuGemmConfig, int] = {}
    for line, fields in enumerate(reader, start=2):
        if not fields or all(not f.strip() for f in fields):
            continue
        if len(fields) != len(SWEEP_COLUMNS):
            raise SweepError(f"{source}: line {line}: {len(fields)} fields, expected {len(SWEEP_COLUMNS)}")
        row = dict(zip(SWEEP_COLUMNS, (f.strip() for f in fields), strict=True))
        sizes: dict[str, int] = {}
        for name in ("batch", "m", "n", "k"):
            value = row[name]
            if not re.fullmatch(r"[0-9]+", value) or int(value) < 1:
                raise SweepError(f"{source}: line {line}: {name} {value!r} is not a positive integer")
            sizes[name] = int(value)
        cfg = GpuGemmConfig(row["op"], dtype=row["dtype"], layout=row["layout"], **sizes)
        problem = _check_config(cfg)
        if problem:
            raise SweepError(f"{source}: line {line}: {problem}")
        if cfg in seen:
            raise SweepError(f"{source}: line {line}: duplicate of line {seen[cfg]} ({cfg.key})")
        seen[cfg] = line
        configs.append(cfg)
    if not configs:
        raise SweepError(f"{source}: no configurations")
    if max_rows is not None and len(configs) > max_rows:
        raise SweepError(f"{source}: {len(configs)} configurations, at most {max_rows} allowed")
    return configs


def calibration_configs() -> list[GpuGemmConfig]:
    """The shipped few-shot calibration sweep, validated (see :func:`parse_sweep`)."""
    ref = resources.files("training.data").joinpath(SWEEP_FILE)
    return parse_sweep(ref.read_text(encoding="utf-8"), f"training/data/{SWEEP_FILE}")


def calibration_sweep() -> pd.DataFrame:
    """The shipped calibration sweep as a table (columns :data:`SWEEP_COLUMNS`, sizes int64).

    At most 32 shapes chosen to pin a device down: tiny ones (launch/dispatch floor), skinny GEMV-like
    and outer-product-like ones (memory bandwidth), large aligned squares 1024..8192 (FP32 peak
    efficiency), unaligned 2049/4095 twins (alignment penalty), 128x128-tile wave probes (108/117 and
    132/144 tiles: one wave and just over on 108- and 132-SM parts), bmm of batch 8..64 (attention-like
    included), transformer linear shapes, and a few float16/bfloat16 ones (tensor cores)."""
    configs = calibration_configs()
    frame = pd.DataFrame([{c: getattr(cfg, c) for c in SWEEP_COLUMNS} for cfg in configs])
    return frame.astype({c: "int64" for c in ("batch", "m", "n", "k")})


SQUARE_SIZES = (
    *(1, 8, 16, 31, 32, 64, 100, 127, 128, 129, 255, 256, 257, 384, 500, 511, 512, 513, 768, 1000),
    *(1023, 1024, 1025, 1536, 2000, 2047, 2048, 2049, 3000, 3072, 4095, 4096, 4097, 6144, 8191, 8192),
)
MODEL_WIDTHS = (768, 1024, 1536, 2048, 2560, 3072, 4096, 5120, 6144, 8192, 11008, 12288, 13824, 14336)
BMM_BATCHES = (2, 4, 8, 12, 16, 24, 32, 48, 64, 96, 128, 256)
MAX_FULL_FLOPS = 2.0**41  # ~2.2 TFLOP: about a second per call on the slowest GPUs we target
MAX_FULL_BYTES = 3 * 2**30


def _dim(rng: random.Random, low: int, high: int) -> int:
    """A log-uniform size in [low, high], then aligned to 128 (30%), 64 (15%) or 8 (20%), or left as
    drawn (35%, mostly unaligned)."""
    value = math.exp(rng.uniform(math.log(low), math.log(high)))
    draw = rng.random()
    multiple = 128 if draw < 0.3 else 64 if draw < 0.45 else 8 if draw < 0.65 else 1
    return max(low, min(high, max(multiple, round(value / multiple) * multiple)))


def full_sweep() -> list[GpuGemmConfig]:
    """The calibration sweep, then a few hundred more shapes drawn with :data:`FULL_SEED`: squares
    (aligned and unaligned), random GEMMs (aligned to 8/64/128 or not, some transposed layouts),
    skinny ones, transformer linears, batched products (attention-like among them); every shape in
    float32, about a third also in float16 and a sixth in bfloat16. Fixed: the same list every time."""
    rng = random.Random(FULL_SEED)
    shapes: list[tuple[str, int, int, int, int, str]] = [("gemm", 1, s, s, s, "nn") for s in SQUARE_SIZES]
    for _ in range(130):
        layout = rng.choice(LAYOUTS) if rng.random() < 0.2 else "nn"
        shapes.append(("gemm", 1, _dim(rng, 1, 8192), _dim(rng, 1, 8192), _dim(rng, 1, 8192), layout))
    for _ in range(30):  # skinny: one size tiny, two large
        small = rng.choice((1, 2, 4, 8, 16, 32, 64))
        big = [_dim(rng, 1024, 16384), _dim(rng, 1024, 16384)]
        where = rng.randrange(3)
        dims = [*big[:where], small, *big[where:]]
        m, n, k = dims[0], dims[1], dims[2]
        shapes.append(("gemm", 1, m, n, k, "nn"))
    for _ in range(60):  # linear: tokens x (out, in) features
        tokens = _dim(rng, 1, 8192)
        n = rng.choice(MODEL_WIDTHS) if rng.random() < 0.6 else _dim(rng, 256, 16384)
        k = rng.choice(MODEL_WIDTHS) if rng.random() < 0.6 else _dim(rng, 256, 16384)
        shapes.append(("linear", 1, tokens, n, k, "nt"))
    for _ in range(90):
        batch = rng.choice(BMM_BATCHES)
        if rng.random() < 0.25:  # attention: Q @ K.T (nt) or P @ V (nn), head dim 64 or 128
            seq, head = rng.choice((128, 256, 512, 1024, 2048)), rng.choice((64, 128))
            shape = (
                ("bmm", batch, seq, seq, head, "nt")
                if rng.random() < 0.5
                else ("bmm", batch, seq, head, seq, "nn")
            )
        else:
            shape = ("bmm", batch, _dim(rng, 1, 1024), _dim(rng, 1, 1024), _dim(rng, 1, 1024), "nn")
        shapes.append(shape)
    configs = list(calibration_configs())
    for op, batch, m, n, k, layout in dict.fromkeys(shapes):
        dtypes = ["float32"]
        draw = rng.random()
        if draw < 0.35:
            dtypes.append("float16")
        if 0.2 <= draw < 0.37 or draw > 0.9:
            dtypes.append("bfloat16")
        for dtype in dtypes:
            cfg = GpuGemmConfig(op, batch, m, n, k, dtype, layout)
            if cfg.flops <= MAX_FULL_FLOPS and cfg.nbytes <= MAX_FULL_BYTES:
                configs.append(cfg)
    return list(dict.fromkeys(configs))


class SweepName(StrEnum):
    calibration = "calibration"
    full = "full"


def build_configs(sweep: SweepName, dtypes: Sequence[str] | None = None) -> list[GpuGemmConfig]:
    configs = calibration_configs() if sweep == SweepName.calibration else full_sweep()
    return [c for c in configs if not dtypes or c.dtype in dtypes]
