"""``POST /v1/gemm/search``: the inverse question. Every candidate (device x configuration) is priced on
the whole workload by the same predictions ``/v1/gemm/predict`` serves, then ranked by the objective;
candidates without the figure the objective or a constraint needs, or over a constraint, are excluded
with the reason."""

from __future__ import annotations

from typing import Any

from service.core.devices import DeviceCatalog, DeviceError
from service.core.model import TabularModel
from service.domains.gemm import runtime as gemm
from service.domains.gemm.schemas import GemmConfiguration, GemmInstance, GemmSearchRequest

OBJECTIVE_FIELD = {"time": "time_ms", "energy": "energy_j", "cost": "cost_usd"}
BOUNDS = ("value", "low", "high")


class SearchTooLarge(ValueError):
    """More predictions than the server allows one search (PERFCOST_MAX_SEARCH_ROWS)."""


def candidate_devices(request: GemmSearchRequest, catalog: DeviceCatalog, model: TabularModel) -> list[str]:
    """The devices to consider: the request's (each checked: :class:`gemm.UnknownDeviceError` with its
    index), or the whole catalog."""
    if request.devices is None:
        return sorted(d.name for d in catalog)
    trained_lower = {n.lower(): s for n, s in gemm.model_devices(model).items()}
    for i, name in enumerate(request.devices):
        try:
            gemm.lookup_device(name, catalog, trained_lower)
        except DeviceError as exc:
            raise gemm.UnknownDeviceError(i, str(exc)) from exc
    return list(request.devices)


def instances(
    request: GemmSearchRequest, devices: list[str], max_rows: int
) -> tuple[list[GemmInstance], list[tuple[str, GemmConfiguration]]]:
    """One request instance per (candidate, layer), candidates in order; validated parts are combined
    without validating again."""
    candidates = [(device, config) for device in devices for config in request.configurations]
    rows = len(candidates) * len(request.workload)
    if rows > max_rows:
        raise SearchTooLarge(
            f"{len(candidates)} candidates x {len(request.workload)} layers = {rows} predictions exceed the "
            f"limit of {max_rows} per search (PERFCOST_MAX_SEARCH_ROWS); narrow devices or configurations"
        )
    layers = [layer.model_dump(exclude={"count"}) for layer in request.workload]
    out = [
        GemmInstance.model_construct(**layer, **config.model_dump(exclude_none=True), device=device)
        for device, config in candidates
        for layer in layers
    ]
    return out, candidates


def _total(rows: list[dict[str, Any]], counts: list[int], target: str) -> dict[str, float] | None:
    """The workload's total of one target (each layer times its count), or None if a layer lacks it."""
    if any(row[target] is None for row in rows):
        return None
    return {b: sum(row[target][b] * c for row, c in zip(rows, counts, strict=True)) for b in BOUNDS}


def _price(rows: list[dict[str, Any]], counts: list[int]) -> dict[str, Any]:
    power = [row["power_w"] for row in rows]
    reasons = [f"layer {i}: {r}" for i, row in enumerate(rows) for r in row["ood_reasons"]]
    return {
        "time_ms": _total(rows, counts, "runtime_ms"),
        "energy_j": _total(rows, counts, "energy_j"),
        "cost_usd": _total(rows, counts, "cost_usd") if all("cost_usd" in row for row in rows) else None,
        "max_power_w": None if None in power else {b: max(p[b] for p in power) for b in BOUNDS},
        "out_of_distribution": bool(reasons),
        "ood_reasons": reasons,
    }


def _exclusion(priced: dict[str, Any], request: GemmSearchRequest, first: dict[str, Any]) -> str | None:
    """Why a priced candidate cannot be ranked (None: it can)."""
    if priced["time_ms"] is None:
        return f"no runtime: {first['unavailable'].get('runtime_ms', 'not predicted')}"
    field = OBJECTIVE_FIELD[request.objective]
    if priced[field] is None:
        why = (
            first["unavailable"].get("energy_j")
            if field == "energy_j"
            else "the device has no price per hour"
        )
        return f"objective {request.objective} needs {field}, unavailable: {why}"
    limits = request.constraints
    for name, limit, figure in (
        ("max_power_w", limits.max_power_w, "max_power_w"),
        ("max_cost_usd", limits.max_cost_usd, "cost_usd"),
        ("max_time_ms", limits.max_time_ms, "time_ms"),
    ):
        if limit is None:
            continue
        if priced[figure] is None:
            return f"constraint {name} needs {figure}, which is unavailable for this device"
        if priced[figure]["value"] > limit:
            return f"{figure} {priced[figure]['value']:.4g} exceeds {name}={limit:g}"
    return None


def search(
    request: GemmSearchRequest, model: TabularModel, catalog: DeviceCatalog, max_rows: int
) -> dict[str, Any]:
    devices = candidate_devices(request, catalog, model)
    batch, candidates = instances(request, devices, max_rows)
    rows = gemm.predict(batch, request.coverage, model, catalog)
    counts = [layer.count for layer in request.workload]
    n_layers = len(counts)
    ranked, excluded = [], []
    for i, (device, config) in enumerate(candidates):
        layer_rows = rows[i * n_layers : (i + 1) * n_layers]
        priced = _price(layer_rows, counts)
        shown = config.model_dump(exclude_none=True)
        why = _exclusion(priced, request, layer_rows[0])
        if why is None:
            ranked.append({"device": device, "configuration": shown, **priced})
        else:
            excluded.append({"device": device, "configuration": shown, "reason": why})
    field = OBJECTIVE_FIELD[request.objective]
    ranked.sort(key=lambda c: c[field]["value"])
    return {
        "model": model.name,
        "version": model.version,
        "objective": request.objective,
        "candidates_considered": len(candidates),
        "ranked": ranked[: request.top],
        "excluded": excluded,
    }
