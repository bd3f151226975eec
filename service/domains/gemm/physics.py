"""The physics of a GEMM on a GPU or CPU: output tiles in waves over the units, each wave at its compute
roofline, split-K where few tiles would leave units idle. Used by :mod:`service.domains.gemm.features`."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

# Threadblock tiles a GPU library chooses among when the request names none (cuBLAS's SGEMM kernels in
# NeuSight's data use 128x128, 128x64, 64x64, 32x128, 128x32 and 32x32; CUTLASS adds 256x128). The
# physics time takes the fastest of them, as the library's heuristic aims to.
GPU_TILES = (
    (256, 128),
    (128, 256),
    (128, 128),
    (128, 64),
    (64, 128),
    (64, 64),
    (32, 128),
    (128, 32),
    (32, 32),
)
# Split-K factors a GPU library chooses among (cuBLAS and CUTLASS split the reduction of skinny GEMMs).
SPLIT_K = (1, 2, 4, 8, 16)
# Tiles resident on one SM at a time: a 128x128 tile fills an SM's registers, smaller ones share it.
TILE_AREA_PER_SM = 128 * 128
MAX_TILES_PER_SM = 8


def wave_time_per_k(
    count: np.ndarray,
    tm: np.ndarray,
    tn: np.ndarray,
    units: np.ndarray,
    peak_gflops: np.ndarray,
    split: np.ndarray | float = 1.0,
) -> tuple[np.ndarray, np.ndarray]:
    """Compute time per unit of k of ``count`` output tiles (tm x tn) in waves over the units, each tile
    cut into ``split`` pieces along k; returns (ms per k, waves). A unit runs the tiles resident on it (as
    many as fit, see :data:`TILE_AREA_PER_SM`) at its share of the peak; waves run one after another, the
    last as long as a full one. What memory costs is the roofline's (A and B read once), not per wave:
    tiles of one wave share their rows of A and columns of B through L2 (per-tile reads made an H100 BF16
    8192^3 GEMM memory-bound at 4.6x its compute time)."""
    per_unit = np.clip(np.floor(TILE_AREA_PER_SM / (tm * tn)), 1, MAX_TILES_PER_SM)
    waves = count * split / (units * per_unit)
    t_compute = per_unit * 2.0 * tm * tn / (peak_gflops / units * 1e9) * 1e3
    return np.ceil(waves) * t_compute / split, waves


def physics_tile(
    b: np.ndarray, m: np.ndarray, n: np.ndarray, units: np.ndarray, peak_gflops: np.ndarray, tiles: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Each row's fastest candidate tile without split-K, and its waves.

    ``tiles`` is (candidates, 2, rows): tile_m and tile_n per candidate (NaN: no such candidate). The time
    per k does not depend on k, so neither does the chosen tile. Returns (tile_m, tile_n, waves, wave
    efficiency).
    """
    tm, tn = tiles[:, 0, :], tiles[:, 1, :]
    per_k, waves = wave_time_per_k(b * np.ceil(m / tm) * np.ceil(n / tn), tm, tn, units, peak_gflops)
    best = np.argmin(np.where(np.isnan(per_k), np.inf, per_k), axis=0)
    pick = np.arange(per_k.shape[1])
    chosen_waves = waves[best, pick]
    return tm[best, pick], tn[best, pick], chosen_waves, chosen_waves / np.ceil(chosen_waves)


def split_k_ms(columns: Mapping[str, np.ndarray], k: np.ndarray, t_memory: np.ndarray) -> np.ndarray:
    """The chosen tile's time over the whole of k, at the fastest split-K factor.

    Each wave runs at its compute roofline, the whole no faster than reading A and B and writing C
    (``t_memory``). A GEMM whose output tiles fill few of the units (a decode step: m of 1 to 16 rows
    against a wide k) runs with k cut into ``split`` pieces, each piece a tile of its own, and the fp32
    partial sums written and read back once per piece: without it a 1 x 768 x 65536 BF16 GEMM on an A100
    was priced at 0.39 ms against 0.065 measured. The time at each factor never decreases in k, so neither
    does their minimum.
    """
    b, m, n = columns["batch"], columns["m"], columns["n"]
    tm, tn = columns["physics_tile_m"], columns["physics_tile_n"]
    bandwidth = columns["dev_memory_bandwidth_gbps"]
    count = b * np.ceil(m / tm) * np.ceil(n / tn)
    # CPUs run one BLAS block per core over the whole of k: no split.
    gpu = columns["is_cpu"] != 1
    best = np.full(len(k), np.inf)
    for split in SPLIT_K:
        per_k, _ = wave_time_per_k(count, tm, tn, columns["effective_units"], columns["peak_gflops"], split)
        partials = 0.0 if split == 1 else 2.0 * 4.0 * split * b * m * n / (bandwidth * 1e9) * 1e3
        time = np.maximum(k * per_k, t_memory) + partials
        best = np.where((time < best) & ((split == 1) | gpu), time, best)
    return best
