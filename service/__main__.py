"""``python -m service``: serve predictions over HTTP with the models in PERFCOST_MODEL_DIR.

The service's own entry point: it imports neither ``training`` nor matplotlib, so the process (and the
image's runtime stage) holds only what answering requests needs. ``perfcost serve`` trains missing
default models first, then hands over to this."""

from __future__ import annotations

from typing import Annotated

import typer
import uvicorn

from service.settings import Settings

APP_FACTORY = "service.app:app_from_env"
# Options shared with ``perfcost serve``, which passes them on.
Host = Annotated[str | None, typer.Option(help="Bind address (default PERFCOST_HOST)")]
Port = Annotated[int | None, typer.Option(help="Port (default PERFCOST_PORT)")]
Workers = Annotated[int | None, typer.Option(min=1, help="Worker processes (default PERFCOST_WORKERS)")]


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
    )


def main() -> None:
    typer.run(serve)


if __name__ == "__main__":
    main()
