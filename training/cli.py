"""The ``perfcost`` command: one typer sub-command per pipeline stage, plus ``serve``."""

from __future__ import annotations

import logging

import typer

from training import data, evaluate, serve
from training.collect.cli import app as collect_app
from training.domains.cpu import train as cpu
from training.domains.gemm import calibrate, train
from training.domains.mlir import train as mlir
from training.score.cli import score_command

app = typer.Typer(
    help="Predict compute cost before running it: data, collect, train, evaluate, serve.",
    no_args_is_help=True,
)
app.add_typer(data.app, name="data")
app.add_typer(collect_app, name="collect")
train_app = typer.Typer(help="Fit models and publish them into PERFCOST_MODEL_DIR.", no_args_is_help=True)
train_app.command("gemm")(train.train_gemm)
train_app.command("cpu")(cpu.train_cpu)
train_app.command("mlir")(mlir.train_mlir)
app.add_typer(train_app, name="train")
app.add_typer(evaluate.app, name="evaluate")
app.add_typer(calibrate.app, name="calibrate")
app.command("serve")(serve.serve)
app.command("score")(score_command)


@app.callback()
def main(verbose: bool = typer.Option(False, "--verbose", "-v", help="Debug logging.")) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
