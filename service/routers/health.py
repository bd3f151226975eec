"""Liveness and readiness, kept separate: alive means the process answers; ready means models serve."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from service.deps import RegistryDep

router = APIRouter(tags=["health"])


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    return {"status": "alive"}


@router.get("/readyz")
async def readyz(registry: RegistryDep) -> JSONResponse:
    status = registry.status()
    if status["loaded"]:
        return JSONResponse({"status": "ready", **status})
    reason = "no model is loaded"
    if not status["refused"]:
        reason += f": {registry.model_dir} holds no published model (run 'perfcost train gemm')"
    return JSONResponse({"status": "not ready", "reason": reason, **status}, status_code=503)
