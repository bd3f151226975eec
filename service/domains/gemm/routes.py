"""``/v1/gemm``: runtime, power, energy, utilization and cost of GEMM configurations."""

from __future__ import annotations

from functools import partial

from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from service.core.batching import MICRO_BATCH_MAX_INSTANCES
from service.core.deps import ServingDep, check_batch, require_model, serving_of
from service.core.routing import json_body, read_json_body
from service.core.schemas import error_responses
from service.domains.gemm import runtime as gemm
from service.domains.gemm import search as gemm_search
from service.domains.gemm.schemas import (
    GemmPredictRequest,
    GemmPredictResponse,
    GemmSearchRequest,
    GemmSearchResponse,
)

router = APIRouter(prefix="/v1/gemm", tags=["gemm"])
MODEL = "gemm"


def unknown_device(exc: gemm.UnknownDeviceError, field: str) -> HTTPException:
    return HTTPException(status_code=404, detail=[{"field": field, "reason": str(exc)}])


@router.post(
    "/predict",
    openapi_extra=json_body(GemmPredictRequest),
    response_model=GemmPredictResponse,
    responses=error_responses(404, 413, 422, 503),
)
async def predict(http_request: Request) -> JSONResponse:
    serving = serving_of(http_request)
    request = await read_json_body(http_request, GemmPredictRequest)
    check_batch(len(request.instances), serving.settings)
    model = require_model(serving.snapshot, MODEL, serving.first_start)
    catalog = serving.catalog
    try:
        # Devices are resolved per request first, so an unknown one fails only its own request.
        gemm.resolve_devices(request.instances, catalog, gemm.model_devices(model))
    except gemm.UnknownDeviceError as exc:
        raise unknown_device(exc, f"instances.{exc.index}.device") from exc
    run = partial(gemm.predict, coverage=request.coverage, model=model, catalog=catalog)
    if len(request.instances) > MICRO_BATCH_MAX_INSTANCES:
        rows = await run_in_threadpool(run, request.instances)
    else:
        rows = await serving.batcher.submit((id(model), request.coverage), request.instances, run)
    # Rows are built by the predictor in the documented shape; serialising them directly skips a second
    # validation pass that costs ~40% of a 10,000-instance request.
    return JSONResponse({"model": model.name, "version": model.version, "predictions": rows})


@router.post(
    "/search",
    openapi_extra=json_body(GemmSearchRequest),
    response_model=GemmSearchResponse,
    responses=error_responses(404, 413, 422, 503),
)
async def search(http_request: Request, serving: ServingDep) -> JSONResponse:
    """Which device and configuration runs a workload fastest, with the least energy or at the lowest
    cost, within power, cost and time limits: candidates ranked, and why the others were excluded."""
    request = await read_json_body(http_request, GemmSearchRequest)
    model = require_model(serving.snapshot, MODEL, serving.first_start)
    run = partial(
        gemm_search.search, model=model, catalog=serving.catalog, max_rows=serving.settings.max_search_rows
    )
    try:
        answer = await run_in_threadpool(run, request)
    except gemm.UnknownDeviceError as exc:
        raise unknown_device(exc, f"devices.{exc.index}") from exc
    except gemm_search.SearchTooLarge as exc:
        raise HTTPException(status_code=413, detail=[{"field": "workload", "reason": str(exc)}]) from exc
    return JSONResponse(answer)
