"""``/v1/<domain>``: each registered domain's native routes, built from its contract.

``POST /v1/<name>/predict`` reads the domain's request schema, and answers the model and version that
served it, the domain's own fields and one prediction row per instance; the domain's further routes
(GEMM's search, CPU's benchmark list) are included under the same prefix.
"""

from __future__ import annotations

from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import JSONResponse

from service.api import dispatch
from service.core.deps import check_batch, serving_of
from service.core.domain import Domain, RequestError
from service.core.routing import json_body, read_json_body
from service.core.schemas import error_responses


def router(domain: Domain) -> APIRouter:
    """The domain's ``/v1/<name>`` routes."""
    routes = APIRouter(prefix=f"/v1/{domain.name}", tags=[domain.name])

    async def predict(http_request: Request) -> JSONResponse:
        serving = serving_of(http_request)
        request = await read_json_body(http_request, domain.request)
        check_batch(len(request.instances), serving.settings)  # type: ignore[attr-defined]  # Domain checks it has them
        try:
            model = dispatch.model_for(domain, request, serving)
            rows = await dispatch.predict(domain, request, model, serving)
        except RequestError as exc:
            raise HTTPException(exc.status, detail=[{"field": exc.field, "reason": str(exc)}]) from exc
        # Rows are built by the predictor in the documented shape; serialising them directly skips a second
        # validation pass that costs ~40% of a 10,000-instance request.
        return JSONResponse(
            {
                "model": model.name,
                "version": model.version,
                **domain.answer(request, model),
                "predictions": rows,
            }
        )

    routes.add_api_route(
        "/predict",
        predict,
        methods=["POST"],
        openapi_extra=json_body(domain.request),
        response_model=domain.response,
        responses=error_responses(*domain.errors),
    )
    if domain.routes is not None:
        routes.include_router(domain.routes)
    return routes
