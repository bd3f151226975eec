"""What the ``perfcost collect`` commands share on the command line: option checks that name the option,
and failures reported in one line instead of a traceback."""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated

import typer

from training.collect.storage import CollectError

# Options several commands declare alike.
OutDir = Annotated[Path, typer.Option("--out", help="Output directory (created; rerun to resume).")]
ConfigLimit = Annotated[int | None, typer.Option("--limit", help="Only the first N configurations.")]
MinTimePerConfig = Annotated[
    float, typer.Option("--min-time", help="Seconds of timed calls per configuration.")
]


def check_at_least(value: int | None, low: int, option: str) -> None:
    """``option`` (unset is fine) must be at least ``low``."""
    if value is not None and value < low:
        raise typer.BadParameter(f"must be at least {low}, got {value}", param_hint=f"'{option}'")


def check_min_time(min_time: float) -> None:
    if not (math.isfinite(min_time) and 0 < min_time <= 60):
        raise typer.BadParameter(f"must be in (0, 60] seconds, got {min_time}", param_hint="'--min-time'")


def check_out(out: Path | None) -> None:
    """``--out`` is created when missing, so it only has to be a directory when it exists."""
    if out is not None and out.exists() and not out.is_dir():
        raise typer.BadParameter(f"{out} exists and is not a directory", param_hint="'--out'")


@contextmanager
def one_line_errors(*errors: type[Exception]) -> Iterator[None]:
    """A :class:`CollectError` (or one of ``errors``) is one line and exit 1: its message says it all."""
    caught: tuple[type[Exception], ...] = (CollectError, *errors)
    try:
        yield
    except caught as exc:
        typer.echo(f"Error: {exc}", err=True)
        raise typer.Exit(1) from None


@contextmanager
def cli_errors(out: Path, unit: str) -> Iterator[None]:
    """A collector's failure is one line and exit 1; Ctrl-C says the finished ``unit`` are kept (130)."""
    try:
        with one_line_errors():
            yield
    except KeyboardInterrupt:
        typer.echo(f"Interrupted; every finished {unit} is saved in {out}. Rerun to resume.", err=True)
        raise typer.Exit(130) from None
