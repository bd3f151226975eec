"""``perfcost collect mlir``: the command that draws the sweep and runs a collection."""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Annotated, Any

import typer

from training.collect.mlir.collector import collect
from training.collect.mlir.iree import BenchSettings, default_workers
from training.collect.mlir.records import PROGRAMS
from training.collect.mlir.sweep import FAMILIES, build_sweep
from training.collect.options import OutDir, check_at_least, check_min_time, check_out, cli_errors

log = logging.getLogger(__name__)

DEFAULT_OUT = Path("datasets") / "mlir-cpu-local"


def _check_options(
    out: Path,
    per_family: int,
    limit: int | None,
    repetitions: int,
    min_time: float,
    threads: int | None,
    invocations: int,
) -> None:
    """Reject bad options (BadParameter) before the sweep is drawn or anything is measured."""
    check_at_least(per_family, 1, "--per-family")
    check_at_least(limit, 1, "--limit")
    check_at_least(repetitions, 5, "--repetitions")
    check_min_time(min_time)
    cpus = os.cpu_count() or 1
    if threads is not None and not 1 <= threads <= cpus:
        raise typer.BadParameter(f"must be between 1 and {cpus}, got {threads}", param_hint="'--threads'")
    if not 1 <= invocations <= 20:
        raise typer.BadParameter(f"must be between 1 and 20, got {invocations}", param_hint="'--invocations'")
    check_out(out)


def mlir(
    out: OutDir = DEFAULT_OUT,
    per_family: Annotated[
        int, typer.Option("--per-family", help="Programs per family in the sweep (15 families).")
    ] = 220,
    limit: Annotated[int | None, typer.Option("--limit", help="Only the first N programs.")] = None,
    repetitions: Annotated[
        int, typer.Option("--repetitions", help="Benchmark repetitions per program (median, spread).")
    ] = 5,
    min_time: Annotated[
        float, typer.Option("--min-time", help="Seconds per repetition (and of warm-up).")
    ] = 0.02,
    threads: Annotated[
        int | None, typer.Option("--threads", help="IREE worker threads (default: usable CPUs but one).")
    ] = None,
    invocations: Annotated[
        int, typer.Option("--invocations", help="Separate benchmark launches per program (median).")
    ] = 3,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Print the sweep's size; measure nothing.")
    ] = False,
) -> None:
    """Generate MLIR programs, compile them with IREE for this CPU and benchmark them (resumable)."""
    _check_options(out, per_family, limit, repetitions, min_time, threads, invocations)
    specs = build_sweep(per_family)
    if limit is not None:
        specs = specs[:limit]
    if dry_run:
        by_family = {f: sum(s.family == f for s in specs) for f in FAMILIES}
        typer.echo(f"{len(specs)} programs: " + ", ".join(f"{f} {n}" for f, n in by_family.items()))
        return
    settings = BenchSettings(
        repetitions=repetitions,
        min_time_s=min_time,
        warmup_s=min_time,
        threads=threads or default_workers(),
        invocations=invocations,
    )
    started = time.monotonic()

    def progress(done: int, total: int, record: dict[str, Any]) -> None:
        elapsed = time.monotonic() - started
        log.info(
            "[%d/%d %.0fs] %s %s %s",
            done,
            total,
            elapsed,
            record["status"],
            record.get("runtime_ms", record.get("error", "")),
            record["key"],
        )

    with cli_errors(out, "program"):
        n = collect(out, specs, settings, progress)
    typer.echo(f"measured {n} programs in {time.monotonic() - started:.0f} s -> {out / PROGRAMS}")
