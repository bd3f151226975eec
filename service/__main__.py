"""``python -m service``: serve predictions over HTTP with the models in PERFCOST_MODEL_DIR.

The service's own entry point: it imports neither ``training`` nor matplotlib, so the process (and the
image's runtime stage) holds only what answering requests needs. ``perfcost serve`` trains missing
default models first, then hands over to this."""

from __future__ import annotations

import copy
from typing import Annotated, Any

import typer
import uvicorn
from uvicorn.config import LOGGING_CONFIG

from service.core.settings import Settings

APP_FACTORY = "service.app:app_from_env"
# Options shared with ``perfcost serve``, which passes them on.
Host = Annotated[str | None, typer.Option(help="Bind address (default PERFCOST_HOST)")]
Port = Annotated[int | None, typer.Option(help="Port (default PERFCOST_PORT)")]
Workers = Annotated[int | None, typer.Option(min=1, help="Worker processes (default PERFCOST_WORKERS)")]


def log_config() -> dict[str, Any]:
    """uvicorn's logging, with two changes: the service's own loggers (model loads, reloads, first start)
    are shown at INFO on stderr, not dropped for want of a handler; and access lines are formatted by a
    plain ``logging.Formatter``. uvicorn's colouring formatter copies each record and looks up the status
    phrase, which made the access log 11% of a one-instance request's server CPU time (profiled under 16
    clients); the line keeps its content: client, request line, status."""
    config = copy.deepcopy(LOGGING_CONFIG)
    config["formatters"]["access"] = {"format": "%(levelname)s:     %(message)s"}
    config["loggers"]["service"] = {"handlers": ["default"], "level": "INFO", "propagate": False}
    return config


def serve(host: Host = None, port: Port = None, workers: Workers = None) -> None:
    """Serve predictions over HTTP (OpenAPI docs at /docs)."""
    settings = Settings()
    uvicorn.run(
        APP_FACTORY,
        factory=True,
        host=host or settings.host,
        port=port or settings.port,
        workers=workers or settings.workers,
        timeout_keep_alive=settings.keep_alive_s,
        timeout_graceful_shutdown=settings.graceful_shutdown_s,
        log_level="info",
        log_config=log_config(),
        access_log=settings.access_log,
    )


def main() -> None:
    typer.run(serve)


if __name__ == "__main__":
    main()
