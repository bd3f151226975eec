"""``/v1/mlir``: runtime, instructions, vector registers, spills and utilization of MLIR programs."""

from __future__ import annotations

from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from service.core.deps import check_batch, require_model, serving_of
from service.core.routing import json_body, read_json_body
from service.core.schemas import error_responses
from service.domains.mlir import runtime as mlir
from service.domains.mlir.schemas import MlirPredictRequest, MlirPredictResponse

router = APIRouter(prefix="/v1/mlir", tags=["mlir"])
MODEL = "mlir"
# Scanning text costs ~1 ms per 10 KB; beyond this many bytes a request leaves the event loop.
THREADPOOL_BYTES = 256 * 1024


@router.post(
    "/predict",
    openapi_extra=json_body(MlirPredictRequest),
    response_model=MlirPredictResponse,
    responses=error_responses(413, 422, 503),
)
async def predict(http_request: Request) -> JSONResponse:
    serving = serving_of(http_request)
    request = await read_json_body(http_request, MlirPredictRequest)
    check_batch(len(request.instances), serving.settings)
    try:
        mlir.check_instances(request.instances, serving.settings.max_program_bytes)
    except mlir.ProgramError as exc:
        raise HTTPException(
            status_code=exc.status, detail=[{"field": f"instances.{exc.index}.mlir", "reason": str(exc)}]
        ) from exc
    model = require_model(serving.snapshot, MODEL, serving.first_start)
    size = sum(len(inst.mlir) for inst in request.instances)
    if size > THREADPOOL_BYTES:
        rows = await run_in_threadpool(mlir.predict, request.instances, request.coverage, model)
    else:
        rows = mlir.predict(request.instances, request.coverage, model)
    return JSONResponse(
        {"model": model.name, "version": model.version, "device": mlir.device(model), "predictions": rows}
    )
