"""``perfcost serve``: train the default models the model directory lacks, then replace this process with
the service's own entry point (``python -m service``), so the serving process never holds the offline
stack (training code, matplotlib)."""

from __future__ import annotations

import logging
import os
import sys
from typing import Annotated

import typer

from service.__main__ import Host, Port, Workers
from service.domains.contracts import DOMAINS
from service.registry import ModelRegistry
from service.settings import Settings
from training.cpu import train_cpu_model
from training.data.mlir import DEFAULT_DIR
from training.data.registry import get_spec, is_available
from training.mlir import train_mlir_model
from training.train import default_gemm_datasets, train_gemm_model

log = logging.getLogger(__name__)

MLIR_DATASET = DEFAULT_DIR.name


def ensure_default_models(settings: Settings) -> None:
    """Train each default model the directory has no servable version of (none, or only versions this
    release refuses, such as ones built on older features): a GEMM model from bundled data plus cached or
    mirrored public data, an MLIR model from the bundled programs, and a CPU model when SPEC CPU2017 is
    cached or mirrored (otherwise say how to add it)."""
    servable = ModelRegistry(settings.model_dir, DOMAINS).reload().models
    if "gemm" not in servable:
        datasets = default_gemm_datasets(settings)
        log.info("no GEMM model in %s: training one on %s", settings.model_dir, ", ".join(datasets))
        train_gemm_model(datasets, settings)
    mlir_data = settings.bundled_data_dir / MLIR_DATASET
    if "mlir" not in servable and (mlir_data / "programs.jsonl.gz").is_file():
        log.info("no MLIR model in %s: training one on %s (a few minutes)", settings.model_dir, mlir_data)
        train_mlir_model(settings, mlir_data)
    if "cpu" not in servable:
        if is_available(get_spec("spec-cpu2017"), settings):
            log.info("no CPU model in %s: training one on spec-cpu2017 (a few minutes)", settings.model_dir)
            train_cpu_model(settings)
        else:
            log.warning(
                "no CPU model: spec-cpu2017 is neither cached nor mirrored; run 'perfcost data fetch "
                "spec-cpu2017' (or set PERFCOST_DATA_MIRROR) and restart to serve /v1/cpu/predict"
            )


def serve(
    host: Host = None,
    port: Port = None,
    workers: Workers = None,
    train_if_empty: Annotated[
        bool, typer.Option(help="Train default models when the model directory is empty")
    ] = True,
) -> None:
    """Train missing default models, then serve predictions over HTTP (OpenAPI docs at /docs)."""
    settings = Settings()
    if train_if_empty:
        ensure_default_models(settings)
    options = [("--host", host), ("--port", port), ("--workers", workers)]
    passed = [f"{flag}={value}" for flag, value in options if value is not None]
    # Flushed before exec: buffered log lines would otherwise be lost with the replaced process.
    logging.shutdown()
    os.execv(sys.executable, [sys.executable, "-m", "service", *passed])
