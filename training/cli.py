"""The ``perfcost`` command: one typer sub-command per pipeline stage, plus ``serve``.

``train``, ``evaluate`` and ``calibrate`` have one command per registered domain, taken from its training
package (:mod:`training.domains`)."""

from __future__ import annotations

import logging

import typer

from training import data, serve
from training.collect.cli import app as collect_app
from training.domains import trainings
from training.score.cli import score_command

app = typer.Typer(
    help="Predict compute cost before running it: data, collect, train, evaluate, serve.",
    no_args_is_help=True,
)
train_app = typer.Typer(help="Fit models and publish them into PERFCOST_MODEL_DIR.", no_args_is_help=True)
evaluate_app = typer.Typer(
    help="Held-out evaluation: metrics.json and plots under reports/.", no_args_is_help=True
)
calibrate_app = typer.Typer(
    help="Adapt a published model to your own device's measurements.", no_args_is_help=True
)
for name, training in trainings().items():
    train_app.command(name)(training.train)
    evaluate_app.command(name)(training.evaluate)
    if training.calibrate is not None:
        calibrate_app.command(name)(training.calibrate)
app.add_typer(data.app, name="data")
app.add_typer(collect_app, name="collect")
app.add_typer(train_app, name="train")
app.add_typer(evaluate_app, name="evaluate")
app.add_typer(calibrate_app, name="calibrate")
app.command("serve")(serve.serve)
app.command("score")(score_command)


@app.callback()
def main(verbose: bool = typer.Option(False, "--verbose", "-v", help="Debug logging.")) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
