"""``perfcost score``: a table of GEMM configurations (CSV or Parquet) into a folder of Parquet files."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated

import typer

from service.core.settings import Settings
from training.core.cluster import ClusterError, dask_client
from training.score.run import ERRORS, ScoreError, score

log = logging.getLogger(__name__)

Scheduler = Annotated[
    str | None,
    typer.Option(help="Address of a running Dask scheduler (tcp://host:port); default: a local cluster"),
]
Workers = Annotated[int, typer.Option(min=1, help="Worker processes of the local cluster")]


def score_command(
    source: Annotated[Path, typer.Argument(help="Table of GEMM instances: .csv, .csv.gz or Parquet")],
    output: Annotated[Path, typer.Argument(help="Folder to write: Parquet parts, _errors.csv, a manifest")],
    coverage: Annotated[float, typer.Option(help="Coverage of the intervals, in (0, 1)")] = 0.9,
    scheduler: Scheduler = None,
    workers: Workers = 2,
    version: Annotated[
        str | None, typer.Option(help="Model version (default: the newest that loads)")
    ] = None,
    chunk_rows: Annotated[int, typer.Option(min=1, help="Rows predicted at a time by a worker")] = 20_000,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing output folder")] = False,
    domain: Annotated[str, typer.Option(help="The domain whose instances the table holds")] = "gemm",
) -> None:
    """Predict every row of a table with the domain's served model (GEMM by default), as its native route
    (POST /v1/gemm/predict) would: values, intervals, OOD flags. Refused rows are listed in _errors.csv
    with their row, line and reason."""
    if not 0.0 < coverage < 1.0:
        raise typer.BadParameter(f"{coverage} is not in (0, 1)", param_hint="--coverage")
    settings = Settings()
    try:
        with dask_client(scheduler, workers) as client:
            manifest = score(
                source,
                output,
                client,
                settings.model_dir,
                coverage,
                device_dir=settings.device_dir,
                version=version,
                chunk_rows=chunk_rows,
                overwrite=overwrite,
                domain=domain,
            )
    except (ScoreError, ClusterError) as exc:
        # The user's answer, not a diagnostic: on stderr whatever logging is configured to do.
        typer.echo(f"Error: {exc}", err=True)
        raise typer.Exit(1) from exc
    rate = manifest["rows"] / max(manifest["seconds"], 1e-9)
    log.info(
        "scored %d of %d rows with %s %s in %.1f s (%.0f rows/s) into %s; %d refused%s",
        manifest["scored"],
        manifest["rows"],
        manifest["model"],
        manifest["version"],
        manifest["seconds"],
        rate,
        output,
        manifest["refused"],
        f" (see {output / ERRORS})" if manifest["refused"] else "",
    )
