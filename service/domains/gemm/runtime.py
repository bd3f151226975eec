"""GEMM predictions: validated instances → features → model targets → response rows.

Runtime is predicted for any device (flagged out-of-distribution when the device or the configuration
lies outside the training data). Power and energy are predicted only on devices where they were
measured; elsewhere they are null with the reason, never an invented number. Utilization, cost and CO2
are derived from runtime and energy with their intervals carried through.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from service.core.devices import DeviceCatalog, DeviceError, DeviceSpec
from service.core.model import TabularModel
from service.core.targets import Prediction
from service.domains.gemm import features
from service.domains.gemm.cards import GemmCard
from service.domains.gemm.profile import beyond_trained_sizes, ood_reasons
from service.domains.gemm.schemas import GemmInstance

TARGETS = ("runtime_ms", "power_w", "energy_j")
# Reported only on devices where they were measured (null with the reason elsewhere), so not predicted
# for other devices' rows at all: for a request on any other GPU, two forests fewer to run.
DEVICE_BOUND_TARGETS = ("power_w", "energy_j")
MS_PER_HOUR = 3.6e6
J_PER_KWH = 3.6e6
CONFIG_FIELDS = features.CONFIG_COLUMNS


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


def resolve_names(
    requested: Sequence[str | DeviceSpec], catalog: DeviceCatalog, trained: dict[str, DeviceSpec]
) -> tuple[list[str], dict[str, DeviceSpec]]:
    """Per row the device's canonical name, and the specs by that name; each row names a device or gives
    its inline spec. :class:`UnknownDeviceError` (with the row's index) for a name nobody knows."""
    names: list[str] = []
    specs: dict[str, DeviceSpec] = {}
    by_request_name: dict[str, DeviceSpec] = {}  # rows of a batch mostly name the same few devices
    trained_lower = {n.lower(): s for n, s in trained.items()}
    for i, item in enumerate(requested):
        if isinstance(item, DeviceSpec):
            spec = item
        else:
            found = by_request_name.get(item)
            if found is None:
                try:
                    found = lookup_device(item, catalog, trained_lower)
                except DeviceError as exc:
                    raise UnknownDeviceError(i, str(exc)) from exc
            by_request_name[item] = spec = found
        names.append(spec.name)
        specs[spec.name] = spec
    return names, specs


def resolve_devices(
    instances: list[GemmInstance], catalog: DeviceCatalog, trained: dict[str, DeviceSpec]
) -> tuple[list[str], dict[str, DeviceSpec]]:
    requested: list[str | DeviceSpec] = []
    for inst in instances:
        if inst.device_spec is not None:
            requested.append(inst.device_spec)
        else:
            assert inst.device is not None
            requested.append(inst.device)
    return resolve_names(requested, catalog, trained)


@dataclass
class Bounds:
    """Per row value, low and high of one quantity; NaN where it is unavailable."""

    value: np.ndarray
    low: np.ndarray
    high: np.ndarray

    @classmethod
    def missing(cls, n: int) -> Bounds:
        return cls(np.full(n, np.nan), np.full(n, np.nan), np.full(n, np.nan))

    def per(self, unit: float, rate: np.ndarray) -> Bounds:
        """Each bound in ``unit``s times a rate per unit (NaN where the rate is)."""
        return Bounds(self.value / unit * rate, self.low / unit * rate, self.high / unit * rate)


@dataclass
class GemmColumns:
    """A batch's predictions column by column: what the API turns into rows and ``perfcost score`` into a
    table, computed here once for both. Absent quantities are NaN in ``values`` and, where the response
    states why, the reason in ``unavailable`` (per row, target -> reason, in the response's order)."""

    values: dict[str, Bounds]
    unavailable: list[dict[str, str]]
    roofline: dict[str, np.ndarray]
    ood_reasons: list[list[str]]


def _target_bounds(
    results: dict[str, tuple[Prediction, np.ndarray]], model: TabularModel, names: list[str]
) -> tuple[dict[str, Bounds], list[dict[str, str]]]:
    """Runtime, power and energy per row, NaN where the response gives null, and why."""
    n = len(names)
    label = f"{model.name} {model.version}"
    values: dict[str, Bounds] = {}
    unavailable: list[dict[str, str]] = [{} for _ in range(n)]
    for target in TARGETS:
        if target not in results:
            values[target] = Bounds.missing(n)
            for reasons in unavailable:
                reasons[target] = f"model {label} has no {target} model"
            continue
        pred, seen = results[target]
        finite = np.isfinite(pred.value) & np.isfinite(pred.low) & np.isfinite(pred.high)
        bounds = Bounds(pred.value.copy(), pred.low.copy(), pred.high.copy())
        # Device-bound targets are never given off their devices; the others there only with held-out-device
        # calibration, without which the error on a new device is unknown.
        bound = target in DEVICE_BOUND_TARGETS or "unseen" not in model.targets[target].calibration
        no_number = ~seen if bound else np.zeros(n, dtype=bool)
        for i in np.flatnonzero(no_number | ~finite):
            if not no_number[i]:
                unavailable[i][target] = "the prediction is not a finite number for this input"
            elif target in DEVICE_BOUND_TARGETS:
                measured_on = ", ".join(model.targets[target].devices)
                unavailable[i][target] = (
                    f"{target} was measured only on {measured_on}; no model for {names[i]!r}"
                )
            else:
                unavailable[i][target] = (
                    f"{target} was trained on {len(model.targets[target].devices)} device(s) only: "
                    f"too few to know its error on {names[i]!r}, so no number is given"
                )
        gone = no_number | ~finite
        for column in (bounds.value, bounds.low, bounds.high):
            column[gone] = np.nan
        values[target] = bounds
    return values, unavailable


def predict_columns(
    rows: dict[str, list[Any]],
    specs: dict[str, DeviceSpec],
    coverage: float,
    model: TabularModel,
    prices: np.ndarray,
    grid: np.ndarray,
) -> GemmColumns:
    """Predictions for rows of :data:`CONFIG_FIELDS` plus ``device`` (canonical names, resolved into
    ``specs``); ``prices`` (USD per hour, NaN: the device's own or none) and ``grid`` (gCO2 per kWh, NaN:
    none) per row."""
    trained = model_devices(model)
    names = rows["device"]
    computed = features.featurize(rows, specs)
    beyond = beyond_trained_sizes(names, computed.flops, model)
    results = model.predict(computed.matrix, coverage, names, only_seen=DEVICE_BOUND_TARGETS, beyond=beyond)
    values, unavailable = _target_bounds(results, model, names)
    runtime = values["runtime_ms"]
    # Runtime is never below the roofline, so this is at most 1 but for the rounding of exp(log t)
    # (1.0000000000000002 at the floor), which the minimum removes. A longer runtime is a lower utilization.
    peak = computed.peak_gflops * 1e9
    values["utilization"] = Bounds(
        *(
            np.minimum(1.0, computed.flops / (t / 1e3) / peak)
            for t in (runtime.value, runtime.high, runtime.low)
        )
    )
    device_price = np.array([np.nan if (p := specs[d].price_per_hour_usd) is None else p for d in names])
    price = np.where(np.isnan(prices), device_price, prices)
    values["cost_usd"] = runtime.per(MS_PER_HOUR, price)
    energy = values["energy_j"]
    values["co2_g"] = energy.per(J_PER_KWH, grid)
    for i in np.flatnonzero(~np.isnan(grid) & np.isnan(energy.value)):
        unavailable[i]["co2_g"] = "needs an energy prediction, which is unavailable for this device"
    roofline = {
        "flops": computed.flops,
        "bytes": computed.bytes,
        "peak_gflops": computed.peak_gflops,
        "bandwidth_gbps": computed.bandwidth_gbps,
        "peak_unit": np.array(computed.units, dtype=object),
        "peak_fallback": np.array(computed.fallbacks, dtype=object),
    }
    ood = ood_reasons(rows, computed.flops, beyond, model, trained)
    for row, why in enumerate(computed.fallbacks):
        if why is not None:
            ood[row].append(why)
    return GemmColumns(values, unavailable, roofline, ood)


def optional_floats(values: list[float | None]) -> np.ndarray:
    """Optional per-row figures as floats, NaN where unset."""
    return np.array([np.nan if v is None else v for v in values], dtype=float)


def _interval(bounds: Bounds, i: int) -> dict[str, float] | None:
    value = float(bounds.value[i])
    if math.isnan(value):
        return None
    return {"value": value, "low": float(bounds.low[i]), "high": float(bounds.high[i])}


def predict(
    instances: list[GemmInstance], coverage: float, model: TabularModel, catalog: DeviceCatalog
) -> list[dict[str, Any]]:
    """The API's response rows for validated instances (see
    :class:`~service.domains.gemm.schemas.GemmPrediction`)."""
    names, specs = resolve_devices(instances, catalog, model_devices(model))
    rows: dict[str, list[Any]] = {col: [getattr(inst, col) for inst in instances] for col in CONFIG_FIELDS}
    rows["device"] = names
    prices = optional_floats([inst.price_per_hour_usd for inst in instances])
    grid = optional_floats([inst.grid_gco2_per_kwh for inst in instances])
    columns = predict_columns(rows, specs, coverage, model, prices, grid)
    values = columns.values
    roofline = {key: column.tolist() for key, column in columns.roofline.items()}
    out = []
    for i in range(len(instances)):
        row: dict[str, Any] = {"unavailable": columns.unavailable[i]}
        for target in TARGETS:
            row[target] = _interval(values[target], i)
        row["utilization"] = _interval(values["utilization"], i)
        for derived in ("cost_usd", "co2_g"):
            interval = _interval(values[derived], i)
            if interval is not None:
                row[derived] = interval
        row["roofline"] = {key: column[i] for key, column in roofline.items()}
        row["ood_reasons"] = columns.ood_reasons[i]
        row["out_of_distribution"] = bool(columns.ood_reasons[i])
        out.append(row)
    return out
