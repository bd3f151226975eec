"""MLIR cost models: ``perfcost train mlir`` and ``perfcost evaluate mlir``.

Five targets, each a :class:`training.models.CostRegressor` (LightGBM vs random forest by CV) on the
features of :mod:`service.features.mlir`: ``runtime_ms``, ``instructions``, ``vector_registers``,
``spills`` and ``utilization``. Models learn ``log(value + offset)``: the count targets can be 0 (no
spills, or a program IREE folds away entirely), so they carry an offset of 1 that the service subtracts
again. Calibration groups are program families, so the "unseen" conformal grid is the error on a family
training never saw; the service uses it for programs flagged out of distribution.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import pandas as pd
import typer
from rich.console import Console
from rich.table import Table
from scipy.optimize import least_squares
from sklearn.base import BaseEstimator
from sklearn.metrics import mean_absolute_error, r2_score
from sklearn.model_selection import train_test_split

from service.core.model import halfwidth
from service.core.settings import Settings
from service.domains.mlir import features as mlir_features
from service.domains.mlir.runtime import target_scale
from training.core.datasets import DatasetError
from training.core.metrics import interval_coverage, point_metrics, summarize
from training.core.models import CANDIDATES, CostRegressor
from training.core.plots import pred_vs_measured, write_report
from training.core.publish import publish
from training.domains.mlir.data import DEFAULT_DIR, load_mlir, measured

log = logging.getLogger(__name__)

TARGET_OFFSETS: dict[str, float] = {
    "runtime_ms": 0.0,
    "instructions": 1.0,
    "vector_registers": 1.0,
    "spills": 1.0,
    "utilization": 0.0,
}
PROTOCOLS = ("random", "group-family")
# Vector registers an x86 CPU has, by the widest extension its flags name (AVX-512: zmm0-31; AVX and SSE:
# 16 architectural ones). Predictions and intervals never exceed the count of the CPU the data came from.
VECTOR_REGISTERS = (("avx512f", 32), ("avx", 16), ("sse2", 16))
COVERAGE = 0.9
MIN_ROWS = 30
# Summary values whose training range is recorded for out-of-distribution flags.
RANGE_FIELDS = ("log_flops", "log_bytes", "max_log_elements", "ops_total", "max_depth")


def log_target(frame: pd.DataFrame, target: str) -> tuple[np.ndarray, np.ndarray]:
    """Rows with a usable value of ``target`` and ``log(value + offset)``."""
    values = frame[target].to_numpy(dtype=float)
    offset = TARGET_OFFSETS[target]
    mask = np.isfinite(values) & (values + offset > 0)
    return mask, np.log(values[mask] + offset)


class BaselineFit(BaseEstimator):
    """Fits :class:`service.features.mlir.RuntimeBaseline`'s four figures to measured runtimes: least
    squares on the log scale with a soft-L1 loss, so that programs far off a single roofline do not drag
    the figures (over 1 MB of data, reductions and pooling move a median 6-8 GB/s here, elementwise
    chains 54 GB/s)."""

    def __init__(
        self,
        initial: tuple[float, float, float, float] = (1e-3, 2e-2, 1e7, 1e6),
        lower: tuple[float, float, float, float] = (1e-9, 1e-9, 1.0, 1.0),
        upper: tuple[float, float, float, float] = (1e4, 1e4, 1e15, 1e15),
    ) -> None:
        self.initial = initial
        self.lower = lower
        self.upper = upper

    def fit(self, X: pd.DataFrame, y: np.ndarray) -> BaselineFit:
        """``X``: a table of :data:`service.features.mlir.SUMMARY_COLUMNS`; ``y``: runtimes in ms."""
        y = np.asarray(y, dtype=float)
        usable = np.isfinite(y) & (y > 0)
        if usable.sum() < MIN_ROWS:
            raise ValueError(
                f"runtime baseline: {usable.sum()} programs with a runtime, at least {MIN_ROWS} needed"
            )
        rows, log_y = X.loc[usable], np.log(y[usable])

        def residual(theta: np.ndarray) -> np.ndarray:
            return mlir_features.RuntimeBaseline(*np.exp(theta)).log_ms(rows) - log_y

        # Bounded: a term the data do not need (no byte-bound programs, say) would otherwise drift towards
        # an infinite rate, which the card cannot hold and the service would refuse.
        solution = least_squares(
            residual,
            x0=np.log(self.initial),
            bounds=(np.log(self.lower), np.log(self.upper)),
            loss="soft_l1",
        )
        self.baseline_ = mlir_features.RuntimeBaseline(*(float(v) for v in np.exp(solution.x)))
        self.log_residual_median_ = float(np.median(np.abs(solution.fun)))
        return self


def fit_mlir(
    frame: pd.DataFrame,
    table: pd.DataFrame,
    targets: tuple[str, ...] = tuple(TARGET_OFFSETS),
    n_splits: int = 5,
    grouped: bool = True,
    candidates: tuple[str, ...] = CANDIDATES,
    group_folds: int | None = None,
) -> tuple[dict[str, tuple[CostRegressor, dict[str, Any]]], mlir_features.RuntimeBaseline]:
    """The runtime baseline fitted on ``frame``'s runtimes, and one regressor per target with enough rows
    on ``table`` (:func:`service.features.mlir.summary_table`) plus that baseline. ``grouped`` adds the
    leave-families-out ("unseen") calibration and picks each target's form by it: the deployed model is
    asked about programs unlike its training programs, and on the random folds a forest that memorised
    the families looks better than it is."""
    fitted = BaselineFit().fit(table, frame["runtime_ms"].to_numpy(dtype=float))
    baseline = fitted.baseline_
    log.info("runtime baseline %s (median |log error| %.3f)", baseline.to_card(), fitted.log_residual_median_)
    features = mlir_features.with_baseline(table, baseline)
    models: dict[str, tuple[CostRegressor, dict[str, Any]]] = {}
    for target in targets:
        mask, y = log_target(frame, target)
        if mask.sum() < MIN_ROWS:
            log.info("%s: %d usable rows, fewer than %d: no model", target, mask.sum(), MIN_ROWS)
            continue
        log.info("fitting %s on %d programs", target, mask.sum())
        groups = frame.loc[mask, "family"].to_numpy() if grouped else None
        model = CostRegressor(
            candidates=candidates,
            n_splits=n_splits,
            group_folds=group_folds,
            select_by="unseen" if grouped else "seen",
            baseline=mlir_features.BASELINE_COLUMN if target == "runtime_ms" else None,
        ).fit(features.loc[mask], y, groups=groups)
        models[target] = (model, {"offset": TARGET_OFFSETS[target], "n_train": int(mask.sum())})
    return models, baseline


def ceilings(environment: dict[str, Any]) -> dict[str, float]:
    """Upper limits of targets on the measured CPU: utilization (CPU time / (wall time x threads)) is at
    most 1; vector registers at most what the CPU's flags say it has (no limit for an unknown ISA)."""
    limits = {"utilization": 1.0}
    flags = set(environment.get("cpu_flags") or ())
    registers = next((count for flag, count in VECTOR_REGISTERS if flag in flags), None)
    if registers is not None:
        limits["vector_registers"] = float(registers)
    return limits


def profile(frame: pd.DataFrame, summaries: list[mlir_features.Summary]) -> dict[str, Any]:
    """What the training programs covered: op names, dialects, dtypes, families and value ranges."""
    ops: set[str] = set()
    dialects: set[str] = set()
    for s in summaries:
        ops.update(s.ops)
        dialects.update(s.dialects)
    ranges = {}
    for name in RANGE_FIELDS:
        values = np.array([s.values[name] for s in summaries], dtype=float)
        ranges[name] = [float(values.min()), float(values.max())]
    return {
        "ops": sorted(ops),
        "dialects": sorted(dialects),
        "families": sorted(frame["family"].unique()),
        "dtypes": sorted(frame["dtype"].unique()),
        "ranges": ranges,
    }


def publish_mlir(
    frame: pd.DataFrame,
    settings: Settings,
    name: str = "mlir",
    environment: dict[str, Any] | None = None,
    dataset: dict[str, Any] | None = None,
    n_splits: int = 5,
    candidates: tuple[str, ...] = CANDIDATES,
    group_folds: int | None = None,
) -> Path:
    """Fit every target on measured programs (``frame`` as :func:`training.data.mlir.measured` returns)
    and publish one version with its card (domain, feature version and columns, training profile)."""
    started = time.perf_counter()
    environment = environment or {}
    summaries = [mlir_features.summarize(t) for t in frame["mlir"]]
    table = mlir_features.summary_table(summaries)
    models, baseline = fit_mlir(
        frame, table, n_splits=n_splits, candidates=candidates, group_folds=group_folds
    )
    device = environment.get("cpu_model") or "local CPU"
    limits = ceilings(environment)
    for target, (_, extra) in models.items():
        extra["devices"] = [device]
        if target in limits:
            extra["ceiling"] = limits[target]
    card = {
        "domain": "mlir",
        "feature_version": mlir_features.FEATURE_VERSION,
        "feature_columns": list(mlir_features.FEATURE_COLUMNS),
        mlir_features.RuntimeBaseline.CARD_KEY: baseline.to_card(),
        "device": device,
        "datasets": [{**(dataset or {}), "rows": len(frame), "iree": environment.get("versions", {})}],
        "profile": profile(frame, summaries),
        "training_seconds": round(time.perf_counter() - started, 1),
    }
    return publish(settings.model_dir, name, card, models)


# First start trains one candidate with three folds of each kind: 109 s on 2 cores (the full configuration
# took 342 s there); `perfcost train mlir` trains the full one.
QUICK_CANDIDATES, QUICK_SPLITS = ("lightgbm",), 3


def train_mlir_model(
    settings: Settings, directory: Path = DEFAULT_DIR, name: str = "mlir", quick: bool = False
) -> Path:
    data = load_mlir(directory)
    frame = measured(data)
    data.report.rows = len(frame)
    data.report.log()
    if len(frame) < MIN_ROWS:
        raise DatasetError(f"{directory}: {len(frame)} measured programs, at least {MIN_ROWS} are needed")
    dataset = {"name": data.name, "rejected": data.report.rejected}
    if quick:
        dataset["configuration"] = "first-start (quick)"
        return publish_mlir(
            frame, settings, name, data.environment, dataset, QUICK_SPLITS, QUICK_CANDIDATES, QUICK_SPLITS
        )
    return publish_mlir(frame, settings, name, data.environment, dataset)


# --- evaluation ------------------------------------------------------------------------------------
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


def train_mlir(
    directory: Annotated[
        str, typer.Option("--data", help="Directory holding programs.jsonl.gz from 'perfcost collect mlir'")
    ] = "datasets/mlir-cpu-local",
    name: Annotated[str, typer.Option(help="Model name in the registry")] = "mlir",
) -> None:
    """Fit runtime, instruction, vector-register, spill and utilization models on MLIR programs."""
    settings = Settings()
    try:
        path = train_mlir_model(settings, Path(directory), name)
    except DatasetError as exc:
        raise typer.BadParameter(str(exc), param_hint="--data") from exc
    Console().print(f"published [bold]{name}[/] version {path.name} to {path}")
