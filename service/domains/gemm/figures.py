"""The device and physics columns of the GEMM feature table (:mod:`service.domains.gemm.features` builds
the table from them and owns its version: a change to the math here is a change of the features, so bump
its ``FEATURE_VERSION``).

Each function computes a group of columns over arrays of rows: the device's specs and what of it a
configuration can use (units, peak for its dtype), its tiles and their waves over the units, the physics
time per k, the k-free time scale and intensity, and (apart, so that ``with_k`` can recompute them for
another k) the k-dependent roofline and physics times. Here too are the FLOPs and bytes of a GEMM's
sizes, which collectors use without the features.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import numpy as np

from service.core.devices import SPEC_FIELDS, DeviceSpec
from service.domains.gemm.dtypes import DTYPE_SPECS, DTYPES, dtype_peak
from service.domains.gemm.physics import GPU_TILES, physics_tile, split_k_ms

# Tile assumed when a request names none: a common cuBLAS/CUTLASS threadblock on GPUs, a typical BLAS
# macro-kernel block on CPUs.
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


# A threadblock tile as CUTLASS and cuBLAS kernel names spell it (``..._128x64_...``).
_TILE = re.compile(r"_(\d+)x(\d+)_")


@lru_cache(maxsize=4096)
def _kernel_tile(name: object) -> tuple[float, float]:
    """Threadblock tile parsed from a CUTLASS/cuBLAS kernel name (``..._128x64_...``), NaN otherwise."""
    match = _TILE.search(name) if isinstance(name, str) else None
    return (float(match.group(1)), float(match.group(2))) if match else (np.nan, np.nan)


def filled(values: np.ndarray, fill: float) -> np.ndarray:
    """``values`` with ``fill`` where unknown (NaN)."""
    return np.where(np.isnan(values), fill, values)


def gemm_flops(batch: Any, m: Any, n: Any, k: Any) -> Any:
    """FLOPs of ``batch`` products of (m x k) and (k x n): numbers or arrays alike."""
    return 2.0 * batch * m * n * k


def gemm_bytes(
    batch: Any, m: Any, n: Any, k: Any, a_bytes: Any, b_bytes: Any, c_bytes: Any, reads_c: Any = False
) -> Any:
    """Bytes a GEMM moves at least: A and B read once, C written once (and read too when beta != 0), at
    their bytes per element (:class:`~service.domains.gemm.dtypes.DtypeSpec`); numbers or arrays alike."""
    return batch * (a_bytes * m * k + b_bytes * k * n + c_bytes * m * n * (1.0 + reads_c))


def k_columns(columns: Mapping[str, np.ndarray], k: np.ndarray, elem: np.ndarray) -> dict[str, np.ndarray]:
    """The features that depend on k (``INCREASING_IN_K`` of :mod:`~service.domains.gemm.features` and
    ``outer_product``), from k, the element size and the k-free columns (sizes, beta, the device's peak,
    bandwidth, L2 and kind)."""
    b, m, n = columns["batch"], columns["m"], columns["n"]
    a_bytes, b_bytes, c_bytes = elem
    is_cpu = columns["is_cpu"]
    peak, bandwidth = columns["peak_gflops"], columns["dev_memory_bandwidth_gbps"]
    beta = filled(columns["beta"], 0.0)
    total_flops = gemm_flops(b, m, n, k)
    total_bytes = gemm_bytes(b, m, n, k, a_bytes, b_bytes, c_bytes, beta != 0)
    t_compute = total_flops / (peak * 1e9) * 1e3
    t_memory = total_bytes / (bandwidth * 1e9) * 1e3
    roofline = np.maximum(t_compute, t_memory)
    overhead = np.where(is_cpu == 1, LAUNCH_OVERHEAD_MS["cpu"], LAUNCH_OVERHEAD_MS["gpu"])
    calls = np.where(is_cpu == 1, b, 1.0)
    # Quantizing the activation inside the op (TensorRT-LLM's dynamic FP8/FP4 path) is a pass of its own:
    # read A in BF16, write it quantized, one more launch. A bare GEMM with precomputed scales has none.
    quantize = filled(columns["quantize_activation"], 0.0) == 1
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


# Bytes of A, B and C per dtype code (rows); an unknown dtype (NaN code, last row) is priced as float32.
_CODE_BYTES = np.array(
    [[(s := DTYPE_SPECS[d]).a_bytes, s.b_bytes, s.c_bytes] for d in DTYPES] + [[4.0, 4.0, 4.0]], dtype=float
)


def element_bytes(dtype_code: np.ndarray) -> np.ndarray:
    """(3, rows): bytes per element of A, B and C for each row's dtype code."""
    return _CODE_BYTES[np.nan_to_num(dtype_code, nan=len(DTYPES)).astype(np.intp)].T


@dataclass(frozen=True)
class _RowPeaks:
    gflops: np.ndarray
    units: list[str]
    fallbacks: list[str | None]


def peaks(specs: Sequence[DeviceSpec], which: np.ndarray, dtype_code: np.ndarray) -> _RowPeaks:
    """Each row's peak for its dtype (see :func:`dtype_peak`), resolved once per distinct device and dtype."""
    codes = np.nan_to_num(dtype_code, nan=len(DTYPES)).astype(np.intp)
    table = [[dtype_peak(s, d) for d in (*DTYPES, "float32")] for s in specs]
    picked = [table[w][c] for w, c in zip(which.tolist(), codes.tolist(), strict=True)]
    return _RowPeaks(
        np.array([p.gflops for p in picked], dtype=float),
        [p.unit for p in picked],
        [p.fallback for p in picked],
    )


def device_columns(
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


def output_columns(out: Mapping[str, np.ndarray], elem: np.ndarray) -> dict[str, np.ndarray]:
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


def tile_columns(out: Mapping[str, np.ndarray], kernels: list[Any]) -> dict[str, np.ndarray]:
    """The tile a kernel's name gives, and the waves of tiles over the units: tiles from the tile fields,
    else the kernel's name, else the default for the device's kind."""
    parsed = np.array([_kernel_tile(k) for k in kernels], dtype=float).reshape(len(kernels), 2)
    kt_m, kt_n = parsed[:, 0], parsed[:, 1]
    default_tile = np.where(out["is_cpu"] == 1, DEFAULT_CPU_TILE, DEFAULT_GPU_TILE)
    tile_m = _first_known(out["tile_m"], kt_m, default_tile)
    tile_n = _first_known(out["tile_n"], kt_n, default_tile)
    tiles = out["batch"] * np.ceil(out["m"] / tile_m) * np.ceil(out["n"] / tile_n)
    return {"kernel_tile_m": kt_m, "kernel_tile_n": kt_n, "waves": tiles / out["effective_units"]}


def physics_columns(out: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
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
