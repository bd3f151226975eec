"""What a GEMM model's training data covered (written into its card) and the out-of-distribution rule a
request is checked against: devices never trained on, sizes beyond the largest GEMM trained on for the
device, numbers outside the trained ranges and categories never seen."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from service.core.devices import DeviceSpec
from service.core.model import TabularModel
from service.core.targets import member_of
from service.domains.gemm import features
from service.domains.gemm.cards import GemmCard

# What the card's profile records of the training data and a request is checked against.
OOD_RANGES = ("batch", "m", "n", "k")
OOD_CATEGORIES = ("op", "dtype", "layout", "kernel", "framework")


def profile(frame: pd.DataFrame) -> dict[str, Any]:
    """What the training data covered, for the card: the ranges and categories :func:`predict` flags
    requests outside of, and per device the largest GEMM, beyond which a prediction extrapolates in size."""
    ranges = {}
    for col in OOD_RANGES:
        values = frame[col].to_numpy(dtype=float)
        ranges[col] = [float(np.nanmin(values)), float(np.nanmax(values))]
    flops = features.flops(frame)
    ranges["flops"] = [float(flops.min()), float(flops.max())]
    categories = {col: sorted({str(v) for v in frame[col].dropna().unique()}) for col in OOD_CATEGORIES}
    largest = pd.Series(flops).groupby(frame["device"].to_numpy()).max()
    device_flops = {str(device): float(value) for device, value in largest.items()}
    return {"ranges": ranges, "categories": categories, "device_max_flops": device_flops}


def beyond_trained_sizes(devices: list[str], total_flops: np.ndarray, model: TabularModel) -> np.ndarray:
    """Per row, whether it is larger (in FLOPs) than every GEMM the model was trained on for its device."""
    largest = model.typed_card(GemmCard).profile.device_max_flops
    ceiling = np.array([largest.get(d, np.inf) for d in devices], dtype=float)
    return total_flops > ceiling


def ood_reasons(
    rows: dict[str, list[Any]],
    total_flops: np.ndarray,
    beyond: np.ndarray,
    model: TabularModel,
    trained: dict[str, DeviceSpec],
) -> list[list[str]]:
    """Why each row lies outside the training data (empty list: inside). Vectorised per check."""
    profile = model.typed_card(GemmCard).profile
    ranges, categories = profile.ranges, profile.categories
    reasons: list[list[str]] = [[] for _ in range(len(rows["m"]))]
    devices = rows["device"]
    for i in np.flatnonzero(~member_of(devices, trained)):
        reasons[i].append(f"device {devices[i]!r} is not among the {len(trained)} training devices")
    largest = profile.device_max_flops
    for i in np.flatnonzero(beyond):
        reasons[i].append(
            f"flops={total_flops[i]:.6g} above the largest GEMM trained on for {devices[i]!r} "
            f"({largest[devices[i]]:.6g}): extrapolating in size"
        )
    numeric = {col: np.array(rows[col], dtype=float) for col in OOD_RANGES}
    numeric["flops"] = total_flops
    for col, values in numeric.items():
        if col not in ranges:
            continue
        lo, hi = ranges[col]
        for i in np.flatnonzero((values < lo) | (values > hi)):
            reasons[i].append(f"{col}={values[i]:.6g} outside the training range [{lo:.6g}, {hi:.6g}]")
    for col in OOD_CATEGORIES:
        if col not in categories:
            continue
        known = set(categories[col])
        for j, value in enumerate(rows[col]):
            if isinstance(value, str) and value not in known:
                reasons[j].append(f"{col}={value!r} never seen in training")
    return reasons
