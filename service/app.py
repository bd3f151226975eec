"""The FastAPI application, built by a factory so tests and workers inject their own settings."""

from __future__ import annotations

import asyncio
import ctypes
import gc
import logging
import signal
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, MutableMapping
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from fastapi_offline import FastAPIOffline
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response

from service import __version__
from service.api import health, models, v1, v2
from service.core.batching import MicroBatcher
from service.core.devices import DeviceCatalog
from service.core.domain import Domains
from service.core.first_start import FirstStart
from service.core.registry import ModelRegistry
from service.core.routing import add_body_schemas
from service.core.settings import Settings
from service.domains import DOMAINS

log = logging.getLogger(__name__)
WEB = Path(__file__).resolve().parent / "web"

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


class Metrics:
    """Prometheus metrics of one app (own registry, so several apps in one process do not collide)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "perfcost_requests", "HTTP requests", ["route", "method", "status"], registry=self.registry
        )
        self.latency = Histogram(
            "perfcost_request_seconds",
            "Request latency",
            ["route", "method"],
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 10),
            registry=self.registry,
        )
        self.model_info = Gauge(
            "perfcost_model_loaded", "Loaded model versions", ["model", "version"], registry=self.registry
        )
        # Label children per (route, method, status): ``labels()`` takes a lock and builds its key on every
        # call (3-4% of a one-instance request's server time). Routes are templates, so the set is bounded.
        self._children: dict[tuple[str, str, int], tuple[Any, Any]] = {}

    def record(self, route: str, method: str, status: int, seconds: float) -> None:
        key = (route, method, status)
        children = self._children.get(key)
        if children is None:
            children = self.requests.labels(route, method, str(status)), self.latency.labels(route, method)
            self._children[key] = children
        children[0].inc()
        children[1].observe(seconds)


class LimitsAndMetrics:
    """Pure ASGI middleware: rejects bodies over the limit (413), answers 503 when a request outlives its
    time budget before its response started, and records count and latency per route."""

    def __init__(self, app: ASGIApp, max_body: int, timeout_s: float, metrics: Metrics) -> None:
        self.app = app
        self.max_body = max_body
        self.timeout_s = timeout_s
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status_holder = {"status": 500}
        headers = dict(scope.get("headers") or [])
        length = headers.get(b"content-length")
        too_big = {
            "detail": [
                {
                    "field": "body",
                    "reason": f"request body exceeds {self.max_body} bytes (PERFCOST_MAX_BODY_BYTES)",
                }
            ]
        }
        if length is not None and length.isdigit() and int(length) > self.max_body:
            await JSONResponse(too_big, status_code=413)(scope, receive, send)
            self._record(scope, 413, started)
            return
        received = 0

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_body:
                    raise BodyTooLarge
            return message

        response_started = False

        async def tracking_send(message: Message) -> None:
            nonlocal response_started
            if message["type"] == "http.response.start":
                status_holder["status"] = message["status"]
                response_started = True
            await send(message)

        try:
            async with asyncio.timeout(self.timeout_s):
                await self.app(scope, limited_receive, tracking_send)
        except BodyTooLarge:
            await JSONResponse(too_big, status_code=413)(scope, receive, send)
            status_holder["status"] = 413
        except TimeoutError:
            if response_started:
                raise  # part of the answer is out: a 503 can no longer be sent
            reason = (
                f"the request took longer than its {self.timeout_s:g} s budget (PERFCOST_REQUEST_TIMEOUT_S)"
            )
            await JSONResponse({"detail": [{"field": "request", "reason": reason}]}, status_code=503)(
                scope, receive, send
            )
            status_holder["status"] = 503
        self._record(scope, status_holder["status"], started)

    def _record(self, scope: Scope, status: int, started: float) -> None:
        route = scope.get("route")
        # A mounted app (the docs' static files) sets no route; its mount's path extends the root path.
        root, app_root = scope.get("root_path", ""), scope.get("app_root_path", "")
        mount = root[len(app_root) :] if root.startswith(app_root) else ""
        path = getattr(route, "path", None) or mount or "unmatched"
        self.metrics.record(path, scope.get("method", ""), status, time.perf_counter() - started)


class BodyTooLarge(Exception):
    pass


def _field_path(error: Any) -> str:
    """Dotted path of the offending field (``instances.0.m``); ``body`` when the JSON itself is malformed."""
    if error.get("type") == "json_invalid":
        return "body"
    parts = [str(p) for p in error.get("loc", ()) if p != "body"]
    return ".".join(parts) or "body"


def _reason(error: Any) -> str:
    """The validation message, with the parser's own explanation for malformed JSON."""
    message = str(error.get("msg", "invalid"))
    detail = (error.get("ctx") or {}).get("error")
    return f"{message}: {detail}" if detail and error.get("type") == "json_invalid" else message


def _return_freed_memory() -> None:
    """Hand memory freed by a replaced model back to the OS (glibc only).

    glibc keeps what a thread's arena freed for that arena: with a new 60 MB model version every 5 s,
    loaded on whichever worker thread was free, RSS grew 403 → 891 MiB in a minute though nothing stayed
    referenced. Loading on one dedicated thread (see ``create_app``) reuses one arena; malloc_trim
    releases what it freed.
    """
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        log.debug("malloc_trim unavailable: freed model memory stays with the allocator")


def _settle_heap() -> None:
    """After a (re)load: collect what the replaced models left, return it to the OS, then freeze the rest.

    Frozen objects (the app, the loaded models, the imported libraries) are skipped by every later garbage
    collection, which otherwise traversed them again and again while serving: ~4% of a one-instance
    request's CPU time went to collections under 16-client load. The next reload unfreezes first, so the
    models it replaces are collected like any other garbage.
    """
    gc.unfreeze()
    gc.collect()
    _return_freed_memory()
    gc.freeze()


def _answer_errors_by_field(app: FastAPI) -> None:
    """Every client error, validation or HTTP, is answered as ``{"detail": [{"field", "reason"}]}``."""

    @app.exception_handler(RequestValidationError)
    async def invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        detail = [{"field": _field_path(e), "reason": _reason(e)} for e in exc.errors()]
        return JSONResponse({"detail": detail}, status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        detail = (
            exc.detail if isinstance(exc.detail, list) else [{"field": "path", "reason": str(exc.detail)}]
        )
        return JSONResponse(
            {"detail": detail}, status_code=exc.status_code, headers=getattr(exc, "headers", None)
        )


def _add_routes(app: FastAPI, metrics: Metrics, domains: Domains) -> None:
    # Routes are matched in order, one regex each: prediction routes first, as they take the traffic.
    for domain in domains:
        app.include_router(v1.router(domain))
    app.include_router(health.router)
    app.include_router(models.router)
    app.include_router(v2.router)

    # The page at / is static files calling the JSON API; it computes nothing itself.
    app.mount("/web", StaticFiles(directory=WEB), name="web")

    @app.get("/", include_in_schema=False)
    async def page() -> FileResponse:
        return FileResponse(WEB / "index.html")

    @app.get("/metrics", include_in_schema=False)
    async def prometheus() -> Response:
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)


def _reloader(registry: ModelRegistry, metrics: Metrics) -> Callable[[], Coroutine[Any, Any, None]]:
    """The app's reload: the registry's newest good versions swapped in, off the event loop."""
    # Every load runs on this one thread, so model memory comes from and returns to one malloc arena. It
    # lives as long as the app: a lifespan may run more than once (each test client enters it anew).
    loader = ThreadPoolExecutor(max_workers=1, thread_name_prefix="perfcost-loader")

    def reload_now() -> None:
        snapshot = registry.reload()
        _settle_heap()
        metrics.model_info.clear()
        for name, model in snapshot.models.items():
            metrics.model_info.labels(name, model.version).set(1)

    async def reload() -> None:
        await asyncio.get_running_loop().run_in_executor(loader, reload_now)

    return reload


def _lifespan(
    settings: Settings,
    registry: ModelRegistry,
    first_start: FirstStart,
    reload: Callable[[], Coroutine[Any, Any, None]],
) -> Callable[[FastAPI], AbstractAsyncContextManager[None]]:
    """Load the models, train the missing defaults if asked, reload on SIGHUP; stop first start at exit."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await reload()
        if settings.train_missing:
            first_start.start(set(registry.snapshot.models))
        loop = asyncio.get_running_loop()
        try:
            loop.add_signal_handler(signal.SIGHUP, lambda: loop.create_task(reload()))
            hup = True
        except (NotImplementedError, RuntimeError, ValueError):
            hup = False  # not the main thread (e.g. a test client): reload via the admin endpoint only
        yield
        if hup:
            loop.remove_signal_handler(signal.SIGHUP)
        await first_start.stop()

    return lifespan


def create_app(settings: Settings | None = None, domains: Domains = DOMAINS) -> FastAPI:
    """The service over ``settings`` (default: from the environment) serving ``domains`` (default: every
    registered one; a user's or a test's own domain is served by passing ``DOMAINS.with_domain(...)``)."""
    settings = settings or Settings()
    registry = ModelRegistry(settings.model_dir, domains)
    metrics = Metrics()
    reload = _reloader(registry, metrics)
    first_start = FirstStart(settings, reload, [d.name for d in domains if d.default])
    # FastAPI's native OpenTelemetry checks the global providers on every request even when none is set
    # up: off unless asked for (16-client p50 on this 2-core machine: 8.1 → 6.5 ms without the checks).
    otel = settings.opentelemetry
    # Swagger UI and ReDoc from the installed package's files, not a CDN: /docs works offline.
    app = FastAPIOffline(
        title="perfcost",
        version=__version__,
        description="Predicts runtime, power, energy, utilization and cost of compute before it runs.",
        lifespan=_lifespan(settings, registry, first_start, reload),
        telemetry={"tracing": otel, "metrics": otel, "logs": otel, "operation_spans": otel},
    )
    app.openapi = add_body_schemas(app)  # type: ignore[method-assign]
    app.state.settings = settings
    app.state.registry = registry
    app.state.catalog = DeviceCatalog.default(settings.device_dir)
    app.state.batcher = MicroBatcher()
    app.state.reload = reload
    app.state.first_start = first_start
    _add_routes(app, metrics, domains)
    _answer_errors_by_field(app)
    app.add_middleware(
        LimitsAndMetrics,
        max_body=settings.max_body_bytes,
        timeout_s=settings.request_timeout_s,
        metrics=metrics,
    )
    return app


def app_from_env() -> FastAPI:
    """Factory for ``uvicorn --factory service.app:app_from_env`` (settings from PERFCOST_* variables)."""
    return create_app(Settings())
