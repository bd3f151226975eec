"""GEMM evaluation protocols, scored on the served model: each held-out fit is published, loaded by the
service's model runtime and asked through the GEMM domain, so the figures are those users get."""

from __future__ import annotations

import logging
import math
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import pandas as pd
import typer
from rich.console import Console
from rich.table import Table
from sklearn.model_selection import GroupShuffleSplit

from service.core.devices import DeviceCatalog, DeviceSpec
from service.core.model import TabularModel
from service.core.settings import Settings
from service.domains.gemm import DOMAIN as GEMM
from service.domains.gemm import features as gemm_features
from service.domains.gemm import runtime as gemm_domain
from service.domains.gemm.schemas import GemmInstance
from training.collect.gpu_sweep import calibration_sweep
from training.core.candidates import extrapolation_fold
from training.core.datasets import REGISTRY, DatasetError
from training.core.metrics import COVERAGE, summarize
from training.core.plots import error_bars, pred_vs_measured, write_report
from training.core.publish import publish
from training.domains.gemm.data import load_gemm
from training.domains.gemm.train import GemmFit, fit_gemm, gemm_card, merged

log = logging.getLogger(__name__)

# random: 80/20 (seed 0) by GEMM (repeat measurements of one GEMM stay on one side); group-device: leave
# one device out (optionally with a few calibration rows of the held-out device in training); extrapolate:
# per device, train on the 80% smallest GEMMs by FLOPs and test on the 20% largest; transfer: train on
# other datasets, test on every row of this one.
PROTOCOLS = ("random", "group-device", "extrapolate", "transfer")
GROUPS = ("device", "op", "dtype", "device_op", "device_dtype", "size")
# Float fields of a GEMM request; the other numeric configuration fields are whole numbers but these.
FLOAT_FIELDS = ("alpha", "beta")
BOOLEAN_FIELDS = ("quantize_activation",)
# What tells two campaigns' measurements of one GEMM apart without making them different GEMMs: the
# framework's version, and the kernel name it reports (versions of one framework name theirs differently).
CAMPAIGN_FIELDS = ("framework_version", "kernel")


def gemm_identity(frame: pd.DataFrame) -> np.ndarray:
    """A group number per row: rows with one device and configuration, whatever the campaign, share it."""
    columns = ["device", *(c for c in gemm_features.CONFIG_COLUMNS if c not in CAMPAIGN_FIELDS)]
    return frame[columns].astype(str).groupby(columns, sort=False, dropna=False).ngroup().to_numpy()


def random_split(frame: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """80/20 by GEMM (seed 0): the repeat measurements of one GEMM by several campaigns (aiconfigurator's
    framework versions) are all in training or all in test, never on both sides."""
    splitter = GroupShuffleSplit(n_splits=1, test_size=0.2, random_state=0)
    train_rows, test_rows = next(splitter.split(frame, groups=gemm_identity(frame)))
    return frame.iloc[train_rows], frame.iloc[test_rows]


def size_bucket(flops: np.ndarray) -> np.ndarray:
    decade = np.floor(np.log10(flops)).astype(int)
    return np.array([f"size:1e{d}-1e{d + 1} flop" for d in decade], dtype=object)


def summarize_gemm(predictions: pd.DataFrame, dataset: str, protocol: str, n_train: int) -> dict[str, Any]:
    """The metrics.json document, with groups per device, op, device / op and size decade."""
    header = {
        "dataset": dataset,
        "protocol": protocol,
        "n_train": n_train,
        "n_test": int((predictions["target"] == "runtime_ms").sum()),
    }
    by = predictions.assign(
        device_op=predictions["device"] + " / " + predictions["op"],
        device_dtype=predictions["device"] + " / " + predictions["dtype"],
    )
    return summarize(by, header, [(column, "") for column in GROUPS])


def gemm_instances(rows: pd.DataFrame) -> list[GemmInstance]:
    """Request instances for the rows of a GEMM table, exactly as a client would send them."""
    columns: dict[str, list[Any]] = {"device": rows["device"].tolist()}
    for col in gemm_features.CONFIG_COLUMNS:
        values = rows[col].tolist()
        if col in gemm_features.CATEGORICAL_FIELDS:
            columns[col] = [v if isinstance(v, str) else None for v in values]
        elif col in FLOAT_FIELDS:
            columns[col] = [None if v is None or math.isnan(v) else float(v) for v in values]
        elif col in BOOLEAN_FIELDS:
            columns[col] = [None if v is None or math.isnan(v) else bool(v) for v in values]
        else:
            columns[col] = [None if v is None or math.isnan(v) else int(v) for v in values]
    # Fields the row leaves unset take the API's defaults, as in a request that omits them.
    return [
        GemmInstance.model_validate({k: v for k, v in zip(columns, values, strict=True) if v is not None})
        for values in zip(*columns.values(), strict=True)
    ]


def served_predictions(
    fit: GemmFit, train: pd.DataFrame, test: pd.DataFrame, devices: dict[str, DeviceSpec]
) -> pd.DataFrame:
    """Held-out predictions as the service returns them: the fit is published, loaded by the service's
    model runtime and asked through the GEMM domain (values, floors, split, interval widening for unseen
    devices and larger sizes), so the scores are those of what users get."""
    trained = {d: devices[d] for d in sorted(train["device"].unique())}
    with tempfile.TemporaryDirectory(prefix="perfcost-eval-") as tmp:
        path = publish(Path(tmp), "gemm", GEMM, gemm_card(train, trained, [], 0.0), fit.models)
        model = TabularModel(
            path, gemm_features.FEATURE_VERSION, gemm_features.FEATURE_COLUMNS, gemm_features.with_k
        ).load()
        served = gemm_domain.predict(gemm_instances(test), COVERAGE, model, DeviceCatalog(devices.values()))
    parts = []
    for target, (regressor, _) in fit.models.items():
        answered = np.array([row[target] is not None for row in served], dtype=bool)
        measured = np.isfinite(test[target].to_numpy(dtype=float))
        keep = answered & measured
        if not keep.any():
            continue
        rows = test.loc[keep]
        values = [served[i][target] for i in np.flatnonzero(keep)]
        parts.append(
            pd.DataFrame(
                {
                    "target": target,
                    "model": regressor.best_name_,
                    "device": rows["device"].to_numpy(),
                    "op": rows["op"].to_numpy(),
                    "dtype": rows["dtype"].fillna("float32").to_numpy(),
                    "size": size_bucket(gemm_features.flops(rows)),
                    "true": rows[target].to_numpy(dtype=float),
                    "pred": [v["value"] for v in values],
                    "low": [v["low"] for v in values],
                    "high": [v["high"] for v in values],
                    "ood": [served[i]["out_of_distribution"] for i in np.flatnonzero(keep)],
                }
            )
        )
    return pd.concat(parts, ignore_index=True)


def _held_out(train: pd.DataFrame, test: pd.DataFrame, devices: dict[str, DeviceSpec]) -> pd.DataFrame:
    return served_predictions(fit_gemm(train, devices), train, test, devices)


def calibration_rows(held: pd.DataFrame, sweep: pd.DataFrame, count: int) -> pd.Index:
    """The ``count`` measured rows of one device nearest the calibration sweep's shapes (same op where the
    device has it; distance in log2 of batch, m, n, k), each row used once: what a user who ran the sweep
    on that device would have measured, where the dataset lacks the exact shapes."""
    if count > len(sweep):
        raise DatasetError(f"--calibrate {count}: the calibration sweep holds {len(sweep)} shapes")
    space = np.log2(held[list(gemm_features.SIZE_FIELDS)].to_numpy(dtype=float))
    chosen: list[int] = []
    free = np.ones(len(held), dtype=bool)
    for _, shape in sweep.head(count).iterrows():
        same_op = (held["op"] == shape["op"]).to_numpy()
        pool = free & same_op if (free & same_op).any() else free
        target = np.log2(shape[list(gemm_features.SIZE_FIELDS)].to_numpy(dtype=float))
        distance = np.where(pool, np.abs(space - target).sum(axis=1), np.inf)
        best = int(np.argmin(distance))
        chosen.append(best)
        free[best] = False
    return held.index[chosen]


def _group_device(
    frame: pd.DataFrame, devices: dict[str, DeviceSpec], calibrate: int, extra: pd.DataFrame | None = None
) -> tuple[pd.DataFrame, int]:
    """Each device of ``frame`` held out in turn; training is the other devices' rows of ``frame`` and of
    ``extra`` (other datasets), so the held-out device is unseen in every source. Returns the held-out
    predictions and the mean number of training rows per fold."""
    names = sorted(frame["device"].unique())
    if len(names) < 3:
        raise DatasetError(f"group-device needs at least 3 devices, the data have {len(names)}")
    sweep = calibration_sweep() if calibrate else None
    pool = frame if extra is None else pd.concat([frame, extra], ignore_index=True)
    parts, sizes = [], []
    for device in names:
        test = frame.loc[frame["device"] == device]
        train = pool.loc[pool["device"] != device]
        if sweep is not None:
            shots = calibration_rows(test, sweep, calibrate)
            train = pd.concat([train, test.loc[shots]])
            test = test.drop(shots)
        log.info("group-device: holding out %s (%d calibration rows)", device, calibrate)
        parts.append(_held_out(train, test, devices))
        sizes.append(len(train))
    return pd.concat(parts, ignore_index=True), int(np.mean(sizes))


def sampled(frame: pd.DataFrame, rows: int) -> pd.DataFrame:
    """About ``rows`` rows, seeded, each (device, dtype) in proportion: a quick iteration's evaluation."""
    share = rows / len(frame)
    keys = [frame["device"], frame["dtype"].fillna("float32")]
    return frame.groupby(keys, group_keys=False).sample(frac=share, random_state=0)


def extrapolation_split(frame: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Per device, its GEMMs up to the 80th percentile of FLOPs (train) and the larger ones (test)."""
    train_rows, test_rows = extrapolation_fold(np.log(gemm_features.flops(frame)), frame["device"].to_numpy())
    return frame.iloc[train_rows], frame.iloc[test_rows]


def evaluate_gemm_dataset(
    name: str,
    protocol: str,
    settings: Settings,
    calibrate: int = 0,
    train_datasets: Sequence[str] = (),
    sample: int = 0,
) -> tuple[dict[str, Any], pd.DataFrame]:
    if calibrate and protocol != "group-device":
        raise DatasetError("--calibrate applies to the group-device protocol only")
    if protocol == "transfer" and not train_datasets:
        raise DatasetError("the transfer protocol needs --train-dataset (the data to train on)")
    if train_datasets and protocol not in ("transfer", "group-device"):
        raise DatasetError("--train-dataset applies to the transfer and group-device protocols only")
    if name in train_datasets:
        raise DatasetError(f"--train-dataset {name} is the evaluated dataset itself")
    data = load_gemm(name, settings)
    frame, devices = data.frame, dict(data.devices)
    if sample and sample < len(frame):
        frame = sampled(frame, sample)
    extra = None
    if train_datasets:
        extra, extra_devices = merged([load_gemm(d, settings) for d in train_datasets])
        devices = extra_devices | devices
    if protocol == "random":
        train, test = random_split(frame)
        predictions = _held_out(train, test, devices)
        n_train = len(train)
    elif protocol == "group-device":
        predictions, n_train = _group_device(frame, devices, calibrate, extra)
    elif protocol == "extrapolate":
        train, test = extrapolation_split(frame)
        predictions = _held_out(train, test, devices)
        n_train = len(train)
    elif protocol == "transfer" and extra is not None:
        predictions = _held_out(extra, frame, devices)
        n_train = len(extra)
    else:
        raise DatasetError(f"unknown protocol {protocol!r}; choose from {', '.join(PROTOCOLS)}")
    label = protocol + (f"+calibrate{calibrate}" if calibrate else "")
    label += f"+sample{sample}" if sample else ""
    if protocol == "group-device" and train_datasets:
        label += "+with-" + "+".join(train_datasets)
    metrics = summarize_gemm(predictions, name, label, n_train)
    if train_datasets:
        metrics["train_datasets"] = list(train_datasets)
    return metrics, predictions


def write_gemm_plots(predictions: pd.DataFrame, metrics: dict[str, Any], folder: Path) -> list[Path]:
    written = []
    for target, rows in predictions.groupby("target", sort=False):
        m = metrics["targets"][target]
        title = f"{metrics['dataset']} ({metrics['protocol']}): MAPE {m['mape']:.2%}, R² {m['r2']:.3f}"
        written.append(
            pred_vs_measured(rows, "device", title, folder / f"pred_vs_measured_{target}.png", str(target))
        )
        groups = {g: v[target]["mape"] for g, v in metrics["groups"].items() if target in v}
        title = f"{metrics['dataset']} {target}: error by device and size"
        written.append(error_bars(groups, title, folder / f"error_by_group_{target}.png"))
    return written


def print_table(metrics: dict[str, Any], published: dict[str, Any]) -> None:
    table = Table(
        title=f"{metrics['dataset']} / {metrics['protocol']} "
        f"(n_train={metrics['n_train']}, n_test={metrics['n_test']})"
    )
    for col in ("target", "model", "R²", "MAPE", "median APE", "p90 APE", "≤10%", "90% cov.", "published"):
        table.add_column(col)
    for target, m in metrics["targets"].items():
        pub = published.get(target, {})
        table.add_row(
            target,
            m["model"],
            f"{m['r2']:.4f}",
            f"{m['mape']:.2%}",
            f"{m['median_ape']:.2%}",
            f"{m['p90_ape']:.2%}",
            f"{m['within_10pct']:.1%}",
            f"{m['interval_coverage_90']:.3f}",
            ", ".join(f"{k} {v}" for k, v in pub.items()) or "-",
        )
    console = Console()
    console.print(table)
    if "note" in published:
        console.print(f"published: {published['note']}")
    groups = Table(title="runtime by device, op and device / op")
    for col in ("group", "runtime MAPE", "median APE", "90% cov.", "n_test"):
        groups.add_column(col)
    for group, v in metrics["groups"].items():
        if not group.startswith("size:") and "runtime_ms" in v:
            r = v["runtime_ms"]
            groups.add_row(
                group,
                f"{r['mape']:.2%}",
                f"{r['median_ape']:.2%}",
                f"{r['interval_coverage_90']:.3f}",
                str(r["n_test"]),
            )
    console.print(groups)


def evaluate_gemm(
    dataset: Annotated[str, typer.Option("--dataset", "-d", help="GEMM dataset name")],
    protocol: Annotated[
        str,
        typer.Option(
            help="random (80/20, seed 0), group-device (leave one device out), extrapolate (per device, "
            "train on the 80% smallest GEMMs by FLOPs, test on the largest 20%) or transfer (train on "
            "--train-dataset, test on every row of --dataset)"
        ),
    ] = "random",
    calibrate: Annotated[
        int,
        typer.Option(
            min=0,
            max=32,
            help="group-device: add this many rows of the held-out device to training (those nearest the "
            "shipped calibration sweep's shapes); the rest are the test",
        ),
    ] = 0,
    train_dataset: Annotated[
        list[str] | None,
        typer.Option(
            "--train-dataset",
            help="transfer: dataset(s) to train on; group-device: dataset(s) added to each fold's "
            "training, without the held-out device's rows",
        ),
    ] = None,
    sample: Annotated[
        int,
        typer.Option(
            min=0,
            help="Evaluate on a seeded sample of about this many rows (each device and dtype in "
            "proportion) for a quick iteration; 0: every row. The report's protocol says so",
        ),
    ] = 0,
) -> None:
    """Evaluate GEMM models on held-out data as the service serves them; print a table next to the
    published figures."""
    if protocol not in PROTOCOLS:
        raise typer.BadParameter(f"must be one of {', '.join(PROTOCOLS)}", param_hint="--protocol")
    settings = Settings()
    try:
        metrics, predictions = evaluate_gemm_dataset(
            dataset,
            protocol,
            settings,
            calibrate=calibrate,
            train_datasets=train_dataset or (),
            sample=sample,
        )
    except DatasetError as exc:
        raise typer.BadParameter(str(exc), param_hint="--dataset / --protocol") from exc
    folder = write_report(settings.report_dir, metrics, predictions, write_gemm_plots)
    published = REGISTRY[dataset].published if dataset in REGISTRY else {}
    print_table(metrics, published)
    Console().print(f"wrote {folder / 'metrics.json'} and plots")
