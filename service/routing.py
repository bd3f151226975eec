"""Strict JSON bodies for every prediction route.

The standard parser silently keeps the last of duplicated keys, raises a RecursionError (a 500) on deeply
nested input and a UnicodeDecodeError on non-UTF-8 bytes. Here each of those is a JSON decode error, which
FastAPI answers with a 422 naming the body and the reason.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Coroutine
from typing import Any

from fastapi import Request, Response
from fastapi.routing import APIRoute


def _no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise ValueError(f"duplicated key {key!r}")
        out[key] = value
    return out


class StrictJSONRequest(Request):
    async def json(self) -> Any:
        if not hasattr(self, "_json"):
            body = await self.body()
            try:
                text = body.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise json.JSONDecodeError(f"body is not UTF-8 ({exc.reason})", "", exc.start) from exc
            try:
                self._json = json.loads(text, object_pairs_hook=_no_duplicate_keys)
            except RecursionError as exc:
                raise json.JSONDecodeError("JSON is nested too deeply", text, 0) from exc
            except ValueError as exc:
                if isinstance(exc, json.JSONDecodeError):
                    raise
                raise json.JSONDecodeError(str(exc), text, 0) from exc
        return self._json


class StrictJSONRoute(APIRoute):
    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def strict_handler(request: Request) -> Response:
            return await handler(StrictJSONRequest(request.scope, request.receive))

        return strict_handler
