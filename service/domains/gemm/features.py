"""GEMM features: the one place where a GEMM configuration on a device becomes model inputs.

Training (``training/``) and serving (``service/``) both call :func:`build_features`; a fitted model
records :data:`FEATURE_VERSION` and :data:`FEATURE_COLUMNS`, and loading refuses a model whose record
differs from this module. Change the math here → bump the version.

Besides sizes and the device's specs, the features place each configuration against the device's
roofline (compute- and memory-bound times, plus a launch overhead), its waves of tiles over the SMs or
cores, and its cache footprint: quantities that carry over from the devices a model was trained on to
one it was not.
"""

from __future__ import annotations

import re
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Literal, get_args

import numpy as np
import pandas as pd

from service.core.devices import SPEC_FIELDS, DeviceSpec
from service.domains.gemm.dtypes import DTYPE_SPECS, DTYPES, dtype_peak
from service.domains.gemm.physics import GPU_TILES, physics_tile, split_k_ms

FEATURE_VERSION = "gemm-5"

Op = Literal["gemm", "bmm", "linear"]
Layout = Literal["nn", "nt", "tn", "tt"]
OPS: tuple[str, ...] = get_args(Op)
LAYOUTS: tuple[str, ...] = get_args(Layout)

# Optional kernel/tile configuration: CUTLASS-style tiles and stages, the GEMM epilogue scalars, CPU
# thread count, and the 14 CLTune parameters of the UCI SGEMM sweep (lower-cased).
CLTUNE_FIELDS = (
    "mwg",
    "nwg",
    "kwg",
    "mdimc",
    "ndimc",
    "mdima",
    "ndimb",
    "kwi",
    "vwm",
    "vwn",
    "strm",
    "strn",
    "sa",
    "sb",
)
KERNEL_NUMERIC_FIELDS = (
    "tile_m",
    "tile_n",
    "tile_k",
    "stages",
    "alpha",
    "beta",
    "threads",
    "quantize_activation",
    *CLTUNE_FIELDS,
)
# ``framework`` (the serving framework or library that ran the GEMM: trtllm, vllm, sglang, ...) is a
# feature like the kernel; its version identifies a measurement campaign but is no input to the model.
CATEGORICAL_FIELDS = ("op", "dtype", "layout", "kernel", "framework", "framework_version")
SIZE_FIELDS = ("batch", "m", "n", "k")
# The normalised configuration table every loader produces (plus source, device and targets).
CONFIG_COLUMNS = (*SIZE_FIELDS, *CATEGORICAL_FIELDS, *KERNEL_NUMERIC_FIELDS)

DERIVED = (
    "log_flops",
    "outer_product",
    "log_m",
    "log_n",
    "log_k",
    "log_batch",
    "log_t_compute_ms",
    "log_roofline_ms",
    "log_baseline_ms",
    "log_physics_ms",
    "physics_tile_m",
    "physics_tile_n",
    "physics_waves",
    "physics_wave_efficiency",
    "intensity_over_ridge",
    "waves",
    "m_align",
    "n_align",
    "effective_units",
    "is_cpu",
    "peak_gflops",
    "tdp_per_gflop",
    "log_tdp_w",
    "log_tdp_energy_j",
    "log_reference_ms",
    "log_mn_ms",
    "output_intensity_over_ridge",
    "output_over_l2",
)
FEATURE_COLUMNS: tuple[str, ...] = (
    *SIZE_FIELDS,
    "op_code",
    "dtype_code",
    "layout_code",
    "kernel_code",
    "framework_code",
    *KERNEL_NUMERIC_FIELDS,
    *(f"dev_{f}" for f in SPEC_FIELDS),
    *DERIVED,
)

# Features that never decrease when k grows with everything else fixed. Models constrain their output to be
# non-decreasing in each (LightGBM/sklearn monotone constraints; k below and from 32 fit apart, joined so
# that the whole stays monotone, see training.split_regressor.SplitRegressor), so predicted runtime and
# energy never drop as the reduction dimension grows from 2 on. No other feature may depend on k: that would
# break the guarantee (hence no k alignment and no memory-bound flag among the features). The one exception is
# ``outer_product`` (k = 1), which libraries run on another code path: numpy computes a 674×1853 outer
# product in 1.39 ms on this project's CPU but a 753×1376×2 product in 0.12 ms, and a model forced to
# predict k = 1 no slower than k = 2 was wrong on both (cpu-gemm-local random MAPE 12.5% with it forced,
# 9.7% with the flag).
INCREASING_IN_K = (
    "k",
    "log_k",
    "log_flops",
    "log_t_compute_ms",
    "log_roofline_ms",
    "log_baseline_ms",
    "log_physics_ms",
    "intensity_over_ridge",
    "log_tdp_energy_j",
    "log_reference_ms",
)

# What more work never makes faster: more k, and quantizing the activation in the op (a pass of its own,
# which the physics time prices; the trees may not learn it back: on an aiconfigurator sample they
# predicted an H100 FP8 16x4096x4096 GEMM 5% faster with the pass than without).
INCREASING_WITH_WORK = (*INCREASING_IN_K, "quantize_activation")

# What the models' trees see: dimensionless figures of a GEMM against its device (sizes in log2, waves of
# tiles over the units and their tail, the output tile's intensity over the ridge point and footprint over
# L2, alignment), its configuration, and one time scale (where a GEMM sits between launch-bound and
# throughput-bound). Each target is learned relative to a physics figure (runtime to the reference time,
# power to the TDP, energy to the TDP over the reference time), so no figure of the device itself enters:
# with seven GPUs any such figure names one, and trees that could read the ridge point (peak over
# bandwidth) priced a held-out A100's BF16 decode GEMMs like the B60's, the nearest ridge in training
# (126% MAPE against 15% without it, aiconfigurator leave-one-GPU-out on a 30k-row sample).
# Of k, the trees see log k alone (monotone): the time scale and the intensity enter through their k-free
# parts (time per unit of k at the peak, the intensity and footprint of the output tile), because a
# monotone constraint on a feature that grows with m and n too (the physics time, the whole GEMM's
# intensity) made every GEMM larger than the training ones as slow, relative to its physics, as the
# slowest large ones trained on: NeuSight, each GPU's largest 20% from its smaller 80%, 54% MAPE with those
# inputs, 36% with these (leave-one-GPU-out unchanged: 27.8 / 28.5% on NeuSight, 28.2 / 28.6% on
# aiconfigurator).
MODEL_INPUTS: tuple[str, ...] = (
    "log_m",
    "log_n",
    "log_k",
    "log_batch",
    "op_code",
    "dtype_code",
    "layout_code",
    "framework_code",
    # The kernel a request names (a CUTLASS configuration a performance engineer is choosing among): on
    # one RTX 4070's sweep of 4 kernels x 4 layouts, 3.3% MAPE without it, 1.6% with it (80/20).
    "kernel_code",
    *KERNEL_NUMERIC_FIELDS,
    "is_cpu",
    "outer_product",
    "physics_waves",
    "physics_wave_efficiency",
    "m_align",
    "n_align",
    "log_mn_ms",
    "output_intensity_over_ridge",
    "output_over_l2",
)

# Tile assumed when a request names none: a common cuBLAS/CUTLASS threadblock on GPUs, a typical BLAS
# macro-kernel block on CPUs.
_TILE = re.compile(r"_(\d+)x(\d+)_")
DEFAULT_GPU_TILE = 128
DEFAULT_CPU_TILE = 64
# Least fixed cost of issuing one GEMM (kernel launch on a GPU, BLAS call on a CPU), a floor of the physics
# time: the smallest GEMMs replayed in a CUDA graph take 2.2-3.3 us on B200, GB200 and H100
# (aiconfigurator), numpy's a few us on a CPU. Where a measurement adds more (a launch outside a graph:
# 30-55 us for the smallest cuBLAS calls in NeuSight's data), that is an efficiency below 1, learned.
# A batched GEMM is one launch on a GPU, but one BLAS call per matrix on a CPU (numpy loops over the batch).
LAUNCH_OVERHEAD_MS = {"gpu": 0.002, "cpu": 0.002}
# What runtime is learned relative to: the physics time plus this fixed time. A GEMM's time is about a
# fixed cost plus a cost per unit of k; its ratio to a baseline whose fixed part is at least as large as
# any measured fixed cost (50 us for the smallest cuBLAS calls outside a CUDA graph) never falls as k grows,
# so the monotone constraint in k holds the ratio the way the data do. Relative to the bare physics time
# the ratio falls with k, and constraining it cost 7 points of leave-one-GPU-out MAPE (aiconfigurator, 30k
# rows: 35.9% against 29.4% here and 28.7% unconstrained, which would break the guarantee).
REFERENCE_MS = 0.05


def kernel_code(name: object) -> float:
    """A stable number for a kernel name (crc32), NaN when none: the same name always maps the same."""
    if not isinstance(name, str) or not name:
        return float("nan")
    return float(zlib.crc32(name.encode()) % 1_000_003)


def _code(values: Sequence[Any], vocabulary: tuple[str, ...]) -> np.ndarray:
    index = {v: i for i, v in enumerate(vocabulary)}
    return np.array([index.get(v, np.nan) if isinstance(v, str) else np.nan for v in values], dtype=float)


def _align(x: np.ndarray) -> np.ndarray:
    """Largest power of two (up to 128) dividing x: padding and vector-width effects show up here.
    Sizes are whole numbers; the lowest set bit of each is that power (one pass instead of seven)."""
    whole = x.astype(np.int64)
    return np.minimum(whole & -whole, 128).astype(float)


@lru_cache(maxsize=4096)
def _kernel_tile(name: object) -> tuple[float, float]:
    """Threadblock tile parsed from a CUTLASS/cuBLAS kernel name (``..._128x64_...``), NaN otherwise."""
    match = _TILE.search(name) if isinstance(name, str) else None
    return (float(match.group(1)), float(match.group(2))) if match else (np.nan, np.nan)


Rows = Mapping[str, Sequence[Any]] | pd.DataFrame


def _filled(values: np.ndarray, fill: float) -> np.ndarray:
    return np.where(np.isnan(values), fill, values)


def _numeric(rows: Rows, col: str, n_rows: int) -> np.ndarray:
    """A numeric input column as float (None and missing columns → NaN)."""
    return np.array(rows[col], dtype=float) if col in rows else np.full(n_rows, np.nan)


def _text(rows: Rows, col: str, n_rows: int, default: str | None = None) -> list[Any]:
    values = list(rows[col]) if col in rows else [None] * n_rows
    return [v if isinstance(v, str) else default for v in values]


def gemm_flops(batch: Any, m: Any, n: Any, k: Any) -> Any:
    """FLOPs of ``batch`` products of (m x k) and (k x n): numbers or arrays alike."""
    return 2.0 * batch * m * n * k


def gemm_bytes(
    batch: Any, m: Any, n: Any, k: Any, a_bytes: Any, b_bytes: Any, c_bytes: Any, reads_c: Any = False
) -> Any:
    """Bytes a GEMM moves at least: A and B read once, C written once (and read too when beta != 0), at
    their bytes per element (:class:`~service.features.gemm_dtypes.DtypeSpec`); numbers or arrays alike."""
    return batch * (a_bytes * m * k + b_bytes * k * n + c_bytes * m * n * (1.0 + reads_c))


def flops(rows: Rows) -> np.ndarray:
    n_rows = len(rows["m"])
    batch = _filled(_numeric(rows, "batch", n_rows), 1.0)
    m, n, k = (_numeric(rows, col, n_rows) for col in ("m", "n", "k"))
    return np.asarray(gemm_flops(batch, m, n, k))


def _k_columns(columns: Mapping[str, np.ndarray], k: np.ndarray, elem: np.ndarray) -> dict[str, np.ndarray]:
    """The features that depend on k (:data:`INCREASING_IN_K` and ``outer_product``), from k, the element
    size and the k-free columns (sizes, beta, the device's peak, bandwidth, L2 and kind)."""
    b, m, n = columns["batch"], columns["m"], columns["n"]
    a_bytes, b_bytes, c_bytes = elem
    is_cpu = columns["is_cpu"]
    peak, bandwidth = columns["peak_gflops"], columns["dev_memory_bandwidth_gbps"]
    beta = _filled(columns["beta"], 0.0)
    total_flops = gemm_flops(b, m, n, k)
    total_bytes = gemm_bytes(b, m, n, k, a_bytes, b_bytes, c_bytes, beta != 0)
    t_compute = total_flops / (peak * 1e9) * 1e3
    t_memory = total_bytes / (bandwidth * 1e9) * 1e3
    roofline = np.maximum(t_compute, t_memory)
    overhead = np.where(is_cpu == 1, LAUNCH_OVERHEAD_MS["cpu"], LAUNCH_OVERHEAD_MS["gpu"])
    calls = np.where(is_cpu == 1, b, 1.0)
    # Quantizing the activation inside the op (TensorRT-LLM's dynamic FP8/FP4 path) is a pass of its own:
    # read A in BF16, write it quantized, one more launch. A bare GEMM with precomputed scales has none.
    quantize = _filled(columns["quantize_activation"], 0.0) == 1
    t_quantize = np.where(
        quantize, b * m * k * (2.0 + a_bytes) / (bandwidth * 1e9) * 1e3 + overhead * calls, 0.0
    )
    log_physics = np.log(split_k_ms(columns, k, t_memory) + overhead * calls + t_quantize)
    return {
        "k": k,
        "log_k": np.log2(k),
        "flops": total_flops,
        "bytes": total_bytes,
        "log_flops": np.log(total_flops),
        "outer_product": (k == 1).astype(float),
        "log_t_compute_ms": np.log(t_compute),
        "log_roofline_ms": np.log(roofline),
        "log_baseline_ms": np.log(roofline + overhead * calls + t_quantize),
        # The tile waves at their compute roofline, no faster than the memory roofline, plus split-K's
        # partial sums, the call and the activation's quantization pass: never below the roofline, and the
        # time a runtime model is learned relative to.
        "log_physics_ms": log_physics,
        "log_reference_ms": np.log(np.exp(log_physics) + REFERENCE_MS),
        # Energy at full board power over the reference time: what energy is learned relative to.
        "log_tdp_energy_j": columns["log_tdp_w"] + np.log((np.exp(log_physics) + REFERENCE_MS) / 1e3),
        "intensity_over_ridge": np.log((total_flops / total_bytes) / (peak / bandwidth)),
    }


_COLUMN_INDEX = {col: j for j, col in enumerate(FEATURE_COLUMNS)}
# Bytes of A, B and C per dtype code (rows); an unknown dtype (NaN code, last row) is priced as float32.
_CODE_BYTES = np.array(
    [[(s := DTYPE_SPECS[d]).a_bytes, s.b_bytes, s.c_bytes] for d in DTYPES] + [[4.0, 4.0, 4.0]], dtype=float
)


def _element_bytes(dtype_code: np.ndarray) -> np.ndarray:
    """(3, rows): bytes per element of A, B and C for each row's dtype code."""
    return _CODE_BYTES[np.nan_to_num(dtype_code, nan=len(DTYPES)).astype(np.intp)].T


def with_k(matrix: np.ndarray, k: float) -> np.ndarray:
    """The feature matrix of the same configurations with k set to ``k``: the k-dependent columns are
    recomputed from the others, so the result equals :func:`feature_matrix` of the rows with that k."""
    columns = {col: matrix[:, j] for col, j in _COLUMN_INDEX.items()}
    out = np.array(matrix, dtype=float, copy=True)
    elem = _element_bytes(columns["dtype_code"])
    for col, values in _k_columns(columns, np.full(len(matrix), float(k)), elem).items():
        if col in _COLUMN_INDEX:  # "flops" and "bytes" ride along for featurize: no feature columns
            out[:, _COLUMN_INDEX[col]] = values
    return out


def build_features(rows: Rows, devices: Mapping[str, DeviceSpec]) -> pd.DataFrame:
    """Feature table for GEMM configurations (training and evaluation; the service uses the matrix)."""
    index = rows.index if isinstance(rows, pd.DataFrame) else None
    return pd.DataFrame(feature_matrix(rows, devices), columns=list(FEATURE_COLUMNS), index=index)


@dataclass(frozen=True)
class GemmFeatures:
    """The feature matrix of some rows, with the physics figures a response reports beside predictions
    (computed once, here, not again by the caller)."""

    matrix: np.ndarray
    flops: np.ndarray
    bytes: np.ndarray
    peak_gflops: np.ndarray
    bandwidth_gbps: np.ndarray
    # Per row the math unit its peak is of, and why it is not the dtype's own (None: it is).
    units: list[str]
    fallbacks: list[str | None]


def feature_matrix(rows: Rows, devices: Mapping[str, DeviceSpec]) -> np.ndarray:
    """Features as a float matrix with :data:`FEATURE_COLUMNS` in order (see :func:`featurize`)."""
    return featurize(rows, devices).matrix


def featurize(rows: Rows, devices: Mapping[str, DeviceSpec]) -> GemmFeatures:
    """Features as a float matrix with :data:`FEATURE_COLUMNS` in order, plus FLOPs and peak rate.

    ``rows`` maps :data:`CONFIG_COLUMNS` to equal-length sequences (a DataFrame or a dict of lists;
    missing optional columns are unknown) plus ``device``, naming keys of ``devices``. Pure numpy: one
    request row costs well under a millisecond.
    """
    names = list(rows["device"])
    n_rows = len(names)
    # Device figures are looked up once per distinct device (a batch names a few), then indexed per row.
    distinct = {name: i for i, name in enumerate(dict.fromkeys(names))}
    which = np.fromiter((distinct[name] for name in names), dtype=np.intp, count=n_rows)
    specs = [devices[name] for name in distinct]
    dtypes = _text(rows, "dtype", n_rows, "float32")
    kernels = _text(rows, "kernel", n_rows)
    out = _config_columns(rows, n_rows, dtypes, kernels)
    elem = _element_bytes(out["dtype_code"])
    peaks = _peaks(specs, which, out["dtype_code"])
    out |= _device_columns(specs, which, out, peaks.gflops)
    out |= _tile_columns(out, kernels)
    out |= _physics_columns(out)
    out |= _output_columns(out, elem)
    b, m, n = out["batch"], out["m"], out["n"]
    out["log_m"], out["log_n"], out["log_batch"] = np.log2(m), np.log2(n), np.log2(b)
    out["m_align"], out["n_align"] = _align(m), _align(n)
    out |= _k_columns(out, out["k"], elem)
    matrix = np.empty((n_rows, len(FEATURE_COLUMNS)))
    for j, col in enumerate(FEATURE_COLUMNS):
        matrix[:, j] = out[col]
    return GemmFeatures(
        matrix,
        out["flops"],
        out["bytes"],
        out["peak_gflops"],
        out["dev_memory_bandwidth_gbps"],
        peaks.units,
        peaks.fallbacks,
    )


@dataclass(frozen=True)
class _RowPeaks:
    gflops: np.ndarray
    units: list[str]
    fallbacks: list[str | None]


def _peaks(specs: Sequence[DeviceSpec], which: np.ndarray, dtype_code: np.ndarray) -> _RowPeaks:
    """Each row's peak for its dtype (see :func:`dtype_peak`), resolved once per distinct device and dtype."""
    codes = np.nan_to_num(dtype_code, nan=len(DTYPES)).astype(np.intp)
    table = [[dtype_peak(s, d) for d in (*DTYPES, "float32")] for s in specs]
    picked = [table[w][c] for w, c in zip(which.tolist(), codes.tolist(), strict=True)]
    return _RowPeaks(
        np.array([p.gflops for p in picked], dtype=float),
        [p.unit for p in picked],
        [p.fallback for p in picked],
    )


def _config_columns(rows: Rows, n_rows: int, dtypes: list[Any], kernels: list[Any]) -> dict[str, np.ndarray]:
    """The configuration's own columns: sizes (one matrix when the batch is unknown), kernel figures and
    the codes of its categorical fields."""
    out = {col: _numeric(rows, col, n_rows) for col in (*SIZE_FIELDS, *KERNEL_NUMERIC_FIELDS)}
    out["batch"] = _filled(out["batch"], 1.0)
    out["op_code"] = _code(_text(rows, "op", n_rows, "gemm"), OPS)
    out["dtype_code"] = _code(dtypes, DTYPES)
    out["layout_code"] = _code(_text(rows, "layout", n_rows), LAYOUTS)
    out["kernel_code"] = np.array([kernel_code(k) for k in kernels], dtype=float)
    out["framework_code"] = np.array([kernel_code(f) for f in _text(rows, "framework", n_rows)], dtype=float)
    return out


def _device_columns(
    specs: Sequence[DeviceSpec], which: np.ndarray, config: Mapping[str, np.ndarray], peak: np.ndarray
) -> dict[str, np.ndarray]:
    """Each row's device specs, and what of the device its configuration can use: the units (a CPU
    request may name fewer threads than cores) and their peak rate for its dtype."""
    out = {
        f"dev_{field}": np.array([float(getattr(s, field)) for s in specs], dtype=float)[which]
        for field in SPEC_FIELDS
    }
    units = out["dev_sm_count"]
    threads = config["threads"]
    effective_units = np.where(np.isnan(threads), units, np.minimum(threads, units))
    tdp = np.array([s.tdp_w if s.tdp_w else np.nan for s in specs], dtype=float)[which]
    out["is_cpu"] = np.array([s.kind == "cpu" for s in specs], dtype=float)[which]
    out["effective_units"] = effective_units
    out["peak_gflops"] = peak * effective_units / units
    out["tdp_per_gflop"] = tdp / out["dev_fp32_gflops"]
    out["log_tdp_w"] = np.log(tdp)
    return out


def _output_columns(out: Mapping[str, np.ndarray], elem: np.ndarray) -> dict[str, np.ndarray]:
    """The k-free time scale and intensity of a GEMM: the time per unit of k at the peak, the intensity of
    an output element against the ridge point (its FLOPs per byte of A and B read, as k grows), and the
    output's footprint over L2."""
    b, m, n = out["batch"], out["m"], out["n"]
    peak, bandwidth = out["peak_gflops"], out["dev_memory_bandwidth_gbps"]
    return {
        "log_mn_ms": np.log(2.0 * b * m * n / (peak * 1e9) * 1e3),
        "output_intensity_over_ridge": np.log(2.0 * m * n / (elem[0] * m + elem[1] * n) / (peak / bandwidth)),
        "output_over_l2": np.log(b * m * n * elem[2] / (out["dev_l2_cache_mb"] * 1024 * 1024)),
    }


def _first_known(first: np.ndarray, second: np.ndarray, fallback: np.ndarray) -> np.ndarray:
    return np.where(~np.isnan(first), first, np.where(~np.isnan(second), second, fallback))


def _tile_columns(out: Mapping[str, np.ndarray], kernels: list[Any]) -> dict[str, np.ndarray]:
    """The tile a kernel's name gives, and the waves of tiles over the units: tiles from the tile fields,
    else the kernel's name, else the default for the device's kind."""
    parsed = np.array([_kernel_tile(k) for k in kernels], dtype=float).reshape(len(kernels), 2)
    kt_m, kt_n = parsed[:, 0], parsed[:, 1]
    default_tile = np.where(out["is_cpu"] == 1, DEFAULT_CPU_TILE, DEFAULT_GPU_TILE)
    tile_m = _first_known(out["tile_m"], kt_m, default_tile)
    tile_n = _first_known(out["tile_n"], kt_n, default_tile)
    tiles = out["batch"] * np.ceil(out["m"] / tile_m) * np.ceil(out["n"] / tile_n)
    return {"kernel_tile_m": kt_m, "kernel_tile_n": kt_n, "waves": tiles / out["effective_units"]}


def _physics_columns(out: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The physics time per k and its tile: the one the request names (tile fields, a kernel name's tile,
    or a CLTune work-group tile), otherwise on a GPU the fastest of the library's candidates, on a CPU the
    BLAS block."""
    is_cpu = out["is_cpu"]
    n_rows = len(is_cpu)
    named_m = _first_known(out["tile_m"], out["kernel_tile_m"], out["mwg"])
    named_n = _first_known(out["tile_n"], out["kernel_tile_n"], out["nwg"])
    named = ~np.isnan(named_m) & ~np.isnan(named_n)
    fixed = named | (is_cpu == 1)
    own_m = np.where(named, named_m, DEFAULT_CPU_TILE)
    own_n = np.where(named, named_n, DEFAULT_CPU_TILE)
    candidates = np.array(
        [[own_m, own_n]]
        + [[np.where(fixed, np.nan, tm_), np.where(fixed, np.nan, tn_)] for tm_, tn_ in GPU_TILES]
    ).reshape(len(GPU_TILES) + 1, 2, n_rows)
    candidates[0, :, ~fixed] = np.nan
    tile_m, tile_n, waves, efficiency = physics_tile(
        out["batch"], out["m"], out["n"], out["effective_units"], out["peak_gflops"], candidates
    )
    return {
        "physics_tile_m": tile_m,
        "physics_tile_n": tile_n,
        "physics_waves": waves,
        "physics_wave_efficiency": efficiency,
    }
