"""Liveness and readiness, kept separate: alive means the process answers; ready means models serve."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from service.core.deps import RegistryDep, unloaded_reason
from service.core.first_start import FirstStart

router = APIRouter(tags=["health"])


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    return {"status": "alive"}


@router.get("/readyz")
async def readyz(request: Request, registry: RegistryDep) -> JSONResponse:
    """Ready when a model serves; per domain, what serves or why nothing does (training on first start,
    refused, or never published), so a 503 from a prediction route is explained here."""
    status = registry.status()
    snapshot = registry.snapshot
    first_start: FirstStart = request.app.state.first_start
    domains = {}
    for name in registry.domains.names:
        model = snapshot.get(name)
        if model is None:
            domains[name] = first_start.reason(name) or unloaded_reason(snapshot, name)
        else:
            stale = first_start.stale(name)
            domains[name] = f"serving version {model.version}" + (f"; out of date: {stale}" if stale else "")
    body = {**status, "domains": domains}
    training = first_start.status()
    if training is not None:
        body["first_start"] = training
    if status["loaded"]:
        return JSONResponse({"status": "ready", **body})
    reason = "no model is loaded"
    if not status["refused"] and training is None:
        reason += f": {registry.model_dir} holds no published model (run 'perfcost train gemm')"
    elif training is not None:
        reason += ": the default models are training (see first_start)"
    return JSONResponse({"status": "not ready", "reason": reason, **body}, status_code=503)
