"""MLIR dataset loader: ``programs.jsonl.gz`` written by ``perfcost collect mlir`` → one table.

Columns: ``key, family, dtype, status, error, mlir`` + :data:`TARGETS` + measurement details
(``runtime_spread``, ``runtime_launch_spread``, ``cpu_time_ms``, ``compile_ms``, ``dispatches``,
``vector_share``, ``code_bytes``, ``threads``). Programs that failed to import, compile or run stay in the
table with their status and error line (the dataset records them); :func:`measured` selects the rows a
model can learn from, and every row it leaves out is counted by reason in the report.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from service.domains.mlir import DOMAIN as MLIR
from training.collect.mlir.records import ENVIRONMENT_FILE, PROGRAMS, read_records
from training.core.datasets import DatasetError
from training.core.report import LoadReport

log = logging.getLogger(__name__)

DEFAULT_DIR = Path("datasets") / "mlir-cpu-local"
TARGETS = MLIR.targets
DETAILS = (
    "runtime_spread",
    "runtime_launch_spread",
    "runtime_min_ms",
    "cpu_time_ms",
    "compile_ms",
    "dispatches",
    "vector_share",
    "code_bytes",
    "spill_stores",
    "spill_reloads",
    "threads",
)
COLUMNS = ("key", "family", "dtype", "status", "error", "mlir", *TARGETS, *DETAILS)


@dataclass
class MlirData:
    name: str
    frame: pd.DataFrame
    report: LoadReport
    environment: dict[str, Any]


def _number(value: Any) -> float:
    try:
        out = float(value)
    except (TypeError, ValueError):
        return math.nan
    return out if math.isfinite(out) else math.nan


def load_mlir(directory: Path = DEFAULT_DIR) -> MlirData:
    """Every program record in ``directory``; raises :class:`DatasetError` when there is none."""
    path = directory / PROGRAMS
    if not path.is_file():
        raise DatasetError(
            f"{path} does not exist; collect it with 'perfcost collect mlir --out {directory}' "
            "or pass the directory that holds it"
        )
    report = LoadReport(dataset=directory.name)
    rows = []
    for i, record in enumerate(read_records(path)):
        row = {c: record.get(c) for c in ("key", "family", "dtype", "status", "error", "mlir")}
        for c in (*TARGETS, *DETAILS):
            row[c] = _number(record.get(c))
        if not row["family"] or not row["key"]:
            report.reject("record without key or family", f"record {i}")
            continue
        rows.append(row)
    frame = pd.DataFrame(rows, columns=list(COLUMNS))
    report.rows = len(frame)
    try:
        import json

        environment = json.loads((directory / ENVIRONMENT_FILE).read_text())
    except (OSError, ValueError):
        environment = {}
    if frame.empty:
        raise DatasetError(f"{path} holds no program records")
    return MlirData(name=directory.name, frame=frame, report=report, environment=environment)


def measured(data: MlirData) -> pd.DataFrame:
    """The rows with a compiled, benchmarked program and a positive runtime (the training rows); the
    others are counted in ``data.report`` by status."""
    frame = data.frame
    ok = (frame["status"] == "ok") & frame["mlir"].notna() & (frame["runtime_ms"] > 0)
    for status, count in frame.loc[~ok, "status"].fillna("missing").value_counts().items():
        data.report.rejected[f"not trainable: status {status}"] = int(count)
        data.report.examples.setdefault(
            f"not trainable: status {status}",
            frame.loc[~ok & (frame["status"].fillna("missing") == status), "key"].head(5).tolist(),
        )
    return frame.loc[ok].reset_index(drop=True)
