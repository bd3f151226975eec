"""``/v1/cpu`` beyond predict: the suites and benchmarks the served model answers."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from service.core.deps import SnapshotDep, require_model
from service.core.schemas import error_responses
from service.domains.cpu import runtime
from service.domains.cpu.schemas import CpuBenchmarksResponse

router = APIRouter()


@router.get("/benchmarks", response_model=CpuBenchmarksResponse, responses=error_responses(503))
async def benchmarks(snapshot: SnapshotDep) -> JSONResponse:
    return JSONResponse(runtime.benchmarks(require_model(snapshot, "cpu")))
