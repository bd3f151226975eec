"""The ``perfcost collect`` group: one command per collector (registered in training/cli.py)."""

from __future__ import annotations

import typer

from training.collect import cpu_gemm, gpu_gemm
from training.collect.mlir import cli as mlir_cli

app = typer.Typer(help="Collect measurements on this machine.", no_args_is_help=True)


@app.callback()
def _collect() -> None:
    """Collect measurements on this machine."""


app.command("cpu-gemm")(cpu_gemm.cpu_gemm)
app.command("mlir")(mlir_cli.mlir)
app.command("gpu-gemm")(gpu_gemm.gpu_gemm)
