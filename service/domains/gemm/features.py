"""GEMM features: the one place where a GEMM configuration on a device becomes model inputs.

Training (``training/``) and serving (``service/``) both call :func:`build_features`; a fitted model
records :data:`FEATURE_VERSION` and :data:`FEATURE_COLUMNS`, and loading refuses a model whose record
differs from this module. Change the math (here or in :mod:`service.domains.gemm.figures`) → bump the
version.

Here are the configuration's fields, the feature columns and what the models read of them, and the
featurizer that builds the table from rows: the configuration's own columns here, the device and physics
columns in :mod:`~service.domains.gemm.figures`. Besides sizes and the device's specs, the features
place each configuration against the device's roofline (compute- and memory-bound times, plus a launch
overhead), its waves of tiles over the SMs or cores, and its cache footprint: quantities that carry over
from the devices a model was trained on to one it was not.
"""

from __future__ import annotations

import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, get_args

import numpy as np
import pandas as pd

from service.core.devices import SPEC_FIELDS, DeviceSpec
from service.domains.gemm.dtypes import DTYPES
from service.domains.gemm.figures import (
    device_columns,
    element_bytes,
    filled,
    gemm_flops,
    k_columns,
    output_columns,
    peaks,
    physics_columns,
    tile_columns,
)

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
# that the whole stays monotone, see training.core.split_regressor.SplitRegressor), so predicted runtime and
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


Rows = Mapping[str, Sequence[Any]] | pd.DataFrame


def _numeric(rows: Rows, col: str, n_rows: int) -> np.ndarray:
    """A numeric input column as float (None and missing columns → NaN)."""
    return np.array(rows[col], dtype=float) if col in rows else np.full(n_rows, np.nan)


def _text(rows: Rows, col: str, n_rows: int, default: str | None = None) -> list[Any]:
    values = list(rows[col]) if col in rows else [None] * n_rows
    return [v if isinstance(v, str) else default for v in values]


def flops(rows: Rows) -> np.ndarray:
    """Each row's FLOPs (one matrix where the batch is unknown)."""
    n_rows = len(rows["m"])
    batch = filled(_numeric(rows, "batch", n_rows), 1.0)
    m, n, k = (_numeric(rows, col, n_rows) for col in ("m", "n", "k"))
    return np.asarray(gemm_flops(batch, m, n, k))


_COLUMN_INDEX = {col: j for j, col in enumerate(FEATURE_COLUMNS)}


def with_k(matrix: np.ndarray, k: float) -> np.ndarray:
    """The feature matrix of the same configurations with k set to ``k``: the k-dependent columns are
    recomputed from the others, so the result equals :func:`feature_matrix` of the rows with that k."""
    columns = {col: matrix[:, j] for col, j in _COLUMN_INDEX.items()}
    out = np.array(matrix, dtype=float, copy=True)
    elem = element_bytes(columns["dtype_code"])
    for col, values in k_columns(columns, np.full(len(matrix), float(k)), elem).items():
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
    elem = element_bytes(out["dtype_code"])
    row_peaks = peaks(specs, which, out["dtype_code"])
    out |= device_columns(specs, which, out, row_peaks.gflops)
    out |= tile_columns(out, kernels)
    out |= physics_columns(out)
    out |= output_columns(out, elem)
    b, m, n = out["batch"], out["m"], out["n"]
    out["log_m"], out["log_n"], out["log_batch"] = np.log2(m), np.log2(n), np.log2(b)
    out["m_align"], out["n_align"] = _align(m), _align(n)
    out |= k_columns(out, out["k"], elem)
    matrix = np.empty((n_rows, len(FEATURE_COLUMNS)))
    for j, col in enumerate(FEATURE_COLUMNS):
        matrix[:, j] = out[col]
    return GemmFeatures(
        matrix,
        out["flops"],
        out["bytes"],
        out["peak_gflops"],
        out["dev_memory_bandwidth_gbps"],
        row_peaks.units,
        row_peaks.fallbacks,
    )


def _config_columns(rows: Rows, n_rows: int, dtypes: list[Any], kernels: list[Any]) -> dict[str, np.ndarray]:
    """The configuration's own columns: sizes (one matrix when the batch is unknown), kernel figures and
    the codes of its categorical fields."""
    out = {col: _numeric(rows, col, n_rows) for col in (*SIZE_FIELDS, *KERNEL_NUMERIC_FIELDS)}
    out["batch"] = filled(out["batch"], 1.0)
    out["op_code"] = _code(_text(rows, "op", n_rows, "gemm"), OPS)
    out["dtype_code"] = _code(dtypes, DTYPES)
    out["layout_code"] = _code(_text(rows, "layout", n_rows), LAYOUTS)
    out["kernel_code"] = np.array([kernel_code(k) for k in kernels], dtype=float)
    out["framework_code"] = np.array([kernel_code(f) for f in _text(rows, "framework", n_rows)], dtype=float)
    return out
