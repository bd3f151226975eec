"""GEMM predictions: validated instances → features → model targets → response rows.

Runtime is predicted for any device (flagged out-of-distribution when the device or the configuration
lies outside the training data). Power and energy are predicted only on devices where they were
measured; elsewhere they are null with the reason, never an invented number. Utilization, cost and CO2
are derived from runtime and energy with their intervals carried through.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd

from service.cards import GemmCard
from service.devices import DeviceCatalog, DeviceError, DeviceSpec
from service.features import gemm as features
from service.model import Prediction, TabularModel, member_of
from service.schemas.gemm import GemmInstance

TARGETS = ("runtime_ms", "power_w", "energy_j")
# Reported only on devices where they were measured (null with the reason elsewhere), so not predicted
# for other devices' rows at all: for a request on any other GPU, two forests fewer to run.
DEVICE_BOUND_TARGETS = ("power_w", "energy_j")
MS_PER_HOUR = 3.6e6
J_PER_KWH = 3.6e6
CONFIG_FIELDS = features.CONFIG_COLUMNS
# What the card's profile records of the training data and a request is checked against.
OOD_RANGES = ("batch", "m", "n", "k")
OOD_CATEGORIES = ("op", "dtype", "layout", "kernel")


class UnknownDeviceError(LookupError):
    def __init__(self, index: int, message: str) -> None:
        super().__init__(message)
        self.index = index


def model_devices(model: TabularModel) -> dict[str, DeviceSpec]:
    """Specs of the devices a model was trained on, as recorded in its card (parsed once per version)."""
    if "gemm_devices" not in model.cache:
        model.cache["gemm_devices"] = {d.name: d for d in model.typed_card(GemmCard).devices}
    devices: dict[str, DeviceSpec] = model.cache["gemm_devices"]
    return devices


def lookup_device(name: str, catalog: DeviceCatalog, trained_lower: dict[str, DeviceSpec]) -> DeviceSpec:
    """A device by name: one the model was trained on (its recorded specs, any case), else the catalog's;
    :class:`DeviceError` naming it otherwise."""
    return trained_lower.get(name.lower()) or catalog.get(name)


def resolve_devices(
    instances: list[GemmInstance], catalog: DeviceCatalog, trained: dict[str, DeviceSpec]
) -> tuple[list[str], dict[str, DeviceSpec]]:
    names: list[str] = []
    specs: dict[str, DeviceSpec] = {}
    by_request_name: dict[str, DeviceSpec] = {}  # rows of a batch mostly name the same few devices
    trained_lower = {n.lower(): s for n, s in trained.items()}
    for i, inst in enumerate(instances):
        if inst.device_spec is not None:
            spec = inst.device_spec
        else:
            assert inst.device is not None
            found = by_request_name.get(inst.device)
            if found is None:
                try:
                    found = lookup_device(inst.device, catalog, trained_lower)
                except DeviceError as exc:
                    raise UnknownDeviceError(i, str(exc)) from exc
            by_request_name[inst.device] = spec = found
        names.append(spec.name)
        specs[spec.name] = spec
    return names, specs


def _intervals(pred: Prediction) -> list[dict[str, float] | None]:
    """Each row's interval, or None where a bound is not a finite number (reported as unavailable)."""
    return [
        {"value": v, "low": lo, "high": hi}
        if math.isfinite(v) and math.isfinite(lo) and math.isfinite(hi)
        else None
        for v, lo, hi in zip(pred.value.tolist(), pred.low.tolist(), pred.high.tolist(), strict=True)
    ]


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


def _ood_reasons(
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


def predict(
    instances: list[GemmInstance], coverage: float, model: TabularModel, catalog: DeviceCatalog
) -> list[dict[str, Any]]:
    trained = model_devices(model)
    names, specs = resolve_devices(instances, catalog, trained)
    rows: dict[str, list[Any]] = {col: [getattr(inst, col) for inst in instances] for col in CONFIG_FIELDS}
    rows["device"] = names
    computed = features.featurize(rows, specs)
    beyond = beyond_trained_sizes(names, computed.flops, model)
    results = model.predict(computed.matrix, coverage, names, only_seen=DEVICE_BOUND_TARGETS, beyond=beyond)
    ood = _ood_reasons(rows, computed.flops, beyond, model, trained)
    peak_flops = (computed.peak_gflops * 1e9).tolist()
    flops_list = computed.flops.tolist()
    rooflines = [
        {"flops": f, "bytes": b, "peak_gflops": p, "bandwidth_gbps": w}
        for f, b, p, w in zip(
            flops_list,
            computed.bytes.tolist(),
            computed.peak_gflops.tolist(),
            computed.bandwidth_gbps.tolist(),
            strict=True,
        )
    ]
    intervals = {target: _intervals(pred) for target, (pred, _) in results.items()}

    label = f"{model.name} {model.version}"
    out = []
    for i, inst in enumerate(instances):
        row: dict[str, Any] = {"unavailable": {}}
        for target in TARGETS:
            if target not in results:
                row[target] = None
                row["unavailable"][target] = f"model {label} has no {target} model"
                continue
            _, seen = results[target]
            if target in DEVICE_BOUND_TARGETS and not seen[i]:
                measured_on = ", ".join(model.targets[target].devices)
                row[target] = None
                row["unavailable"][target] = (
                    f"{target} was measured only on {measured_on}; no model for {names[i]!r}"
                )
            elif not seen[i] and "unseen" not in model.targets[target].calibration:
                row[target] = None
                row["unavailable"][target] = (
                    f"{target} was trained on {len(model.targets[target].devices)} device(s) only: "
                    f"too few to know its error on {names[i]!r}, so no number is given"
                )
            else:
                row[target] = intervals[target][i]
                if row[target] is None:
                    row["unavailable"][target] = "the prediction is not a finite number for this input"
        runtime = row["runtime_ms"]
        if runtime is not None:
            # Runtime is never below the roofline, so this is at most 1 but for the rounding of exp(log t)
            # (1.0000000000000002 at the floor), which min() removes.
            achieved = [
                min(1.0, flops_list[i] / (runtime[key] / 1e3) / peak_flops[i])
                for key in ("value", "high", "low")
            ]
            row["utilization"] = dict(zip(("value", "low", "high"), achieved, strict=True))
            price = (
                inst.price_per_hour_usd
                if inst.price_per_hour_usd is not None
                else specs[names[i]].price_per_hour_usd
            )
            if price is not None:
                row["cost_usd"] = {key: runtime[key] / MS_PER_HOUR * price for key in runtime}
        else:
            row["utilization"] = None
        energy = row["energy_j"]
        if energy is not None and inst.grid_gco2_per_kwh is not None:
            row["co2_g"] = {key: energy[key] / J_PER_KWH * inst.grid_gco2_per_kwh for key in energy}
        elif inst.grid_gco2_per_kwh is not None:
            row["unavailable"]["co2_g"] = "needs an energy prediction, which is unavailable for this device"
        row["roofline"] = rooflines[i]
        row["ood_reasons"] = ood[i]
        row["out_of_distribution"] = bool(ood[i])
        out.append(row)
    return out
