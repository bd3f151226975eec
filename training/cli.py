"""The ``perfcost`` command: one typer sub-command per pipeline stage, plus ``serve``."""

from __future__ import annotations

import logging

import typer

from training import calibrate, collect, collect_gpu, data, evaluate, serve, train

app = typer.Typer(
    help="Predict compute cost before running it: data, collect, train, evaluate, serve.",
    no_args_is_help=True,
)
app.add_typer(data.app, name="data")
app.add_typer(collect.app, name="collect")
collect.app.command("gpu-gemm")(collect_gpu.gpu_gemm)
app.add_typer(train.app, name="train")
app.add_typer(evaluate.app, name="evaluate")
app.add_typer(calibrate.app, name="calibrate")
app.command("serve")(serve.serve)


@app.callback()
def main(verbose: bool = typer.Option(False, "--verbose", "-v", help="Debug logging.")) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
