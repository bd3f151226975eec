"""First start: train the default models a model directory lacks, reporting progress to a status file.

The service runs this as a separate process (``python -m training.first_start``) when it starts without
models, so it answers at once, serves each domain as soon as its model is published, and never imports the
offline stack itself; ``/readyz`` shows the status file. It can also be run by hand."""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Annotated, Any

import typer
from joblib.externals.loky import get_reusable_executor

from service.core.registry import ModelRegistry
from service.core.settings import Settings
from service.domains import DOMAINS
from training.core.datasets import get_spec, is_available
from training.domains.cpu.train import train_cpu_model
from training.domains.gemm.data import available_gemm_datasets
from training.domains.gemm.train import default_gemm_datasets, train_gemm_model
from training.domains.mlir.data import DEFAULT_DIR
from training.domains.mlir.train import train_mlir_model

log = logging.getLogger(__name__)

MLIR_DATASET = DEFAULT_DIR.name
ORDER = ("gemm", "mlir", "cpu")


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


def _gemm(settings: Settings) -> str:
    datasets = default_gemm_datasets(settings)
    train_gemm_model(datasets, settings)
    skipped = [name for name in available_gemm_datasets(settings) if name not in datasets]
    note = f"; skipped (not cached or mirrored): {', '.join(skipped)}" if skipped else ""
    return f"trained on {', '.join(datasets)}{note}"


def _mlir(settings: Settings) -> str:
    data = settings.bundled_data_dir / MLIR_DATASET  # present: why_not checked it
    train_mlir_model(settings, data, quick=True)
    return f"trained on {data} (first-start configuration; 'perfcost train mlir' fits the full one)"


def _cpu(settings: Settings) -> str:
    train_cpu_model(settings)
    return "trained on spec-cpu2017"


TRAINERS: dict[str, Callable[[Settings], str]] = {"gemm": _gemm, "mlir": _mlir, "cpu": _cpu}


def why_not(name: str, settings: Settings) -> str | None:
    """Why a default model cannot be trained here (None: it can)."""
    if name == "mlir" and not (settings.bundled_data_dir / MLIR_DATASET / "programs.jsonl.gz").is_file():
        return f"no bundled MLIR programs in {settings.bundled_data_dir / MLIR_DATASET}"
    if name == "cpu" and not is_available(get_spec("spec-cpu2017"), settings):
        return (
            "spec-cpu2017 is neither cached nor mirrored; run 'perfcost data fetch spec-cpu2017' (or set "
            "PERFCOST_DATA_MIRROR), then 'perfcost train cpu' and reload, to serve /v1/cpu/predict"
        )
    return None


def ensure_default_models(
    settings: Settings, status: Path | None = None, only: Sequence[str] = ORDER
) -> dict[str, Any]:
    """Train each default model in ``only`` the directory has no servable version of (none, or only
    versions this release refuses, such as ones built on older features): GEMM from bundled data plus
    cached or mirrored public data, MLIR from the bundled programs, CPU when SPEC CPU2017 is cached or
    mirrored (otherwise say how to add it). Returns the status document."""
    servable = ModelRegistry(settings.model_dir, DOMAINS).reload().models
    names = [name for name in ORDER if name in only and name not in servable]
    stale = {}
    if "gemm" in only and "gemm" in servable:
        trained = {d.get("name") for d in servable["gemm"].card.get("datasets", [])}
        new = [d for d in default_gemm_datasets(settings) if d not in trained]
        if new:
            stale["gemm"] = (
                f"version {servable['gemm'].version} was trained without {', '.join(new)}, which is now "
                "cached or mirrored: run 'perfcost train gemm', then reload (POST /v1/admin/reload or "
                "kill -HUP) to serve a model that knows it"
            )
            log.warning("the GEMM model is out of date: %s", stale["gemm"])
    progress = Progress(status, [*names, *stale])
    for name, detail in stale.items():
        progress.set(name, "stale", detail)
    failed = False
    for name in names:
        reason = why_not(name, settings)
        if reason is not None:
            log.warning("no %s model: %s", name.upper(), reason)
            progress.set(name, "skipped", reason)
            continue
        log.info("no %s model in %s: training one", name.upper(), settings.model_dir)
        progress.set(name, "training")
        try:
            progress.set(name, "published", TRAINERS[name](settings))
        except Exception as exc:  # one domain failing must not keep the others from training
            log.exception("training the default %s model failed", name)
            progress.set(name, "failed", f"{type(exc).__name__}: {exc}")
            failed = True
    progress.finish("failed" if failed else "finished")
    return progress.doc


def main(
    status: Annotated[Path | None, typer.Option(help="Status file to keep up to date")] = None,
    only: Annotated[str, typer.Option(help="Comma-separated models to consider")] = ",".join(ORDER),
) -> None:
    """Train the default models the model directory (PERFCOST_MODEL_DIR) lacks."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    unknown = sorted(set(only.split(",")) - set(ORDER))
    if unknown:
        raise typer.BadParameter(f"unknown model(s) {', '.join(unknown)}; choose from {', '.join(ORDER)}")
    try:
        doc = ensure_default_models(Settings(), status, only.split(","))
    finally:
        # The fits' worker processes, kept for reuse, would outlive this process by minutes otherwise.
        get_reusable_executor().shutdown(wait=True)
    raise typer.Exit(1 if doc["state"] == "failed" else 0)


if __name__ == "__main__":
    typer.run(main)
