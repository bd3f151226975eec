"""``/v1/gemm`` beyond predict: which device and configuration to run a workload on."""

from __future__ import annotations

from functools import partial

from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from service.core.deps import ServingDep, require_model
from service.core.routing import json_body, read_json_body
from service.core.schemas import error_responses
from service.domains.gemm import runtime
from service.domains.gemm import search as gemm_search
from service.domains.gemm.schemas import GemmSearchRequest, GemmSearchResponse

router = APIRouter()


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
    model = require_model(serving.snapshot, "gemm", serving.first_start)
    run = partial(
        gemm_search.search, model=model, catalog=serving.catalog, max_rows=serving.settings.max_search_rows
    )
    try:
        answer = await run_in_threadpool(run, request)
    except runtime.UnknownDeviceError as exc:
        raise HTTPException(
            status_code=404, detail=[{"field": f"devices.{exc.index}", "reason": str(exc)}]
        ) from exc
    except gemm_search.SearchTooLarge as exc:
        raise HTTPException(status_code=413, detail=[{"field": "workload", "reason": str(exc)}]) from exc
    return JSONResponse(answer)
