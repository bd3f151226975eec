"""``/v2``: the Open Inference Protocol (KServe / Triton / MLServer REST) beside the native routes.

Each served model is a domain: its native request schema validates the rows an infer request's columns
make, and its native predictor answers them, so both dialects give the same values by construction. The
tensors are derived from the schemas (see :mod:`service.oip.codec`), so a registered domain is served here
with nothing written for it.
Errors answer OIP's ``{"error": ...}`` with the service's ``{"detail": [...]}`` beside it.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from functools import cache
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from starlette.exceptions import HTTPException
from starlette.responses import Response

from service import __version__
from service.api import dispatch, health
from service.core.deps import RegistryDep, Serving, ServingDep, check_batch, require_model, serving_of
from service.core.domain import Domain, RequestError
from service.core.routing import json_body, strict_json
from service.oip import codec, tensors
from service.oip import schemas as oip

MAX_PROBLEMS = 10


class OipRoute(APIRoute):
    """A route whose errors, its own and those of the shared dependencies (503 no model, 413 batch),
    answer in the protocol's error body, which OIP clients read."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def answer(request: Request) -> Response:
            try:
                return await handler(request)
            except oip.TensorError as exc:
                return JSONResponse(oip.error_body(exc.problems), status_code=exc.status)
            except HTTPException as exc:
                detail = (
                    exc.detail if isinstance(exc.detail, list) else [{"field": "path", "reason": exc.detail}]
                )
                problems = [(str(d["field"]), str(d["reason"])) for d in detail[:MAX_PROBLEMS]]
                return JSONResponse(oip.error_body(problems), status_code=exc.status_code)

        return answer


router = APIRouter(prefix="/v2", tags=["v2"], route_class=OipRoute)


def _errors(*status_codes: int) -> dict[int | str, dict[str, Any]]:
    return {code: {"model": oip.V2Error} for code in status_codes}


@dataclass(frozen=True)
class Served:
    """One domain in this dialect: its input tensors (the instance's fields) and dynamic outputs."""

    domain: Domain
    inputs: tuple[tensors.InputSpec, ...]
    dynamic: tuple[str, ...]

    @classmethod
    @cache
    def of(cls, domain: Domain) -> Served:
        return cls(domain, tensors.input_specs(domain.instance), tensors.dynamic_fields(domain.prediction))

    def outputs(self, keys: dict[str, list[str]]) -> tuple[tensors.OutputSpec, ...]:
        return tensors.output_specs(
            self.domain.prediction, tuple((f, tuple(keys.get(f, ()))) for f in self.dynamic)
        )


def _request_problem(exc: RequestError) -> oip.TensorError:
    """A domain's refusal as this dialect's error: a native instance field (``instances.3.device``) as the
    input tensor and row it came from, any other field as the request parameter; 413 stays 413, anything
    else is a bad request (400)."""
    parts = exc.field.split(".")
    status = 413 if exc.status == 413 else 400
    if parts[0] != "instances":
        return oip.bad(f"parameters.{exc.field}", f"parameter {exc.field!r}: {exc}", status)
    if len(parts) >= 3:
        return oip.bad(f"inputs.{parts[2]}.{parts[1]}", f"input {parts[2]!r} row {parts[1]}: {exc}", status)
    return oip.bad("inputs", f"inputs: {exc}", status)


def _resolve(name: str, version: str | None, serving: Serving) -> tuple[Served, Any]:
    """The model of that name, loaded (503 with why not), at that version if one is named (404)."""
    domain = serving.domains.get(name)
    if domain is None:
        known = ", ".join(serving.domains.names)
        raise oip.bad("name", f"model {name!r} is unknown; this server has: {known}", 404)
    served = Served.of(domain)
    model = require_model(serving.snapshot, name, serving.first_start)
    if version is not None and version != model.version:
        raise oip.bad(
            "version",
            f"version {version!r} of model {name!r} is not served; version {model.version!r} is",
            404,
        )
    return served, model


@router.get("/health/live", response_model=oip.Liveness)
async def live() -> dict[str, bool]:
    return {"live": True}


@router.get("/health/ready", response_model=oip.Readiness, responses=_errors(503))
async def ready(request: Request, registry: RegistryDep) -> JSONResponse:
    """Ready exactly when ``/readyz`` is (a model serves); otherwise 503 with its reason."""
    native = await health.readyz(request, registry)
    if native.status_code == 200:
        return JSONResponse({"ready": True})
    reason = str(json.loads(bytes(native.body)).get("reason", "not ready"))
    return JSONResponse(
        {"ready": False, **oip.error_body([("server", reason)])}, status_code=native.status_code
    )


@router.get("", response_model=oip.ServerMetadata)
async def server_metadata() -> dict[str, Any]:
    return {"name": "perfcost", "version": __version__, "extensions": list(oip.EXTENSIONS)}


def _metadata(name: str, served: Served, model: Any) -> dict[str, Any]:
    estimators = sorted({str(t.get("estimator")) for t in model.card.get("targets", {}).values()})
    parameters = {
        key: {"description": info.description or ""}
        | (
            {"required": True}
            if info.is_required()
            else {"default": info.get_default(call_default_factory=True)}
        )
        for key, info in served.domain.request.model_fields.items()
        if key != "instances"
    }
    return {
        "name": name,
        "versions": [model.version],
        "platform": "perfcost/" + "+".join(estimators),
        "inputs": [s.metadata().model_dump() for s in served.inputs],
        "outputs": [s.metadata().model_dump() for s in served.outputs(served.domain.output_keys(model))],
        "parameters": {"request_parameters": parameters, "missing_values": tensors.NAN_NOTE},
    }


@router.get("/models/{name}", response_model=oip.ModelMetadata, responses=_errors(404, 503))
async def model_metadata(name: str, serving: ServingDep) -> dict[str, Any]:
    """Inputs (the instance fields, one column each) and outputs of the served version."""
    return _metadata(name, *_resolve(name, None, serving))


@router.get(
    "/models/{name}/versions/{version}",
    response_model=oip.ModelMetadata,
    responses=_errors(404, 503),
)
async def model_version_metadata(name: str, version: str, serving: ServingDep) -> dict[str, Any]:
    return _metadata(name, *_resolve(name, version, serving))


@router.get("/models/{name}/ready", response_model=oip.Readiness, responses=_errors(404, 503))
async def model_ready(name: str, serving: ServingDep) -> dict[str, Any]:
    _resolve(name, None, serving)
    return {"name": name, "ready": True}


@router.get(
    "/models/{name}/versions/{version}/ready",
    response_model=oip.Readiness,
    responses=_errors(404, 503),
)
async def model_version_ready(name: str, version: str, serving: ServingDep) -> dict[str, Any]:
    _resolve(name, version, serving)
    return {"name": name, "ready": True}


async def _infer(http_request: Request, name: str, version: str | None, serving: Serving) -> Response:
    served, model = _resolve(name, version, serving)
    header, binary = codec.split_body(
        await http_request.body(), http_request.headers.get(codec.HEADER_LENGTH)
    )
    try:
        data = strict_json(header)
    except json.JSONDecodeError as exc:
        raise oip.bad("body", f"the JSON header is not valid JSON: {exc.msg}") from exc
    request = codec.parse_request(data)
    n = codec.check_inputs(request, served.inputs, name)
    check_batch(n, serving.settings)
    parameters = codec.model_parameters(request, served.domain.request, name)
    rows = codec.instance_rows(request, binary, served.inputs, n)
    native = codec.native_request(served.domain.request, rows, parameters)
    try:
        if served.domain.precheck is not None:
            served.domain.precheck(native, serving)
        predictions = await dispatch.predict(served.domain, native, model, serving)
    except RequestError as exc:
        raise _request_problem(exc) from exc
    keys = {
        f: list(dict.fromkeys(k for row in predictions for k in row.get(f) or {})) for f in served.dynamic
    }
    chosen = codec.selected_outputs(request, served.outputs(keys), name)
    head = {"model_name": name, "model_version": model.version, "id": request.id or uuid.uuid4().hex}
    columns = [(spec, as_binary, tensors.output_column(spec, predictions)) for spec, as_binary in chosen]
    body, header_length = codec.encode_response(head, columns)
    if header_length is None:
        return Response(body, media_type="application/json")
    return Response(
        body, media_type="application/octet-stream", headers={codec.HEADER_LENGTH: str(header_length)}
    )


INFER_BODY = json_body(oip.InferRequest)
INFER_ERRORS = _errors(400, 404, 413, 503)


@router.post(
    "/models/{name}/infer", openapi_extra=INFER_BODY, response_model=oip.InferResponse, responses=INFER_ERRORS
)
async def infer(http_request: Request, name: str) -> Response:
    """Predict the rows the input columns make. With Triton's binary tensor data extension the body is
    the JSON header (``Inference-Header-Content-Length`` bytes) followed by the binary inputs."""
    return await _infer(http_request, name, None, serving_of(http_request))


@router.post(
    "/models/{name}/versions/{version}/infer",
    openapi_extra=INFER_BODY,
    response_model=oip.InferResponse,
    responses=INFER_ERRORS,
)
async def infer_version(http_request: Request, name: str, version: str) -> Response:
    return await _infer(http_request, name, version, serving_of(http_request))
