"""What a CPU model's training data covered, and the out-of-distribution rule that reads it.

Training records :func:`domain_profile` in the model card (``profile``); serving reads it back to tell,
per request row, whether its CPU model was trained on (:func:`seen_model`, which picks the "seen" or the
wider "unseen" interval) and what lies outside the training data (:func:`ood_reasons`). Both sides call
this module, so what is recorded and what is checked cannot drift apart.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np
import pandas as pd

from service.domains.cpu.features import build_features, parsed_categories, specs_frame

# Categories whose unseen value makes a prediction out of distribution. An unseen model_name is the
# normal use (a new CPU) and selects the wider "unseen" interval instead; submitter, OS release and
# file system barely move a score, so a new one is not worth a flag.
OOD_CATEGORIES = ("vendor", "cpu_family", "cpu_tier", "compiler_family", "os_name", "arch", "parallel")
# Numeric inputs whose range training covered; a request outside it is extrapolation.
OOD_RANGES = (
    "nominal_mhz",
    "max_mhz",
    "total_cores",
    "total_threads",
    "sockets",
    "l3_cache_kb",
    "mem_bandwidth_gbps",
    "threads_or_copies",
)


def domain_profile(rows: pd.DataFrame) -> dict[str, Any]:
    """What training covered, for the card: seen categories and numeric ranges (see :func:`ood_reasons`)."""
    features = build_features(rows)
    parsed = parsed_categories(rows)
    categories: dict[str, list[str]] = {}
    for col in OOD_CATEGORIES:
        source = parsed[col] if col in parsed else rows[col]
        categories[col] = sorted({str(v) for v in source.dropna() if str(v)})
    categories["model_name"] = sorted({str(v) for v in rows["model_name"].dropna()})
    ranges = {}
    for col in OOD_RANGES:
        values = features[col].to_numpy(dtype=float)
        values = values[np.isfinite(values)]
        ranges[col] = [float(values.min()), float(values.max())] if len(values) else [math.nan, math.nan]
    return {"categories": categories, "ranges": ranges}


def ood_reasons(rows: pd.DataFrame, profile: Mapping[str, Any]) -> list[list[str]]:
    """Per row, why it lies outside what the model was trained on (empty list: in distribution).

    A category value training never saw, or a numeric input outside the training range, is named.
    Missing values are not flagged: they are unknown, not new.
    """
    features = build_features(rows)
    parsed = parsed_categories(rows)
    reasons: list[list[str]] = [[] for _ in range(len(rows))]
    seen_categories = profile.get("categories", {})
    for col in OOD_CATEGORIES:
        if col not in seen_categories:
            continue
        seen = set(seen_categories[col])
        source = (
            parsed[col] if col in parsed else rows.get(col, pd.Series([None] * len(rows), index=rows.index))
        )
        for i, value in enumerate(source):
            if isinstance(value, str) and value and value not in seen:
                reasons[i].append(f"{col} {value!r} not seen in training")
    for col, (low, high) in profile.get("ranges", {}).items():
        values = features[col].to_numpy(dtype=float)
        for i, value in enumerate(values):
            if np.isfinite(value) and not (low <= value <= high):
                reasons[i].append(f"{col} {value:g} outside the training range [{low:g}, {high:g}]")
    return reasons


def seen_model(rows: pd.DataFrame, profile: Mapping[str, Any]) -> np.ndarray:
    """Whether each row's model_name was in training: picks the "seen" or "unseen" conformal interval."""
    seen = set(profile.get("categories", {}).get("model_name", []))
    names = rows["model_name"] if "model_name" in rows else pd.Series([None] * len(rows))
    return np.array([isinstance(n, str) and n in seen for n in names], dtype=bool)


def request_features(
    specs: Iterable[Mapping[str, Any]], profile: Mapping[str, Any]
) -> tuple[pd.DataFrame, np.ndarray, list[list[str]]]:
    """What a prediction request needs: features, per-row "CPU model seen in training", OOD reasons.

    ``profile`` is the model card's ``profile``. Raises ValueError naming the field of a bad input.
    """
    rows = specs_frame(specs)
    return build_features(rows), seen_model(rows, profile), ood_reasons(rows, profile)
