"""MLIR cost models: the fit, the card and publishing, ``perfcost train mlir`` and first start's model.

Five targets, each a :class:`training.core.models.CostRegressor` (LightGBM vs random forest by CV) on the
features of :mod:`service.domains.mlir.features`: ``runtime_ms``, ``instructions``, ``vector_registers``,
``spills`` and ``utilization``. Models learn ``log(value + offset)``: the count targets can be 0 (no
spills, or a program IREE folds away entirely), so they carry an offset of 1 that the service subtracts
again. Calibration groups are program families, so the "unseen" conformal grid is the error on a family
training never saw; the service uses it for programs flagged out of distribution. Held-out evaluation is
in :mod:`training.domains.mlir.evaluate`.
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
from scipy.optimize import least_squares
from sklearn.base import BaseEstimator
from sklearn.utils import Tags
from sklearn.utils.validation import check_consistent_length, column_or_1d

from service.core.settings import Settings
from service.domains.mlir import DOMAIN as MLIR
from service.domains.mlir import features as mlir_features
from service.domains.mlir.profile import profile
from training.collect.mlir.records import PROGRAMS
from training.core.candidates import CANDIDATES
from training.core.datasets import DatasetError
from training.core.models import CostRegressor, validated_frame
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
# Vector registers an x86 CPU has, by the widest extension its flags name (AVX-512: zmm0-31; AVX and SSE:
# 16 architectural ones). Predictions and intervals never exceed the count of the CPU the data came from.
VECTOR_REGISTERS = (("avx512f", 32), ("avx", 16), ("sse2", 16))
MIN_ROWS = 30
# The columns of a summary table that RuntimeBaseline.log_ms reads: log FLOPs, log bytes, ops that do work.
BASELINE_INPUTS = ("log_flops", "log_bytes", "work_ops")


def log_target(frame: pd.DataFrame, target: str) -> tuple[np.ndarray, np.ndarray]:
    """Rows with a usable value of ``target`` and ``log(value + offset)``."""
    values = frame[target].to_numpy(dtype=float)
    offset = TARGET_OFFSETS[target]
    mask = np.isfinite(values) & (values + offset > 0)
    return mask, np.log(values[mask] + offset)


class BaselineFit(BaseEstimator):
    """Fits :class:`service.domains.mlir.features.RuntimeBaseline`'s four figures to measured runtimes: least
    squares on the log scale with a soft-L1 loss, so that programs far off a single roofline do not drag
    the figures (over 1 MB of data, reductions and pooling move a median 6-8 GB/s here, elementwise
    chains 54 GB/s).

    ``columns`` name the columns of ``X`` that hold :data:`BASELINE_INPUTS` (an array's are ``x0``, ``x1``,
    ...), and ``min_rows`` is how many positive runtimes a fit needs: both have the summary table's values
    by default, and other values let scikit-learn's estimator checks fit it on their own small arrays."""

    def __init__(
        self,
        initial: tuple[float, float, float, float] = (1e-3, 2e-2, 1e7, 1e6),
        lower: tuple[float, float, float, float] = (1e-9, 1e-9, 1.0, 1.0),
        upper: tuple[float, float, float, float] = (1e4, 1e4, 1e15, 1e15),
        columns: tuple[str, str, str] = BASELINE_INPUTS,
        min_rows: int = MIN_ROWS,
    ) -> None:
        self.initial = initial
        self.lower = lower
        self.upper = upper
        self.columns = columns
        self.min_rows = min_rows

    def __sklearn_tags__(self) -> Tags:
        tags = super().__sklearn_tags__()
        # It fits runtimes, which are positive (rows with none, or none above 0, are left out).
        tags.target_tags.required = True
        tags.target_tags.positive_only = True
        return tags

    def fit(self, X: Any, y: Any) -> BaselineFit:
        """``X``: a table of :data:`service.domains.mlir.features.SUMMARY_COLUMNS` (any table or array
        holding ``columns``); ``y``: runtimes in ms."""
        # Rows without a positive runtime (NaN, 0) are left out below, not refused: y is checked apart from X,
        # for its shape and type only.
        X, y = validated_frame(
            self, X, y, validate_separately=({}, {"ensure_2d": False, "ensure_all_finite": False})
        )
        y = column_or_1d(y, dtype=float, warn=True)
        check_consistent_length(X, y)
        missing = sorted(set(self.columns) - set(X.columns))
        if missing:
            raise ValueError(f"columns: X has no column(s) {missing} (X has {X.shape[1]} feature(s))")
        usable = np.isfinite(y) & (y > 0)
        if usable.sum() < self.min_rows:
            raise ValueError(
                f"runtime baseline: {usable.sum()} programs with a runtime (of {len(y)} sample(s)), at least "
                f"{self.min_rows} needed"
            )
        # The three columns, under the names RuntimeBaseline reads (the same values: the same fit).
        rows = X.loc[usable, list(self.columns)].set_axis(list(BASELINE_INPUTS), axis=1)
        log_y = np.log(y[usable])

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
    on ``table`` (:func:`service.domains.mlir.features.summary_table`) plus that baseline. ``grouped``
    adds the leave-families-out ("unseen") calibration and picks each target's form by it: the deployed
    model is asked about programs unlike its training programs, and on the random folds a forest that
    memorised the families looks better than it is."""
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
    """Fit every target on measured programs (``frame`` as :func:`training.domains.mlir.data.measured`
    returns) and publish one version with its card (the runtime baseline, device, dataset and training
    profile; :func:`training.core.publish.publish` adds the domain, feature version and columns)."""
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
        mlir_features.RuntimeBaseline.CARD_KEY: baseline.to_card(),
        "device": device,
        "datasets": [{**(dataset or {}), "rows": len(frame), "iree": environment.get("versions", {})}],
        "profile": profile(frame, summaries),
        "training_seconds": round(time.perf_counter() - started, 1),
    }
    return publish(settings.model_dir, name, MLIR, card, models)


# First start trains one candidate with three folds of each kind: 109 s on 2 cores (the full configuration
# took 342 s there); `perfcost train mlir` trains the full one.
QUICK_CANDIDATES, QUICK_SPLITS = ("lightgbm",), 3


def train_mlir_model(
    settings: Settings, directory: Path = DEFAULT_DIR, name: str = "mlir", quick: bool = False
) -> Path:
    """Publish a model of ``directory``'s measured programs (``quick``: first start's configuration)."""
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


def first_start(settings: Settings) -> str:
    """First start's default model: the quick configuration on the bundled programs."""
    data = settings.bundled_data_dir / DEFAULT_DIR.name  # present: why_not checked it
    train_mlir_model(settings, data, quick=True)
    return f"trained on {data} (first-start configuration; 'perfcost train mlir' fits the full one)"


def why_not(settings: Settings) -> str | None:
    """First start trains on the bundled programs: without them there is nothing to train on."""
    if not (settings.bundled_data_dir / DEFAULT_DIR.name / PROGRAMS).is_file():
        return f"no bundled MLIR programs in {settings.bundled_data_dir / DEFAULT_DIR.name}"
    return None


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
