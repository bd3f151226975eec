"""``perfcost collect gpu-gemm``: time cuBLAS GEMMs through PyTorch on one NVIDIA GPU, with NVML energy.

Output: the layout ``perfcost train gemm --from DIR`` reads, as ``perfcost collect cpu-gemm`` writes it
(``measurements.csv`` with one row per configuration, ``device.json`` as a
:class:`service.devices.DeviceSpec`, ``environment.json``), crash-safe and resumable the same way: the
lock, the durable appends and the atomic rewrites are ``training.collect``'s. The CSV's columns
(:data:`COLUMNS`) are the CPU collector's without ``kernel`` and ``threads`` and with ``power_w`` and
``energy_j``; a killed run loses at most the configuration in flight, and a rerun skips every key already
present (``key`` names op, batch, sizes, dtype and layout). Needs the ``gpu`` extra
(``pip install -e '.[gpu]'``: torch with CUDA, nvidia-ml-py); without a CUDA device the command says so in
one line and exits 1.

Sweeps: ``calibration`` is the shipped few-shot set (``training/data/gemm_calibration_sweep.csv``, at
most 32 shapes, see :func:`calibration_sweep`), ``full`` adds a few hundred shapes drawn with a fixed
seed (:func:`full_sweep`); both are fixed lists, so a calibration run can be extended by a full run in the
same directory.

What is timed. Per configuration the operands are allocated once on the device, filled with standard
normal numbers from a generator seeded by the key (never zeros: they run faster than real data), and the
output is preallocated: ``gemm`` and ``linear`` call ``torch.matmul(a, b, out=c)`` (``linear`` is
``x @ W.T`` with ``W`` stored ``(n, k)``: layout ``nt``), ``bmm`` calls ``torch.bmm(a, b, out=c)``. A
layout letter ``t`` means that operand is stored transposed and passed as a transposed view. TF32 is off
(``torch.backends.cuda.matmul.allow_tf32 = False``, precision "highest"), so float32 is true FP32, as in
the public cuBLAS data (neusight-gemm). Warm-up: calls until at least 3 and 50 ms have run (module load,
cuBLAS handle and workspace, clocks leaving idle). Then batches of back-to-back calls on the current
stream, each batch between two CUDA events (``torch.cuda.Event(enable_timing=True)``), a batch sized to
about ``min_time / 20`` (at least one call), until at least ``--min-time`` seconds and 5 batches (at most
2000 batches). ``runtime_ms`` is the median over batches of the batch's time per call and
``runtime_spread`` is ``(p90 - p10) / median`` of the same; ``repeats`` counts the timed calls. For tiny
shapes the time per call is the eager dispatch rate (Python + ATen + launch, several microseconds), which
is what such a call costs in a PyTorch program. The operands are reused by every call, so a shape
whose operands fit in the L2 cache is timed with them resident there (no rotation of input sets).

Energy. Where NVML supports it (Volta and newer), ``nvmlDeviceGetTotalEnergyConsumption`` (mJ since the
driver loaded) is read just before the first timed batch is queued and just after the last one finished:
``energy_j`` is that difference over the timed calls (whole-board energy, static power included) and
``power_w`` the difference over the wall-clock time between the two reads. The counter advances in steps
(tens of milliseconds on the boards we know of), so at the default 0.2 s a row's energy is good to a few
percent at best; use ``--min-time 1`` or more for a dataset meant for energy. Where the counter is not
supported, or did not advance, both are blank.

Device. ``device.json`` is built from the driver: name, SM count, memory and L2 size from
``torch.cuda.get_device_properties``; maximum SM and memory clocks, memory bus width and default power
limit (``tdp_w``) from NVML; ``memory_bandwidth_gbps = 2 * mem_clock_MHz * bus_width / 8 / 1000`` (double
data rate); ``cores_per_sm`` and the dense FP16 tensor rate per SM and clock from tables by compute
capability (:data:`CORES_PER_SM`, :data:`FP16_FLOPS_PER_SM_CLOCK`), ``fp32_gflops = 2 * SMs * cores *
clock``. Peaks are at the maximum boost clock, so they can sit a few percent above a datasheet's.

A committed dataset's card (``datasets/<name>/README.md``, as ``datasets/cpu-gemm-local`` has) must say:
the GPU (name, board/form factor, memory, UUID prefix or host), driver, CUDA and torch versions (all in
``environment.json``); the sweep and options (``--sweep``, ``--dtype``, ``--min-time``); when and how long;
whether the GPU was shared or another process ran on it (``nvidia-smi`` at start), its power limit and
clocks as found (never changed by the collector), temperature/throttling seen; whether energy was
supported; the spread (median and p90 of ``runtime_spread``) and, if measured, the between-run noise; and
the licence.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import logging
import math
import platform
import random
import re
import statistics
import sys
import time
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from importlib import resources
from pathlib import Path
from typing import Annotated, Any, Protocol

import numpy as np
import pandas as pd
import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from service.devices import DeviceSpec
from service.features.gemm import DTYPE_BYTES, DTYPES, LAYOUTS, OPS
from training.collect import (
    DEVICE_FILE,
    ENVIRONMENT_FILE,
    MEASUREMENTS,
    CollectError,
    RowWriter,
    _atomic_write,
    cli_errors,
    exclusive_lock,
    recover_measurements,
)

log = logging.getLogger(__name__)

COLUMNS = (
    "key",
    "source",
    "device",
    "op",
    "batch",
    "m",
    "n",
    "k",
    "dtype",
    "layout",
    "runtime_ms",
    "runtime_spread",
    "power_w",
    "energy_j",
    "repeats",
    "measured_at",
)
INSTALL_HINT = "pip install -e '.[gpu]'"
# dtypes torch.matmul/bmm run on a CUDA device (int8 needs other entry points).
GPU_DTYPES = ("float32", "float16", "bfloat16", "float64")
SWEEP_FILE = "gemm_calibration_sweep.csv"
SWEEP_COLUMNS = ("op", "batch", "m", "n", "k", "dtype", "layout")
MAX_CALIBRATION_SHAPES = 32
FULL_SEED = 20_261_201
# A configuration whose operands would take more than this share of the GPU's memory is left out.
MAX_MEMORY_SHARE = 0.4
WARMUP_CALLS, WARMUP_SECONDS = 3, 0.05
MIN_BATCHES, MAX_BATCHES, BATCHES_PER_MIN_TIME = 5, 2000, 20
MAX_CALLS_PER_BATCH = 10_000

# FP32 CUDA cores per SM by compute capability (NVIDIA CUDA C++ Programming Guide, "Arithmetic
# Instructions" throughput table, and the architecture whitepapers). 7.2/8.7 are Jetson Xavier/Orin;
# 10.0 (B200) and 12.0 (GeForce RTX 50) are Blackwell.
CORES_PER_SM: dict[tuple[int, int], int] = {
    (5, 0): 128,
    (5, 2): 128,
    (5, 3): 128,
    (6, 0): 64,
    (6, 1): 128,
    (6, 2): 128,
    (7, 0): 64,
    (7, 2): 64,
    (7, 5): 64,
    (8, 0): 64,
    (8, 6): 128,
    (8, 7): 128,
    (8, 9): 128,
    (9, 0): 128,
    (10, 0): 128,
    (12, 0): 128,
}
# Dense (no sparsity) FP16 matrix FLOPs per SM per clock, from the NVIDIA architecture whitepapers
# (Pascal GP100, Volta V100, Turing, Ampere GA100 and GA102, Ada, Hopper H100):
#   6.0 (P100): no tensor cores; half2 on the 64 FP32 lanes: 64 * 2 (half2) * 2 (FMA) = 256.
#   7.0 (V100), 7.5 (Turing): 8 tensor cores * 64 FMA = 512 FMA = 1024 FLOPs.
#   8.0 (A100): 4 tensor cores * 256 FMA = 1024 FMA = 2048 FLOPs.
#   8.6 (GA10x), 8.9 (Ada): 4 tensor cores * 128 FMA = 512 FMA = 1024 FLOPs.
#   9.0 (H100/H200): 4 tensor cores * 512 FMA = 2048 FMA = 4096 FLOPs.
# Check: A100 108 SM * 1.41 GHz * 2048 = 312 TFLOP/s; V100 SXM2 80 * 1.53 * 1024 = 125; H100 SXM
# 132 * 1.83 * 4096 = 989; L4 58 * 2.04 * 1024 = 121 (each the datasheet's dense FP16 figure).
# Assumption: these are the FP16-accumulate rates. torch accumulates FP16/BF16 GEMMs in FP32, which the
# data-centre and workstation parts run at the same rate but GeForce parts of 7.5, 8.6 and 8.9 at half
# (Turing, Ampere GA102 and Ada whitepapers), so a "GeForce" name halves the figure. Others (6.1 runs
# FP16 at 1/64 rate, Jetson, Blackwell) are left unknown: fp16_gflops None, the model then uses FP32.
FP16_FLOPS_PER_SM_CLOCK: dict[tuple[int, int], int] = {
    (6, 0): 256,
    (7, 0): 1024,
    (7, 5): 1024,
    (8, 0): 2048,
    (8, 6): 1024,
    (8, 9): 1024,
    (9, 0): 4096,
}
GEFORCE_HALF_RATE_FP32_ACCUMULATE = {(7, 5), (8, 6), (8, 9)}


class NoCudaDevice(CollectError):
    """torch (with CUDA) or a GPU is missing."""


class ConfigSkipped(Exception):
    """One configuration cannot be measured here (e.g. out of GPU memory); the run goes on without a
    row for it, so a later run tries it again."""


# --- configurations and sweeps ---------------------------------------------------------------------
@dataclass(frozen=True, order=True)
class GpuGemmConfig:
    """One measured point. ``gemm``/``linear``: 2-D operands (batch 1); ``bmm``: ``batch`` matrices.
    ``layout``: per operand (A then B) ``n`` stored as used, ``t`` stored transposed."""

    op: str
    batch: int
    m: int
    n: int
    k: int
    dtype: str
    layout: str

    @property
    def key(self) -> str:
        return f"{self.op}|b={self.batch}|m={self.m}|n={self.n}|k={self.k}|{self.dtype}|{self.layout}"

    @property
    def flops(self) -> float:
        return 2.0 * self.batch * self.m * self.n * self.k

    @property
    def nbytes(self) -> int:
        return self.batch * (self.m * self.k + self.k * self.n + self.m * self.n) * DTYPE_BYTES[self.dtype]


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


# --- measuring -------------------------------------------------------------------------------------
@dataclass(frozen=True)
class GpuTiming:
    runtime_ms: float
    runtime_spread: float
    repeats: int
    power_w: float | None = None
    energy_j: float | None = None


class Backend(Protocol):
    """What the collector needs from a GPU: its description, its environment, and a timing (with energy
    where ``energy_supported``) of one configuration, or :class:`ConfigSkipped` when that one cannot
    be measured. :class:`TorchBackend` is the real one; tests pass a deterministic fake."""

    energy_supported: bool

    def device_spec(self) -> DeviceSpec: ...

    def environment(self) -> dict[str, Any]: ...

    def time(self, cfg: GpuGemmConfig, min_time: float) -> GpuTiming: ...

    def close(self) -> None: ...


def summarize(per_call_ms: Sequence[float]) -> tuple[float, float]:
    """Median of the per-call times of the batches, and (p90 - p10) / median."""
    p10, median, p90 = np.percentile(np.asarray(per_call_ms, dtype=float), [10, 50, 90])
    return float(median), float((p90 - p10) / median) if median > 0 else 0.0


def _import_torch() -> Any:
    import torch

    return torch


def _import_nvml() -> Any:
    import pynvml

    return pynvml


def _text(value: Any) -> str | None:
    if value is None:
        return None
    return value.decode() if isinstance(value, bytes) else str(value)


def peak_rates(
    major: int, minor: int, name: str, sm_count: int, clock_mhz: float
) -> tuple[int, float, float | None]:
    """(cores per SM, FP32 GFLOP/s, dense FP16 tensor GFLOP/s or None) at ``clock_mhz``."""
    cc = (major, minor)
    if cc not in CORES_PER_SM:
        known = ", ".join(f"{a}.{b}" for a, b in sorted(CORES_PER_SM))
        raise CollectError(
            f"compute capability {major}.{minor} ({name}) is not in the cores-per-SM table of "
            f"training/collect_gpu.py (known: {known}); add it from NVIDIA's documentation"
        )
    cores = CORES_PER_SM[cc]
    fp32 = 2.0 * sm_count * cores * clock_mhz / 1000
    per_clock = FP16_FLOPS_PER_SM_CLOCK.get(cc)
    if per_clock is not None and cc in GEFORCE_HALF_RATE_FP32_ACCUMULATE and "geforce" in name.lower():
        per_clock //= 2
    fp16 = sm_count * per_clock * clock_mhz / 1000 if per_clock else None
    return cores, round(fp32, 1), round(fp16, 1) if fp16 else None


def make_operands(torch: Any, cfg: GpuGemmConfig, device: Any) -> Callable[[], Any]:
    """Allocate ``cfg``'s operands and output on ``device`` (random normal, seeded by the key) and
    return the call to time (see the module docstring)."""
    dtype = getattr(torch, cfg.dtype)
    gen = torch.Generator(device=device)
    gen.manual_seed(zlib.crc32(cfg.key.encode()))
    lead = (cfg.batch,) if cfg.op == "bmm" else ()

    def operand(rows: int, cols: int, transposed: bool) -> Any:
        shape = (*lead, cols, rows) if transposed else (*lead, rows, cols)
        x = torch.randn(shape, generator=gen, device=device, dtype=torch.float32).to(dtype)
        return x.transpose(-1, -2) if transposed else x

    a = operand(cfg.m, cfg.k, cfg.layout[0] == "t")
    b = operand(cfg.k, cfg.n, cfg.layout[1] == "t")  # linear: W stored (n, k), used as W.T
    c = torch.empty((*lead, cfg.m, cfg.n), device=device, dtype=dtype)
    if cfg.op == "bmm":
        return lambda: torch.bmm(a, b, out=c)
    return lambda: torch.matmul(a, b, out=c)


class TorchBackend:
    """cuBLAS through torch on ``cuda:<index>``, NVML for clocks, power limit and energy."""

    def __init__(self, torch: Any, nvml: Any, device_index: int) -> None:
        self.torch, self.nvml, self.index = torch, nvml, device_index
        self.device = torch.device(f"cuda:{device_index}")
        torch.cuda.set_device(self.device)
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.set_float32_matmul_precision("highest")
        self.props = torch.cuda.get_device_properties(self.device)
        nvml.nvmlInit()
        self.handle = self._nvml_handle()
        try:
            nvml.nvmlDeviceGetTotalEnergyConsumption(self.handle)
            self.energy_supported = True
        except nvml.NVMLError as exc:
            log.warning("NVML energy counter not available (%s): power_w and energy_j stay blank", exc)
            self.energy_supported = False
        self._spec: DeviceSpec | None = None

    def _nvml_handle(self) -> Any:
        nvml, uuid = self.nvml, getattr(self.props, "uuid", None)
        if uuid is not None:
            text = str(uuid)
            for candidate in (text if text.startswith(("GPU-", "MIG-")) else f"GPU-{text}", text):
                try:
                    return nvml.nvmlDeviceGetHandleByUUID(candidate)
                except nvml.NVMLError:
                    continue
        log.warning(
            "matching cuda:%d to NVML by index (no UUID match); check CUDA_VISIBLE_DEVICES", self.index
        )
        return nvml.nvmlDeviceGetHandleByIndex(self.index)

    def _nvml(self, fn: str, *args: Any) -> Any:
        try:
            return getattr(self.nvml, fn)(self.handle, *args)
        except self.nvml.NVMLError as exc:
            log.warning("NVML %s not available: %s", fn, exc)
            return None

    def _copy_bandwidth_gbps(self, mib: int = 512) -> float:
        """Device-to-device copy of ``mib`` MiB, bytes read + written, best of 5 (fallback only)."""
        torch = self.torch
        src = torch.ones(mib * 2**18, device=self.device)
        dst = torch.empty_like(src)
        dst.copy_(src)
        best = math.inf
        for _ in range(5):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            dst.copy_(src)
            end.record()
            end.synchronize()
            best = min(best, start.elapsed_time(end) / 1000)
        return 2 * src.numel() * 4 / best / 1e9

    def device_spec(self) -> DeviceSpec:
        if self._spec is not None:
            return self._spec
        nvml, props = self.nvml, self.props
        name = str(props.name)
        clock = self._nvml("nvmlDeviceGetMaxClockInfo", nvml.NVML_CLOCK_SM)
        if not clock:
            raise CollectError(f"NVML reports no maximum SM clock for {name}; cannot derive the peak rates")
        mem_clock = self._nvml("nvmlDeviceGetMaxClockInfo", nvml.NVML_CLOCK_MEM)
        bus_width = self._nvml("nvmlDeviceGetMemoryBusWidth")
        how = "NVML max memory clock x bus width x 2 (DDR)"
        # cudaDeviceProp's memory clock is in kHz (torch exposes it from 2.6 on): the same formula.
        cuda_clock_khz = getattr(props, "memory_clock_rate", None)
        cuda_bus_width = getattr(props, "memory_bus_width", None)
        if mem_clock and bus_width:
            bandwidth = 2 * mem_clock * bus_width / 8 / 1000
        elif cuda_clock_khz and cuda_bus_width:
            bandwidth = 2 * cuda_clock_khz * cuda_bus_width / 8 / 1e6
            how = "CUDA device properties: memory clock x bus width x 2 (DDR)"
        else:
            bandwidth, how = (
                self._copy_bandwidth_gbps(),
                "measured device-to-device copy (NVML lacks bus width)",
            )
        l2_bytes = getattr(props, "L2_cache_size", None)
        if not l2_bytes:
            raise CollectError(f"torch {self.torch.__version__} does not report the L2 size; {INSTALL_HINT}")
        cores, fp32, fp16 = peak_rates(props.major, props.minor, name, props.multi_processor_count, clock)
        limit = self._nvml("nvmlDeviceGetPowerManagementDefaultLimit")
        self._spec = DeviceSpec(
            name=name,
            kind="gpu",
            vendor="NVIDIA",
            memory_gb=round(props.total_memory / 2**30, 2),
            memory_bandwidth_gbps=round(bandwidth, 1),
            sm_count=props.multi_processor_count,
            cores_per_sm=cores,
            clock_mhz=float(clock),
            fp32_gflops=fp32,
            fp16_gflops=fp16,
            l2_cache_mb=round(l2_bytes / 2**20, 3),
            tdp_w=round(limit / 1000, 1) if limit else None,
            source=f"described by perfcost collect gpu-gemm from torch.cuda.get_device_properties and NVML "
            f"(compute capability {props.major}.{props.minor}); bandwidth: {how}; FP32/FP16 peaks at the max "
            "SM clock from the cores-per-SM and tensor-rate tables (NVIDIA architecture whitepapers)",
        )
        return self._spec

    def environment(self) -> dict[str, Any]:
        torch, nvml = self.torch, self.nvml
        cuda_driver = None
        try:
            version = nvml.nvmlSystemGetCudaDriverVersion_v2()
            cuda_driver = f"{version // 1000}.{version % 1000 // 10}"
        except (nvml.NVMLError, AttributeError):
            pass
        clocks = {
            f"{what}_clock_mhz_at_start": self._nvml(
                "nvmlDeviceGetClockInfo", getattr(nvml, f"NVML_CLOCK_{what.upper()}")
            )
            for what in ("sm", "mem")
        }
        power_limit = self._nvml("nvmlDeviceGetEnforcedPowerLimit")
        temperature = self._nvml("nvmlDeviceGetTemperature", nvml.NVML_TEMPERATURE_GPU)
        return {
            "gpu": str(self.props.name),
            "gpu_uuid": _text(self._nvml("nvmlDeviceGetUUID")),
            "compute_capability": f"{self.props.major}.{self.props.minor}",
            "device_index": self.index,
            "driver": self._driver_version(),
            "cuda_driver": cuda_driver,
            "cuda_runtime": torch.version.cuda,
            "torch": torch.__version__,
            "cublas": "cuBLAS of the torch build (torch.matmul / torch.bmm)",
            "allow_tf32": bool(torch.backends.cuda.matmul.allow_tf32),
            "allow_fp16_reduced_precision_reduction": bool(
                torch.backends.cuda.matmul.allow_fp16_reduced_precision_reduction
            ),
            "float32_matmul_precision": torch.get_float32_matmul_precision(),
            "energy_supported": self.energy_supported,
            "enforced_power_limit_w": power_limit / 1000 if power_limit else None,
            "temperature_c_at_start": temperature,
            **clocks,
        }

    def _driver_version(self) -> str | None:
        try:
            return _text(self.nvml.nvmlSystemGetDriverVersion())
        except self.nvml.NVMLError as exc:
            log.warning("NVML driver version not available: %s", exc)
            return None

    def _energy_mj(self) -> int | None:
        if not self.energy_supported:
            return None
        try:
            return int(self.nvml.nvmlDeviceGetTotalEnergyConsumption(self.handle))
        except self.nvml.NVMLError:
            return None

    def time(self, cfg: GpuGemmConfig, min_time: float) -> GpuTiming:
        try:
            return self._time(cfg, min_time)
        except self.torch.cuda.OutOfMemoryError as exc:
            raise ConfigSkipped(f"out of GPU memory: {str(exc).splitlines()[0]}") from None
        finally:
            self.torch.cuda.empty_cache()  # the next configuration starts from a clean pool

    def _time(self, cfg: GpuGemmConfig, min_time: float) -> GpuTiming:
        torch = self.torch
        call = make_operands(torch, cfg, self.device)
        event = lambda: torch.cuda.Event(enable_timing=True)  # noqa: E731
        # Warm-up, then a first estimate of one call.
        calls, started = 0, time.perf_counter()
        while calls < WARMUP_CALLS or time.perf_counter() - started < WARMUP_SECONDS:
            call()
            calls += 1
            torch.cuda.synchronize(self.device)
        start, end = event(), event()
        start.record()
        for _ in range(WARMUP_CALLS):
            call()
        end.record()
        end.synchronize()
        estimate_ms = max(start.elapsed_time(end) / WARMUP_CALLS, 1e-4)
        per_batch = max(
            1, min(MAX_CALLS_PER_BATCH, round(min_time * 1000 / BATCHES_PER_MIN_TIME / estimate_ms))
        )

        per_call: list[float] = []
        total_ms = 0.0
        energy_before, wall_before = self._energy_mj(), time.perf_counter()
        while len(per_call) < MAX_BATCHES and (len(per_call) < MIN_BATCHES or total_ms < min_time * 1000):
            # Queue the batches expected to fill the remaining time, then wait for all of them.
            left_ms = max(min_time * 1000 - total_ms, 0.0)
            planned = max(MIN_BATCHES - len(per_call), math.ceil(left_ms / (per_batch * estimate_ms)), 1)
            planned = min(planned, MAX_BATCHES - len(per_call))
            events = [event() for _ in range(planned + 1)]
            events[0].record()
            for i in range(planned):
                for _ in range(per_batch):
                    call()
                events[i + 1].record()
            events[-1].synchronize()
            for before, after in zip(events, events[1:], strict=False):
                elapsed = before.elapsed_time(after)
                total_ms += elapsed
                per_call.append(elapsed / per_batch)
            estimate_ms = max(statistics.median(per_call), 1e-4)
        energy_after, wall_after = self._energy_mj(), time.perf_counter()
        runtime_ms, spread = summarize(per_call)
        repeats = len(per_call) * per_batch
        power = energy = None
        if energy_before is not None and energy_after is not None and energy_after > energy_before:
            joules = (energy_after - energy_before) / 1000
            energy, power = joules / repeats, joules / (wall_after - wall_before)
        return GpuTiming(runtime_ms, spread, repeats, power, energy)

    def close(self) -> None:
        with contextlib.suppress(self.nvml.NVMLError):
            self.nvml.nvmlShutdown()


def make_backend(device_index: int) -> Backend:
    """The torch/NVML backend on ``cuda:<device_index>``; :class:`NoCudaDevice` (one line) if torch,
    CUDA, a GPU or NVML is missing."""
    try:
        torch = _import_torch()
    except ImportError as exc:
        raise NoCudaDevice(
            f"no CUDA device: torch is not installed ({exc}); install it with {INSTALL_HINT}"
        ) from None
    if not torch.cuda.is_available():
        raise NoCudaDevice(
            f"no CUDA device: torch {torch.__version__} (CUDA build {torch.version.cuda}) sees no GPU "
            "(torch.cuda.is_available() is false); on a machine with an NVIDIA GPU and driver, install a "
            f"CUDA build of torch: {INSTALL_HINT}"
        )
    count = torch.cuda.device_count()
    if not 0 <= device_index < count:
        raise NoCudaDevice(f"no CUDA device: --device-index {device_index}, but torch sees {count} GPU(s)")
    try:
        nvml = _import_nvml()
    except ImportError:
        raise CollectError(
            f"nvidia-ml-py (pynvml) is not installed; install it with {INSTALL_HINT}"
        ) from None
    try:
        return TorchBackend(torch, nvml, device_index)
    except nvml.NVMLError as exc:
        raise CollectError(f"NVML failed on cuda:{device_index}: {exc}") from None


# --- the output directory --------------------------------------------------------------------------
def device_slug(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-") or "gpu"


def default_out(device_name: str) -> Path:
    return Path("datasets") / f"gpu-gemm-{device_slug(device_name)}"


def _check_environment(out: Path, env: dict[str, Any]) -> None:
    try:
        previous = json.loads((out / ENVIRONMENT_FILE).read_text())
    except (OSError, ValueError):
        return
    for name in ("gpu_uuid", "driver", "torch", "cuda_runtime", "allow_tf32"):
        if name in previous and previous.get(name) != env.get(name):
            log.warning(
                "%s: earlier rows were collected with %s=%s, this run has %s",
                out / ENVIRONMENT_FILE,
                name,
                previous.get(name),
                env.get(name),
            )


def _number(value: float | None, fmt: str) -> str:
    return "" if value is None or not math.isfinite(value) else format(value, fmt)


def run_collection(
    out: Path,
    configs: Sequence[GpuGemmConfig],
    backend: Backend,
    min_time: float,
    settings: dict[str, Any] | None = None,
) -> int:
    """Measure every configuration of ``configs`` not yet in ``out`` with ``backend`` (under the lock,
    each row durable before the next starts); returns how many were measured this run."""
    out.mkdir(parents=True, exist_ok=True)
    with exclusive_lock(out):
        path = out / MEASUREMENTS
        existing = recover_measurements(path, COLUMNS)
        device = DeviceSpec.model_validate(backend.device_spec().model_dump())
        recorded = {row["device"] for row in existing.values()}
        if recorded and recorded != {device.name}:
            raise CollectError(
                f"{path} holds measurements of {sorted(recorded)}, but this GPU is {device.name!r}; "
                "pass a different --out"
            )
        budget = MAX_MEMORY_SHARE * device.memory_gb * 2**30
        fits = [c for c in configs if c.nbytes <= budget]
        if len(fits) < len(configs):
            log.warning(
                "leaving out %d configurations whose operands exceed %.0f%% of the GPU's %.1f GiB",
                len(configs) - len(fits),
                100 * MAX_MEMORY_SHARE,
                device.memory_gb,
            )
        env = {
            "collector": "perfcost collect gpu-gemm",
            "date": datetime.now(UTC).isoformat(timespec="seconds"),
            **backend.environment(),
            "python": sys.version,
            "platform": platform.platform(),
            "timing": "CUDA events around batches of back-to-back torch.matmul/torch.bmm calls after "
            "warm-up; runtime_ms = median per-call time over batches, runtime_spread = (p90 - p10) / "
            "median; energy_j = NVML total-energy difference over the timed calls, power_w = that "
            "difference over the wall-clock time (blank where unsupported)",
            "settings": {
                **(settings or {}),
                "min_time_s": min_time,
                "configurations_this_run": len(configs),
                "left_out_for_memory": len(configs) - len(fits),
            },
        }
        _check_environment(out, env)
        _atomic_write(out / DEVICE_FILE, json.dumps(device.model_dump(), indent=2) + "\n")
        _atomic_write(out / ENVIRONMENT_FILE, json.dumps(env, indent=2) + "\n")
        source = out.resolve().name
        todo = [c for c in fits if c.key not in existing]
        done = len(fits) - len(todo)
        log.info("device %r; %d of %d configurations already measured", device.name, done, len(fits))
        writer = RowWriter(path, COLUMNS)
        measured = 0
        try:
            with Progress(
                TextColumn("{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
                TimeRemainingColumn(),
                TextColumn("{task.fields[key]}"),
                console=Console(stderr=True),
            ) as progress:
                task = progress.add_task(
                    f"gpu-gemm ({done} resumed)", total=len(fits), completed=done, key=""
                )
                for cfg in todo:
                    progress.update(task, key=cfg.key)
                    try:
                        timing = backend.time(cfg, min_time)
                    except ConfigSkipped as exc:
                        log.warning("%s: skipped (%s); a rerun tries it again", cfg.key, exc)
                        progress.advance(task)
                        continue
                    writer.append(
                        {
                            "key": cfg.key,
                            "source": source,
                            "device": device.name,
                            "op": cfg.op,
                            "batch": cfg.batch,
                            "m": cfg.m,
                            "n": cfg.n,
                            "k": cfg.k,
                            "dtype": cfg.dtype,
                            "layout": cfg.layout,
                            "runtime_ms": f"{timing.runtime_ms:.6g}",
                            "runtime_spread": f"{timing.runtime_spread:.4g}",
                            "power_w": _number(timing.power_w, ".5g"),
                            "energy_j": _number(timing.energy_j, ".6g"),
                            "repeats": timing.repeats,
                            "measured_at": datetime.now(UTC).isoformat(timespec="seconds"),
                        }
                    )
                    measured += 1
                    progress.advance(task)
        finally:
            writer.close()
        return measured


# --- the command (registered as ``perfcost collect gpu-gemm`` in training/cli.py) ------------------
def _parse_dtypes(dtype: str | None) -> list[str] | None:
    if dtype is None:
        return None
    values = [part.strip() for part in dtype.split(",") if part.strip()]
    bad = [v for v in values if v not in GPU_DTYPES]
    if not values or bad:
        raise typer.BadParameter(
            f"{dtype!r}: give a comma-separated list of {', '.join(GPU_DTYPES)}", param_hint="'--dtype'"
        )
    return values


def gpu_gemm(
    out: Annotated[
        Path | None,
        typer.Option(
            "--out", help="Output directory (created; rerun to resume). Default: datasets/gpu-gemm-<device>."
        ),
    ] = None,
    sweep: Annotated[
        SweepName,
        typer.Option("--sweep", help="calibration: the shipped <= 32 shapes; full: a few hundred more."),
    ] = SweepName.calibration,
    dtype: Annotated[
        str | None,
        typer.Option(
            "--dtype", help="Only these dtypes, comma-separated (float32,float16,bfloat16,float64)."
        ),
    ] = None,
    min_time: Annotated[
        float, typer.Option("--min-time", help="Seconds of timed calls per configuration.")
    ] = 0.2,
    device_index: Annotated[int, typer.Option("--device-index", help="CUDA device index.")] = 0,
    limit: Annotated[int | None, typer.Option("--limit", help="Only the first N configurations.")] = None,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Print the sweep's size; needs no GPU, measures nothing.")
    ] = False,
) -> None:
    """Time torch.matmul/torch.bmm (cuBLAS) on a CUDA GPU, with NVML energy (resumable; gpu extra)."""
    if not (math.isfinite(min_time) and 0 < min_time <= 60):
        raise typer.BadParameter(f"must be in (0, 60] seconds, got {min_time}", param_hint="'--min-time'")
    if device_index < 0:
        raise typer.BadParameter(f"must be at least 0, got {device_index}", param_hint="'--device-index'")
    if limit is not None and limit < 1:
        raise typer.BadParameter(f"must be at least 1, got {limit}", param_hint="'--limit'")
    if out is not None and out.exists() and not out.is_dir():
        raise typer.BadParameter(f"{out} exists and is not a directory", param_hint="'--out'")
    dtypes = _parse_dtypes(dtype)
    try:
        configs = build_configs(sweep, dtypes)
    except SweepError as exc:
        typer.echo(f"Error: {exc}", err=True)
        raise typer.Exit(1) from None
    configs = configs[:limit] if limit else configs
    if not configs:
        raise typer.BadParameter(
            f"no configuration of the {sweep.value} sweep has dtype {dtype}", param_hint="'--dtype'"
        )
    if dry_run:
        ops = {op: sum(c.op == op for c in configs) for op in OPS}
        typer.echo(
            f"{len(configs)} configurations of the {sweep.value} sweep ("
            + ", ".join(f"{n} {op}" for op, n in ops.items())
            + "; dtypes "
            + ", ".join(sorted({c.dtype for c in configs}))
            + ")"
        )
        return
    try:
        backend = make_backend(device_index)
        try:
            target = out or default_out(backend.device_spec().name)
        except CollectError:
            backend.close()
            raise
    except CollectError as exc:
        typer.echo(f"Error: {exc}", err=True)
        raise typer.Exit(1) from None
    try:
        with cli_errors(target, "configuration"):
            started = time.monotonic()
            settings = {"sweep": sweep.value, "dtypes": dtypes, "limit": limit, "full_seed": FULL_SEED}
            measured = run_collection(target, configs, backend, min_time, settings)
            typer.echo(
                f"measured {measured} configurations in {time.monotonic() - started:.0f} s "
                f"({len(configs)} in this sweep) -> {target / MEASUREMENTS}"
            )
    finally:
        backend.close()
