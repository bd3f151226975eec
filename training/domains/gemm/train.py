"""Stage: train. ``perfcost train gemm`` fits every GEMM target and publishes one model version."""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import pandas as pd
import typer
from rich.console import Console

from service.core.devices import DeviceSpec
from service.core.settings import Settings
from service.domains.gemm import DOMAIN as GEMM
from service.domains.gemm import features as gemm_features
from service.domains.gemm import profile as gemm_profile
from training.core.candidates import REGIMES
from training.core.cluster import ClusterError, training_on_cluster
from training.core.datasets import DatasetError, get_spec, is_available
from training.core.models import CostRegressor
from training.core.publish import publish
from training.core.split_regressor import SplitRegressor
from training.domains.gemm.data import GemmData, available_gemm_datasets, load_gemm, load_gemm_dir

log = logging.getLogger(__name__)

# Targets, learned on the log scale; True: constrained never to decrease as k grows (more work along the
# reduction dimension can neither shorten a GEMM nor save energy; power has no such law).
MONOTONE_IN_K = ("runtime_ms", "energy_j")
GEMM_TARGETS: dict[str, bool] = {t: t in MONOTONE_IN_K for t in GEMM.targets}
# One structure for every target: a LightGBM learns, from inputs with no figure of the device itself
# (gemm_features.MODEL_INPUTS), the log ratio of the target to a physics figure of the device: runtime to the
# reference time (the physics time plus service.domains.gemm.figures.REFERENCE_MS), power to the TDP, energy
# to the TDP over the reference time. Trees predict within the ratios they were fit on, so a new GPU or a
# larger GEMM is priced by its physics, and no runtime is ever predicted below the device's roofline (the
# floor): utilization never exceeds 1. The baselines are non-decreasing in k, so the monotone guarantee holds
# for the sums. aiconfigurator group-device, all 96,000 rows: 26.6% runtime MAPE, every GPU's own rows held
# out (the former choice among a LightGBM and a random forest, raw or relative, with every device figure as
# input: 26.3% on a 10,000-row sample); NeuSight extrapolate 28.6% (57.2% with k-growing inputs).
GEMM_BASELINES = {"runtime_ms": "log_reference_ms", "power_w": "log_tdp_w", "energy_j": "log_tdp_energy_j"}
GEMM_FLOORS = {"runtime_ms": "log_roofline_ms"}
GEMM_CANDIDATES = ("lightgbm",)
# A device with only a few rows (the calibration sweep a user ran on a new GPU) gets a correction of its
# own on these columns: where a GEMM sits between launch-bound and throughput-bound, its dtype, and its
# intensity against the ridge point (monotone in k where they grow with it, as the model is).
CORRECT_ON = ("log_reference_ms", "dtype_code", "intensity_over_ridge")
MIN_ROWS = 30
# Monotone targets are fit in two parts, k below this and k from it on (see SplitRegressor): below ~32 a
# GEMM's time is mostly the call and the write of C, and under one constraint those rows bent the fit of
# every larger k. Bundled CPU data, 80/20 split (seed 0): one constrained model 8.69% MAPE, 1537^3 fp64
# at 224-296 ms against 138.8 measured; split at 32, 7.62% and 1537^3 right. The split point is the
# best of 16 / 32 / 64 in 5-fold CV on the training part alone (8.96 / 8.59 / 8.59%).
K_SPLIT = 32


@dataclass
class GemmFit:
    models: dict[str, tuple[CostRegressor | SplitRegressor, dict[str, Any]]]


def gemm_log_target(frame: pd.DataFrame, target: str, baseline: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Rows with a usable measurement of ``target`` and a finite baseline (a device without a TDP has
    none for power), and the target's log value."""
    values = frame[target].to_numpy(dtype=float)
    measured = np.isfinite(values) & (values > 0)
    mask = measured & np.isfinite(baseline)
    if (measured & ~mask).any():
        devices = sorted(frame.loc[measured & ~mask, "device"].unique())
        log.warning(
            "%s: %d measured rows left out of training: no physics baseline for %s (a device without a "
            "TDP in its spec has no power or energy baseline; add tdp_w to its device.json)",
            target,
            int((measured & ~mask).sum()),
            ", ".join(devices),
        )
    return mask, np.log(values[mask])


def fit_gemm(
    frame: pd.DataFrame,
    devices: dict[str, DeviceSpec],
    regimes: tuple[str, ...] = REGIMES,
) -> GemmFit:
    """Fit every GEMM target with measurements; ``regimes`` are the calibrations to compute (one form per
    target: nothing is selected, the K-fold regime only names the CV score the card reports first)."""
    features = gemm_features.build_features(frame, devices)
    models: dict[str, tuple[CostRegressor | SplitRegressor, dict[str, Any]]] = {}
    for target, monotone in GEMM_TARGETS.items():
        baseline, floor = GEMM_BASELINES[target], GEMM_FLOORS.get(target)
        mask, y = gemm_log_target(frame, target, features[baseline].to_numpy())
        if mask.sum() < MIN_ROWS:
            log.info("%s: %d measured rows, fewer than %d: no model", target, mask.sum(), MIN_ROWS)
            continue
        rows = frame.loc[mask]
        log.info("fitting %s on %d rows from %d devices", target, mask.sum(), rows["device"].nunique())
        groups = rows["device"].to_numpy()
        increasing: tuple[str, ...] = gemm_features.INCREASING_WITH_WORK if monotone else ()
        model: CostRegressor | SplitRegressor = (
            SplitRegressor(
                "k",
                K_SPLIT,
                gemm_features.with_k,
                select_by="seen",
                increasing=increasing,
                regimes=regimes,
                baseline=baseline,
                floor=floor,
                min_rows=MIN_ROWS,
                # k = 1 is the outer product, which libraries run on another, slower path (see
                # gemm_features.INCREASING_IN_K): from k = 2 on the prediction never decreases.
                capped_from=2,
                inputs=gemm_features.MODEL_INPUTS,
                relative=True,
                candidates=GEMM_CANDIDATES,
                correct_on=CORRECT_ON,
            )
            if monotone
            else CostRegressor(
                candidates=GEMM_CANDIDATES,
                select_by="seen",
                regimes=regimes,
                baseline=baseline,
                floor=floor,
                inputs=gemm_features.MODEL_INPUTS,
                relative=True,
                correct_on=CORRECT_ON,
            )
        )
        model.fit(features.loc[mask], y, groups=groups)
        models[target] = (
            model,
            {
                "increasing_in": list(increasing),
                "n_train": int(mask.sum()),
                "devices": sorted(rows["device"].unique()),
            },
        )
    return GemmFit(models=models)


def default_gemm_datasets(settings: Settings) -> list[str]:
    """Bundled data always; public datasets when cached or mirrored (never a surprise download)."""
    chosen = []
    for name in available_gemm_datasets(settings):
        try:
            spec = get_spec(name)
        except DatasetError:
            chosen.append(name)  # bundled
            continue
        if is_available(spec, settings):
            chosen.append(name)
        else:
            log.warning(
                "skipping %s: not cached and not in a mirror (run 'perfcost data fetch %s' or set "
                "PERFCOST_DATA_MIRROR)",
                name,
                name,
            )
    return chosen


def train_gemm_model(
    datasets: list[str], settings: Settings, name: str = "gemm", directories: Sequence[Path] = ()
) -> str:
    """Load the named datasets and measurement directories, fit every GEMM target and publish;
    returns the new version."""
    loaded = [load_gemm(d, settings) for d in datasets] + [load_gemm_dir(d) for d in directories]
    for data in loaded:
        if data.report.rejected:
            Console(stderr=True).print(data.report.table())
    return publish_gemm(loaded, settings, name)


def gemm_card(
    frame: pd.DataFrame,
    devices: dict[str, DeviceSpec],
    datasets: list[dict[str, Any]],
    seconds: float,
    **extra: Any,
) -> dict[str, Any]:
    """The card of a GEMM model fit on ``frame`` (what the service reads besides the model files)."""
    return {
        "datasets": datasets,
        "devices": [spec.model_dump() for spec in devices.values()],
        "profile": gemm_profile.profile(frame),
        "training_seconds": round(seconds, 1),
        **extra,
    }


def dataset_entry(data: GemmData) -> dict[str, Any]:
    entry: dict[str, Any] = {"name": data.name, "rows": len(data.frame), "files": data.files}
    entry["rejected"] = data.report.rejected
    if data.report.selection is not None:
        entry["selection"] = data.report.selection
    return entry


def merged(loaded: Sequence[GemmData]) -> tuple[pd.DataFrame, dict[str, DeviceSpec]]:
    """The datasets' rows in one table and the union of their devices."""
    if not loaded:
        raise DatasetError("no GEMM dataset to train on")
    devices: dict[str, DeviceSpec] = {}
    for d in loaded:
        devices.update(d.devices)
    return pd.concat([d.frame for d in loaded], ignore_index=True), devices


def publish_gemm(loaded: list[GemmData], settings: Settings, name: str = "gemm", **extra: Any) -> str:
    started = time.perf_counter()
    frame, devices = merged(loaded)
    fit = fit_gemm(frame, devices)
    card = gemm_card(
        frame, devices, [dataset_entry(d) for d in loaded], time.perf_counter() - started, **extra
    )
    path = publish(settings.model_dir, name, GEMM, card, fit.models)
    return path.name


def train_gemm(
    dataset: Annotated[
        list[str] | None,
        typer.Option("--dataset", "-d", help="Dataset name (repeatable); default: bundled + cached"),
    ] = None,
    directory: Annotated[
        list[Path] | None,
        typer.Option(
            "--from",
            help="Your own measurements: a directory with measurements.csv (m, n, k, runtime_ms, and "
            "optionally batch, op, dtype, layout, kernel fields, power_w, energy_j) and device.json "
            "(repeatable; replaces the default datasets unless --dataset is also given)",
        ),
    ] = None,
    name: Annotated[str, typer.Option(help="Model name in the registry")] = "gemm",
    scheduler: Annotated[
        str | None,
        typer.Option(
            help="Train on a Dask cluster: a scheduler's address (tcp://host:port), or 'local' for a "
            "LocalCluster of --workers processes. CV folds run as tasks, LightGBM fits on all workers"
        ),
    ] = None,
    workers: Annotated[int, typer.Option(min=1, help="Worker processes of --scheduler local")] = 2,
) -> None:
    """Fit runtime, power and energy models on GEMM datasets and publish a new version."""
    settings = Settings()
    chosen = dataset or ([] if directory else default_gemm_datasets(settings))
    cluster = (
        training_on_cluster(None if scheduler == "local" else scheduler, workers)
        if scheduler is not None
        else nullcontext()
    )
    try:
        with cluster:
            version = train_gemm_model(chosen, settings, name, directory or ())
    except DatasetError as exc:
        raise typer.BadParameter(str(exc), param_hint="--from" if directory else "--dataset") from exc
    except ClusterError as exc:
        raise typer.BadParameter(str(exc), param_hint="--scheduler") from exc
    Console().print(f"published [bold]{name}[/] version {version} to {settings.model_dir / name / version}")
