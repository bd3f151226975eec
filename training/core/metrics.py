"""Metrics of held-out predictions, one summary shape for every domain: ``targets`` (point metrics and
interval coverage per target) and ``groups`` (the same per group of rows, e.g. device, op, family).

A predictions frame has one row per (target, test row): columns ``target``, ``model``, ``true``,
``pred``, ``low``, ``high`` plus whatever the groups are taken by."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import pandas as pd
from sklearn.metrics import r2_score

COVERAGE = 0.9

Entry = Callable[[pd.DataFrame], dict[str, Any]]


def point_metrics(y_true: np.ndarray, y_pred: np.ndarray) -> dict[str, float]:
    ape = np.abs(y_pred - y_true) / y_true
    return {
        "r2": float(r2_score(y_true, y_pred)),
        "mape": float(np.mean(ape)),
        "median_ape": float(np.median(ape)),
        "p90_ape": float(np.quantile(ape, 0.9)),
        "within_10pct": float(np.mean(ape <= 0.10)),
    }


def interval_coverage(rows: pd.DataFrame) -> float:
    """Share of rows whose measured value lies inside the predicted interval."""
    return float(np.mean((rows["true"] >= rows["low"]) & (rows["true"] <= rows["high"])))


def target_entry(rows: pd.DataFrame) -> dict[str, Any]:
    """Point metrics, coverage and size of one target's rows."""
    return {
        **point_metrics(rows["true"].to_numpy(), rows["pred"].to_numpy()),
        "interval_coverage_90": interval_coverage(rows),
        "n_test": len(rows),
    }


def group_entry(rows: pd.DataFrame) -> dict[str, Any]:
    """The lighter summary of one group of a target's rows (R² is meaningless on small groups)."""
    ape = np.abs(rows["pred"] - rows["true"]) / rows["true"]
    return {
        "mape": float(ape.mean()),
        "median_ape": float(ape.median()),
        "n_test": len(rows),
        "interval_coverage_90": interval_coverage(rows),
    }


def summarize(
    predictions: pd.DataFrame,
    header: dict[str, Any],
    groups: Sequence[tuple[str, str]],
    per_target: Entry = target_entry,
    per_group: Entry = group_entry,
) -> dict[str, Any]:
    """The metrics.json document: ``header`` (dataset, protocol, sizes ...), then per target and per group.
    ``groups`` are (column, prefix) pairs; a group's key is ``prefix:value``, or the value alone when the
    prefix is empty."""
    metrics: dict[str, Any] = {**header, "targets": {}, "groups": {}}
    for target, rows in predictions.groupby("target", sort=False):
        metrics["targets"][str(target)] = {"model": rows["model"].iloc[0], **per_target(rows)}
        for column, prefix in groups:
            for group, part in rows.groupby(column):
                key = f"{prefix}:{group}" if prefix else str(group)
                metrics["groups"].setdefault(key, {})[str(target)] = per_group(part)
    return metrics
