"""What MLIR training programs covered, and the rule that flags a program outside it.

Training records :func:`profile` in the model card; the service checks each request's programs against
that record with :func:`ood_reasons`. Both live here so that what is recorded and how it is read cannot
drift apart. A program is out of distribution when it uses op names or dialects training never saw, or
lies outside the training range of size (:data:`RANGE_FIELDS`).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd

from service.domains.mlir.summary import Summary

# Summary values whose training range is recorded for out-of-distribution flags.
RANGE_FIELDS = ("log_flops", "log_bytes", "max_log_elements", "ops_total", "max_depth")
# Structure a program may have less of than every training program without being doubted: a two-op
# linalg.matmul was flagged for "op count 2" and "nesting depth 0", although its ops were all seen and
# the runtime baseline prices small work; more ops or deeper nesting than trained on is flagged.
UPPER_BOUND_ONLY = ("ops_total", "max_depth")
RANGE_LABELS = {
    "log_flops": "estimated FLOPs",
    "log_bytes": "estimated bytes",
    "max_log_elements": "largest tensor (elements)",
    "ops_total": "op count",
    "max_depth": "nesting depth",
}


def profile(frame: pd.DataFrame, summaries: list[Summary]) -> dict[str, Any]:
    """What the training programs covered: op names, dialects, dtypes, families and value ranges."""
    ops: set[str] = set()
    dialects: set[str] = set()
    for s in summaries:
        ops.update(s.ops)
        dialects.update(s.dialects)
    ranges = {}
    for name in RANGE_FIELDS:
        values = np.array([s.values[name] for s in summaries], dtype=float)
        ranges[name] = [float(values.min()), float(values.max())]
    return {
        "ops": sorted(ops),
        "dialects": sorted(dialects),
        "families": sorted(frame["family"].unique()),
        "dtypes": sorted(frame["dtype"].unique()),
        "ranges": ranges,
    }


def ood_reasons(summary: Summary, trained: dict[str, Any]) -> list[str]:
    """Why a program lies outside ``trained`` (a card's :func:`profile`): one sentence per reason, none
    when it lies inside."""
    reasons = []
    seen_ops = set(trained.get("ops", []))
    if seen_ops:
        unseen = sorted(op for op in summary.ops if op not in seen_ops)
        if unseen:
            shown = ", ".join(unseen[:10]) + (", ..." if len(unseen) > 10 else "")
            reasons.append(f"op names never seen in training: {shown}")
    seen_dialects = set(trained.get("dialects", []))
    if seen_dialects:
        unseen_d = sorted(d for d in summary.dialects if d not in seen_dialects)
        if unseen_d:
            reasons.append(f"dialects never seen in training: {', '.join(unseen_d)}")
    for name, (lo, hi) in trained.get("ranges", {}).items():
        value = summary.values.get(name)
        if value is None or (lo <= value or name in UPPER_BOUND_ONLY) and value <= hi:
            continue
        shown_value, lo_, hi_ = (
            (math.exp(value), math.exp(lo), math.exp(hi)) if "log" in name else (value, lo, hi)
        )
        label = RANGE_LABELS.get(name, name)
        reasons.append(f"{label} {shown_value:.4g} outside the training range [{lo_:.4g}, {hi_:.4g}]")
    return reasons
