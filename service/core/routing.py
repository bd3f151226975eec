"""JSON request bodies of the prediction routes: read strictly, validated once, documented in OpenAPI.

A prediction route reads its body with :func:`read_json_body` instead of declaring it as a FastAPI body
parameter. FastAPI's own body path costs more than the rest of a one-instance request outside the model
(16-client p50 on this 2-core machine: 6.5 → 5.4 ms without it), and its standard parser silently keeps
the last of duplicated keys, raises a RecursionError (a 500) on deeply nested input and a
UnicodeDecodeError on non-UTF-8 bytes. Here each of those is a 422 naming the body and the reason, the
same shape as every other validation error. :func:`json_body` documents the body in OpenAPI, and
:func:`add_body_schemas` adds the models' schemas to the app's document, so ``/docs`` is unchanged.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any, TypeVar

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ValidationError

ModelT = TypeVar("ModelT", bound=BaseModel)

# Request models of the routes that read their own body, by schema name (filled by ``json_body``).
BODY_MODELS: dict[str, type[BaseModel]] = {}
SCHEMA_REF = "#/components/schemas/{model}"


def _no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out = dict(pairs)
    if len(out) != len(pairs):  # the dict is built in C; only a body with a duplicate pays for the search
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise ValueError(f"duplicated key {key!r}")
            seen.add(key)
    return out


def strict_json(body: bytes) -> Any:
    """Decode a JSON document; anything but well-formed UTF-8 JSON with unique keys is a JSONDecodeError."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise json.JSONDecodeError(f"body is not UTF-8 ({exc.reason})", "", exc.start) from exc
    try:
        return json.loads(text, object_pairs_hook=_no_duplicate_keys)
    except RecursionError as exc:
        raise json.JSONDecodeError("JSON is nested too deeply", text, 0) from exc
    except ValueError as exc:
        if isinstance(exc, json.JSONDecodeError):
            raise
        raise json.JSONDecodeError(str(exc), text, 0) from exc


def _body_error(message: str, reason: str, **extra: Any) -> RequestValidationError:
    """A 422 on the body as a whole (the app's handler reports ``message: reason`` for the field "body")."""
    return RequestValidationError(
        [{"type": "json_invalid", "loc": ("body",), "msg": message, "ctx": {"error": reason}}], **extra
    )


def _is_json(content_type: str) -> bool:
    media = content_type.split(";", 1)[0].strip().lower()
    return media == "application/json" or (media.startswith("application/") and media.endswith("+json"))


async def read_json_body(request: Request, model: type[ModelT]) -> ModelT:
    """The request's body as ``model``; a RequestValidationError (422) naming the field otherwise."""
    content_type = request.headers.get("content-type", "")
    if not _is_json(content_type):
        raise _body_error(
            "unsupported media type",
            f"expected Content-Type application/json, got {content_type or 'none'!r}",
        )
    body = await request.body()
    if not body.strip():
        raise _body_error("empty body", "the body is empty; send a JSON object")
    try:
        data = strict_json(body)
    except json.JSONDecodeError as exc:
        raise _body_error("JSON decode error", exc.msg, body=exc.doc) from exc
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        errors = [{**e, "loc": ("body", *e["loc"])} for e in exc.errors(include_url=False)]
        raise RequestValidationError(errors, body=data) from exc


def json_body(model: type[BaseModel]) -> dict[str, Any]:
    """``openapi_extra`` for a route that reads ``model`` with :func:`read_json_body`."""
    BODY_MODELS[model.__name__] = model
    ref = SCHEMA_REF.format(model=model.__name__)
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": {"$ref": ref}}}}}


def add_body_schemas(app: FastAPI) -> Callable[[], dict[str, Any]]:
    """An ``app.openapi`` that also holds the schemas of :data:`BODY_MODELS` (and the models they use)."""
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            document = generate()
            schemas = document.setdefault("components", {}).setdefault("schemas", {})
            for name, model in BODY_MODELS.items():
                schema = model.model_json_schema(ref_template=SCHEMA_REF)
                for sub_name, sub_schema in schema.pop("$defs", {}).items():
                    schemas.setdefault(sub_name, sub_schema)
                schemas[name] = schema
            app.openapi_schema = document
        return app.openapi_schema

    return openapi
