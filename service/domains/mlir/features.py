"""MLIR features: the one place where a program's MLIR text becomes model inputs (no compiler involved).

Training (:mod:`training.domains.mlir`) and serving (:mod:`service.domains.mlir.runtime`) both call
:func:`features_from_summaries`; a fitted model records :data:`FEATURE_VERSION` and
:data:`FEATURE_COLUMNS` (the last one a runtime baseline whose fitted figures the card carries, see
:class:`RuntimeBaseline`), and loading refuses a model whose record differs from this module. Change the
math here or in the modules below → bump the version.

A program's text is first read into a :class:`Summary` (:func:`summarize`, in
:mod:`service.domains.mlir.summary`, which reads its lines with :mod:`service.domains.mlir.text` and
:mod:`service.domains.mlir.scan` and estimates op costs with :mod:`service.domains.mlir.cost`); this
module lays summaries out as the feature table.
Every name those modules provide to other code is importable from here as well.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, fields

import numpy as np
import pandas as pd

from service.domains.mlir.cost import (
    CONTRACTIONS,
    CONVOLUTIONS,
    MOVEMENT,
    ONNX_ELEMENT_FLOPS,
    ONNX_FREE,
    POOLING,
    OpCost,
)
from service.domains.mlir.scan import BODY_OPS_SKIP, TRANSCENDENTAL
from service.domains.mlir.summary import (
    DIALECTS,
    DIVISIBILITY,
    DTYPES,
    KNOWN_OPS,
    MAIN_EXTENTS,
    N_HASH,
    Summary,
    summarize,
)
from service.domains.mlir.text import (
    DTYPE_BYTES,
    MlirTextError,
    TensorType,
    check_mlir,
    logical_lines,
    parse_types,
    strip_constants,
)

__all__ = [
    "BASELINE_COLUMN",
    "BODY_OPS_SKIP",
    "CONTRACTIONS",
    "CONVOLUTIONS",
    "DIALECTS",
    "DIVISIBILITY",
    "DTYPES",
    "DTYPE_BYTES",
    "FEATURE_COLUMNS",
    "FEATURE_VERSION",
    "KNOWN_OPS",
    "MAIN_EXTENTS",
    "MOVEMENT",
    "N_HASH",
    "ONNX_ELEMENT_FLOPS",
    "ONNX_FREE",
    "POOLING",
    "SUMMARY_COLUMNS",
    "TRANSCENDENTAL",
    "MlirTextError",
    "OpCost",
    "RuntimeBaseline",
    "Summary",
    "TensorType",
    "check_mlir",
    "feature_row",
    "features_from_summaries",
    "logical_lines",
    "parse_types",
    "positive_figure",
    "strip_constants",
    "summarize",
    "summary_table",
    "with_baseline",
]

FEATURE_VERSION = "mlir-5"

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
        # The summary writes log 0 for none: a zero column means no FLOPs (bytes), not one.
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
