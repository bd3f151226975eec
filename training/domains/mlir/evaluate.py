"""Held-out evaluation of the MLIR cost models: ``perfcost evaluate mlir``.

Two protocols (:data:`PROTOCOLS`): ``random`` fits on 80% of the programs and scores the rest with the
"seen" interval; ``group-family`` holds each program family out in turn and scores it with the "unseen"
interval, as the service answers a program unlike its training programs. Predictions are mapped to the
target's scale as the service maps them, so the figures are those of what is served.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import pandas as pd
import typer
from rich.console import Console
from rich.table import Table
from sklearn.metrics import mean_absolute_error, r2_score
from sklearn.model_selection import train_test_split

from service.core.settings import Settings
from service.core.targets import halfwidth
from service.domains.mlir import features as mlir_features
from service.domains.mlir.runtime import target_scale
from training.core.datasets import DatasetError
from training.core.metrics import interval_coverage, point_metrics, summarize
from training.core.models import CostRegressor
from training.core.plots import pred_vs_measured, write_report
from training.domains.mlir.data import load_mlir, measured
from training.domains.mlir.train import TARGET_OFFSETS, ceilings, fit_mlir, log_target

log = logging.getLogger(__name__)

PROTOCOLS = ("random", "group-family")
COVERAGE = 0.9


def _predict_frame(
    models: dict[str, tuple[CostRegressor, dict[str, Any]]],
    test: pd.DataFrame,
    features: pd.DataFrame,
    regime: str,
    limits: dict[str, float],
) -> pd.DataFrame:
    """Predictions and intervals as the service answers them: offset removed, within [0, ceiling]."""
    parts = []
    for target, (model, extra) in models.items():
        mask, _ = log_target(test, target)
        if not mask.any():
            continue
        offset, ceiling = extra["offset"], limits.get(target, np.inf)
        center = model.predict(features.loc[mask])
        grid = model.calibration_[regime] if regime in model.calibration_ else model.calibration_["seen"]
        width = halfwidth(grid, COVERAGE)
        rows = test.loc[mask]
        parts.append(
            pd.DataFrame(
                {
                    "target": target,
                    "model": model.best_name_,
                    "family": rows["family"].to_numpy(),
                    "true": rows[target].to_numpy(dtype=float),
                    "pred": target_scale(np.exp(center), offset, ceiling),
                    "low": target_scale(np.exp(center - width), offset, ceiling),
                    "high": target_scale(np.exp(center + width), offset, ceiling),
                }
            )
        )
    return pd.concat(parts, ignore_index=True)


def _target_metrics(rows: pd.DataFrame) -> dict[str, Any]:
    true, pred = rows["true"].to_numpy(), rows["pred"].to_numpy()
    positive = true > 0
    # Percentage errors are undefined where the truth is 0 (no spills): they are taken over the
    # positive rows, and MAE and R² over all.
    entry: dict[str, Any] = (
        point_metrics(true[positive], pred[positive]) if positive.sum() >= 2 else {"mape": float("nan")}
    )
    entry["r2"] = float(r2_score(true, pred)) if len(true) >= 2 else float("nan")
    entry["mae"] = float(mean_absolute_error(true, pred))
    entry["interval_coverage_90"] = interval_coverage(rows)
    entry["n_test"] = len(rows)
    return entry


def _median_p90(frame: pd.DataFrame, column: str) -> dict[str, float | None]:
    """Median and p90 of a recorded spread over the programs that have it (None when none has)."""
    values = frame[column].to_numpy(dtype=float)
    values = values[np.isfinite(values)]
    if not len(values):
        return {f"{column}_median": None, f"{column}_p90": None}
    return {f"{column}_median": float(np.median(values)), f"{column}_p90": float(np.quantile(values, 0.9))}


def summarize_mlir(
    predictions: pd.DataFrame, frame: pd.DataFrame, dataset: str, protocol: str, n_train: int
) -> dict[str, Any]:
    """The metrics.json document (the GEMM shape: targets, groups — here keyed by family — plus the
    measurement noise floor)."""
    header = {
        "dataset": dataset,
        "protocol": protocol,
        "n_train": n_train,
        "n_test": int((predictions["target"] == "runtime_ms").sum()),
        "noise_floor": {
            **_median_p90(frame, "runtime_spread"),
            **_median_p90(frame, "runtime_launch_spread"),
            "definition": "runtime_spread: (p75 - p25) / median of the per-repetition wall times of one "
            "launch; runtime_launch_spread: (max - min) / runtime of the medians of a program's separate "
            "launches (None for data collected with one launch)",
        },
    }
    return summarize(predictions, header, [("family", "")], _target_metrics, _target_metrics)


def evaluate_mlir_dataset(
    directory: Path, protocol: str, targets: tuple[str, ...] | None = None
) -> tuple[dict[str, Any], pd.DataFrame]:
    data = load_mlir(directory)
    frame = measured(data)
    limits = ceilings(data.environment)
    table = mlir_features.summary_table([mlir_features.summarize(t) for t in frame["mlir"]])
    if protocol == "random":
        train_idx, test_idx = train_test_split(np.arange(len(frame)), test_size=0.2, random_state=0)
        train, test = frame.iloc[train_idx], frame.iloc[test_idx]
        models, baseline = fit_mlir(
            train.reset_index(drop=True),
            table.iloc[train_idx].reset_index(drop=True),
            targets or tuple(TARGET_OFFSETS),
            grouped=False,
        )
        test_features = mlir_features.with_baseline(table.iloc[test_idx].reset_index(drop=True), baseline)
        predictions = _predict_frame(models, test.reset_index(drop=True), test_features, "seen", limits)
        n_train = len(train)
    elif protocol == "group-family":
        families = sorted(frame["family"].unique())
        if len(families) < 3:
            raise DatasetError(f"group-family needs at least 3 families, {directory} has {len(families)}")
        parts = []
        for family in families:
            log.info("group-family: holding out %s", family)
            held = (frame["family"] == family).to_numpy()
            models, baseline = fit_mlir(
                frame.loc[~held].reset_index(drop=True),
                table.loc[~held].reset_index(drop=True),
                targets or ("runtime_ms",),
                n_splits=3,
                grouped=True,
            )
            held_rows = frame.loc[held].reset_index(drop=True)
            held_features = mlir_features.with_baseline(table.loc[held].reset_index(drop=True), baseline)
            parts.append(_predict_frame(models, held_rows, held_features, "unseen", limits))
        predictions = pd.concat(parts, ignore_index=True)
        n_train = int(len(frame) * (len(families) - 1) / len(families))
    else:
        raise DatasetError(f"unknown protocol {protocol!r}; choose from {', '.join(PROTOCOLS)}")
    return summarize_mlir(predictions, frame, data.name, protocol, n_train), predictions


def write_mlir_plots(predictions: pd.DataFrame, metrics: dict[str, Any], folder: Path) -> list[Path]:
    written = []
    for target, rows in predictions.groupby("target", sort=False):
        m = metrics["targets"][target]
        title = f"{metrics['dataset']} ({metrics['protocol']}): MAPE {m['mape']:.2%}, R² {m['r2']:.3f}"
        path = folder / f"pred_vs_measured_{target}.png"
        written.append(pred_vs_measured(rows, "family", title, path, str(target), offset=1e-3))
    return written


def evaluate_cli(directory: Path, protocol: str, settings: Settings) -> dict[str, Any]:
    """Body of ``perfcost evaluate mlir``: metrics.json, plots and a table."""
    metrics, predictions = evaluate_mlir_dataset(directory, protocol)
    folder = write_report(settings.report_dir, metrics, predictions, write_mlir_plots)
    table = Table(
        title=f"{metrics['dataset']} / {protocol} (n_train={metrics['n_train']}, n_test={metrics['n_test']})"
    )
    for col in ("target", "model", "R²", "MAPE", "MAE", "90% cov."):
        table.add_column(col)
    for target, m in metrics["targets"].items():
        table.add_row(
            target,
            m["model"],
            f"{m['r2']:.4f}",
            f"{m['mape']:.2%}",
            f"{m['mae']:.4g}",
            f"{m['interval_coverage_90']:.3f}",
        )
    console = Console()
    console.print(table)
    if protocol == "group-family":
        groups = Table(title="held-out families (runtime_ms)")
        for col in ("family", "MAPE", "median APE", "90% cov.", "n_test"):
            groups.add_column(col)
        for family, v in metrics["groups"].items():
            r = v.get("runtime_ms")
            if r:
                groups.add_row(
                    family,
                    f"{r['mape']:.2%}",
                    f"{r['median_ape']:.2%}",
                    f"{r['interval_coverage_90']:.3f}",
                    str(r["n_test"]),
                )
        console.print(groups)
    console.print(f"noise floor: {metrics['noise_floor']}")
    console.print(f"wrote {folder / 'metrics.json'} and plots")
    return metrics


def evaluate_mlir(
    directory: Annotated[
        Path, typer.Option("--data", help="Directory holding programs.jsonl.gz from 'perfcost collect mlir'")
    ] = Path("datasets") / "mlir-cpu-local",
    protocol: Annotated[
        str, typer.Option(help="random (80/20, seed 0) or group-family (leave one program family out)")
    ] = "random",
) -> None:
    """Evaluate the MLIR cost models on held-out programs: metrics.json, plots and a table."""
    if protocol not in PROTOCOLS:
        raise typer.BadParameter(f"must be one of {', '.join(PROTOCOLS)}", param_hint="--protocol")
    try:
        evaluate_cli(directory, protocol, Settings())
    except DatasetError as exc:
        raise typer.BadParameter(str(exc), param_hint="--data") from exc
