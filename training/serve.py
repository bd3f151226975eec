"""``perfcost serve``: the service's own entry point (``python -m service``), with first-start training of
missing default models turned on, so the serving process never holds the offline stack (training code,
matplotlib): the training runs in a process of its own while the service already answers."""

from __future__ import annotations

import logging
import os
import sys
from typing import Annotated

import typer

from service.__main__ import Host, Port, Workers


def serve(
    host: Host = None,
    port: Port = None,
    workers: Workers = None,
    train_if_empty: Annotated[
        bool,
        typer.Option(help="Train the default models the model directory lacks, in the background"),
    ] = True,
) -> None:
    """Serve predictions over HTTP (OpenAPI docs at /docs), training missing default models meanwhile."""
    options = [("--host", host), ("--port", port), ("--workers", workers)]
    passed = [f"{flag}={value}" for flag, value in options if value is not None]
    env = {**os.environ, "PERFCOST_TRAIN_MISSING": "true" if train_if_empty else "false"}
    # Flushed before exec: buffered log lines would otherwise be lost with the replaced process.
    logging.shutdown()
    os.execve(sys.executable, [sys.executable, "-m", "service", *passed], env)
