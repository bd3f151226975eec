"""First start: train the default models a model directory lacks, reporting progress to a status file.

The service runs this as a separate process (``python -m training.first_start``) when it starts without
models, so it answers at once, serves each domain as soon as its model is published, and never imports the
offline stack itself; ``/readyz`` shows the status file. It can also be run by hand."""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Any

import typer
from joblib.externals.loky import get_reusable_executor

from service.core.registry import ModelRegistry
from service.core.settings import Settings
from service.domains import DOMAINS
from training.domains import trainings

log = logging.getLogger(__name__)


class Progress:
    """The status file: per model pending, training, published, skipped or failed, with a detail and
    times; replaced atomically at each change so that a reader never sees half of it."""

    def __init__(self, path: Path | None, names: Sequence[str]) -> None:
        self.path = path
        self.doc: dict[str, Any] = {
            "pid": os.getpid(),
            "state": "running",
            "started_at": time.time(),
            "models": {name: {"state": "pending"} for name in names},
        }
        self._write()

    def set(self, name: str, state: str, detail: str = "") -> None:
        entry = self.doc["models"][name]
        entry.update(state=state, detail=detail)
        entry["started_at" if state == "training" else "finished_at"] = time.time()
        self._write()

    def finish(self, state: str) -> None:
        self.doc.update(state=state, finished_at=time.time())
        self._write()

    def _write(self) -> None:
        if self.path is None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        staging = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        staging.write_text(json.dumps(self.doc, indent=1))
        os.replace(staging, self.path)


def ensure_default_models(
    settings: Settings, status: Path | None = None, only: Sequence[str] | None = None
) -> dict[str, Any]:
    """Train the default model of each domain in ``only`` (default: every registered one) that the
    directory has no servable version of (none, or only versions this release refuses, such as ones built
    on older features), unless its domain says why it cannot be trained here; say which served models
    are out of date with the data on disk. Returns the status document."""
    trainers = trainings()
    wanted = [d.name for d in DOMAINS if d.default and (only is None or d.name in only)]
    servable = ModelRegistry(settings.model_dir, DOMAINS).reload().models
    names = [name for name in wanted if name not in servable]
    stale = {}
    for name in wanted:
        why = trainers[name].stale(servable[name], settings) if name in servable else None
        if why is not None:
            stale[name] = why
            log.warning("the %s model is out of date: %s", name.upper(), why)
    progress = Progress(status, [*names, *stale])
    for name, detail in stale.items():
        progress.set(name, "stale", detail)
    failed = False
    for name in names:
        reason = trainers[name].why_not(settings)
        if reason is not None:
            log.warning("no %s model: %s", name.upper(), reason)
            progress.set(name, "skipped", reason)
            continue
        log.info("no %s model in %s: training one", name.upper(), settings.model_dir)
        progress.set(name, "training")
        try:
            progress.set(name, "published", trainers[name].first_start(settings))
        except Exception as exc:  # one domain failing must not keep the others from training
            log.exception("training the default %s model failed", name)
            progress.set(name, "failed", f"{type(exc).__name__}: {exc}")
            failed = True
    progress.finish("failed" if failed else "finished")
    return progress.doc


def main(
    status: Annotated[Path | None, typer.Option(help="Status file to keep up to date")] = None,
    only: Annotated[
        str | None, typer.Option(help="Comma-separated models to consider (default: every domain)")
    ] = None,
) -> None:
    """Train the default models the model directory (PERFCOST_MODEL_DIR) lacks."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    chosen = None if only is None else only.split(",")
    unknown = sorted(set(chosen or ()) - set(DOMAINS.names))
    if unknown:
        choices = ", ".join(DOMAINS.names)
        raise typer.BadParameter(f"unknown model(s) {', '.join(unknown)}; choose from {choices}")
    try:
        doc = ensure_default_models(Settings(), status, chosen)
    finally:
        # The fits' worker processes, kept for reuse, would outlive this process by minutes otherwise.
        get_reusable_executor().shutdown(wait=True)
    raise typer.Exit(1 if doc["state"] == "failed" else 0)


if __name__ == "__main__":
    typer.run(main)
