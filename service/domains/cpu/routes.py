"""``/v1/cpu``: SPEC CPU2017 benchmark ratios and suite scores of CPU systems."""

from __future__ import annotations

from functools import partial

from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from service.core.batching import MICRO_BATCH_MAX_INSTANCES
from service.core.deps import SnapshotDep, check_batch, require_model, serving_of
from service.core.routing import json_body, read_json_body
from service.core.schemas import error_responses
from service.domains.cpu import runtime as cpu
from service.domains.cpu.schemas import CpuBenchmarksResponse, CpuPredictRequest, CpuPredictResponse

router = APIRouter(prefix="/v1/cpu", tags=["cpu"])
MODEL = "cpu"


@router.post(
    "/predict",
    openapi_extra=json_body(CpuPredictRequest),
    response_model=CpuPredictResponse,
    responses=error_responses(413, 422, 503),
)
async def predict(http_request: Request) -> JSONResponse:
    serving = serving_of(http_request)
    request = await read_json_body(http_request, CpuPredictRequest)
    check_batch(len(request.instances), serving.settings)
    model = require_model(serving.snapshot, MODEL, serving.first_start)
    try:
        cpu.get_suite(model, request.suite)
    except cpu.UnknownSuiteError as exc:
        raise HTTPException(status_code=422, detail=[{"field": "suite", "reason": str(exc)}]) from exc
    try:
        cpu.check_instances(request.instances)
    except cpu.InvalidSpecError as exc:
        raise HTTPException(status_code=422, detail=[{"field": exc.field, "reason": str(exc)}]) from exc
    run = partial(cpu.predict, coverage=request.coverage, suite=request.suite, model=model)
    if len(request.instances) > MICRO_BATCH_MAX_INSTANCES:
        rows = await run_in_threadpool(run, request.instances)
    else:
        rows = await serving.batcher.submit(
            (MODEL, id(model), request.coverage, request.suite), request.instances, run
        )
    return JSONResponse(
        {"model": model.name, "version": model.version, "suite": request.suite, "predictions": rows}
    )


@router.get("/benchmarks", response_model=CpuBenchmarksResponse, responses=error_responses(503))
async def benchmarks(snapshot: SnapshotDep) -> JSONResponse:
    return JSONResponse(cpu.benchmarks(require_model(snapshot, MODEL)))
