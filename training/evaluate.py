"""Stage: evaluate. Held-out accuracy by protocol, written as ``metrics.json`` plus PNG plots."""

from __future__ import annotations

import json
import logging
import math
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import typer
from rich.console import Console
from rich.table import Table
from sklearn.metrics import r2_score
from sklearn.model_selection import train_test_split

from service.devices import DeviceCatalog, DeviceSpec
from service.domains import gemm as gemm_domain
from service.features import gemm as gemm_features
from service.model import TabularModel
from service.schemas.gemm import GemmInstance
from service.settings import Settings
from training.collect_gpu import calibration_sweep
from training.data.gemm import load_gemm
from training.data.registry import REGISTRY, DatasetError
from training.models import extrapolation_fold, publish
from training.train import GemmFit, fit_gemm, gemm_card, merged

log = logging.getLogger(__name__)
app = typer.Typer(help="Held-out evaluation: metrics.json and plots under reports/.", no_args_is_help=True)

# random: 80/20 (seed 0); group-device: leave one device out (optionally with a few calibration rows of
# the held-out device in training); extrapolate: per device, train on the 80% smallest GEMMs by FLOPs and
# test on the 20% largest; transfer: train on other datasets, test on every row of this one.
PROTOCOLS = ("random", "group-device", "extrapolate", "transfer")
# Float fields of a GEMM request; the other numeric configuration fields are whole numbers.
FLOAT_FIELDS = ("alpha", "beta")
COVERAGE = 0.9


def point_metrics(y_true: np.ndarray, y_pred: np.ndarray) -> dict[str, float]:
    ape = np.abs(y_pred - y_true) / y_true
    return {
        "r2": float(r2_score(y_true, y_pred)),
        "mape": float(np.mean(ape)),
        "median_ape": float(np.median(ape)),
        "p90_ape": float(np.quantile(ape, 0.9)),
        "within_10pct": float(np.mean(ape <= 0.10)),
    }


def size_bucket(flops: np.ndarray) -> np.ndarray:
    decade = np.floor(np.log10(flops)).astype(int)
    return np.array([f"size:1e{d}-1e{d + 1} flop" for d in decade], dtype=object)


def summarize(predictions: pd.DataFrame, dataset: str, protocol: str, n_train: int) -> dict[str, Any]:
    """The metrics.json document from per-row held-out predictions (target, true, pred, low, high, device)."""
    metrics: dict[str, Any] = {
        "dataset": dataset,
        "protocol": protocol,
        "n_train": n_train,
        "n_test": int(predictions.loc[predictions["target"] == "runtime_ms"].shape[0]),
        "targets": {},
        "groups": {},
    }
    for target, rows in predictions.groupby("target", sort=False):
        entry = {
            "model": rows["model"].iloc[0],
            **point_metrics(rows["true"].to_numpy(), rows["pred"].to_numpy()),
        }
        entry["interval_coverage_90"] = float(
            np.mean((rows["true"] >= rows["low"]) & (rows["true"] <= rows["high"]))
        )
        entry["n_test"] = len(rows)
        metrics["targets"][target] = entry
        by = rows.assign(device_op=rows["device"] + " / " + rows["op"])
        for column in ("device", "op", "device_op", "size"):
            for group, part in by.groupby(column):
                ape = np.abs(part["pred"] - part["true"]) / part["true"]
                metrics["groups"].setdefault(str(group), {})[target] = {
                    "mape": float(ape.mean()),
                    "median_ape": float(ape.median()),
                    "n_test": len(part),
                    "interval_coverage_90": float(
                        np.mean((part["true"] >= part["low"]) & (part["true"] <= part["high"]))
                    ),
                }
    return metrics


def gemm_instances(rows: pd.DataFrame) -> list[GemmInstance]:
    """Request instances for the rows of a GEMM table, exactly as a client would send them."""
    columns: dict[str, list[Any]] = {"device": rows["device"].tolist()}
    for col in gemm_features.CONFIG_COLUMNS:
        values = rows[col].tolist()
        if col in gemm_features.CATEGORICAL_FIELDS:
            columns[col] = [v if isinstance(v, str) else None for v in values]
        elif col in FLOAT_FIELDS:
            columns[col] = [None if v is None or math.isnan(v) else float(v) for v in values]
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
        path = publish(Path(tmp), "gemm", gemm_card(train, trained, [], 0.0), fit.models)
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
) -> pd.DataFrame:
    """Each device of ``frame`` held out in turn; training is the other devices' rows of ``frame`` and of
    ``extra`` (other datasets), so the held-out device is unseen in every source."""
    names = sorted(frame["device"].unique())
    if len(names) < 3:
        raise DatasetError(f"group-device needs at least 3 devices, the data have {len(names)}")
    sweep = calibration_sweep() if calibrate else None
    pool = frame if extra is None else pd.concat([frame, extra], ignore_index=True)
    parts = []
    for device in names:
        test = frame.loc[frame["device"] == device]
        train = pool.loc[pool["device"] != device]
        if sweep is not None:
            shots = calibration_rows(test, sweep, calibrate)
            train = pd.concat([train, test.loc[shots]])
            test = test.drop(shots)
        log.info("group-device: holding out %s (%d calibration rows)", device, calibrate)
        parts.append(_held_out(train, test, devices))
    return pd.concat(parts, ignore_index=True)


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
    extra = None
    if train_datasets:
        extra, extra_devices = merged([load_gemm(d, settings) for d in train_datasets])
        devices = extra_devices | devices
    if protocol == "random":
        train, test = train_test_split(frame, test_size=0.2, random_state=0)
        predictions = _held_out(train, test, devices)
        n_train = len(train)
    elif protocol == "group-device":
        predictions = _group_device(frame, devices, calibrate, extra)
        n_train = int(len(frame) * (frame["device"].nunique() - 1) / frame["device"].nunique())
        n_train += 0 if extra is None else len(extra)
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
    if protocol == "group-device" and train_datasets:
        label += "+with-" + "+".join(train_datasets)
    metrics = summarize(predictions, name, label, n_train)
    if train_datasets:
        metrics["train_datasets"] = list(train_datasets)
    return metrics, predictions


def plot_pred_vs_measured(
    rows: pd.DataFrame, target: str, metrics: dict[str, Any], folder: Path, by: str, offset: float = 0.0
) -> Path:
    """Predicted against measured on log-log axes, one colour per ``by`` group. ``offset`` is added to
    both axes so that count targets with zeros (MLIR spills) can be drawn on a log scale."""
    fig, ax = plt.subplots(figsize=(6, 6))
    for group, part in rows.groupby(by):
        ax.scatter(part["true"] + offset, part["pred"] + offset, s=4, alpha=0.4, label=str(group))
    lo = rows[["true", "pred"]].min().min() + offset
    hi = rows[["true", "pred"]].max().max() + offset
    ax.plot([lo, hi], [lo, hi], color="black", linewidth=1)
    ax.set(xscale="log", yscale="log", xlabel=f"measured {target}", ylabel=f"predicted {target}")
    m = metrics["targets"][target]
    ax.set_title(f"{metrics['dataset']} ({metrics['protocol']}): MAPE {m['mape']:.2%}, R² {m['r2']:.3f}")
    ax.legend(fontsize=6, markerscale=3)
    path = folder / f"pred_vs_measured_{target}.png"
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path


def write_plots(predictions: pd.DataFrame, metrics: dict[str, Any], folder: Path) -> list[Path]:
    written = []
    for target, rows in predictions.groupby("target", sort=False):
        written.append(plot_pred_vs_measured(rows, str(target), metrics, folder, by="device"))

        groups = {g: v[target]["mape"] for g, v in metrics["groups"].items() if target in v}
        fig, ax = plt.subplots(figsize=(8, max(3, 0.3 * len(groups))))
        ax.barh(list(groups), [100 * v for v in groups.values()])
        ax.set(xlabel="MAPE (%)", title=f"{metrics['dataset']} {target}: error by device and size")
        path = folder / f"error_by_group_{target}.png"
        fig.savefig(path, dpi=110, bbox_inches="tight")
        plt.close(fig)
        written.append(path)
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


@app.command("gemm")
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
) -> None:
    """Evaluate GEMM models on held-out data as the service serves them; print a table next to the
    published figures."""
    if protocol not in PROTOCOLS:
        raise typer.BadParameter(f"must be one of {', '.join(PROTOCOLS)}", param_hint="--protocol")
    settings = Settings()
    try:
        metrics, predictions = evaluate_gemm_dataset(
            dataset, protocol, settings, calibrate=calibrate, train_datasets=train_dataset or ()
        )
    except DatasetError as exc:
        raise typer.BadParameter(str(exc), param_hint="--dataset / --protocol") from exc
    folder = settings.report_dir / dataset / metrics["protocol"]
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "metrics.json").write_text(json.dumps(metrics, indent=1))
    write_plots(predictions, metrics, folder)
    published = REGISTRY[dataset].published if dataset in REGISTRY else {}
    print_table(metrics, published)
    Console().print(f"wrote {folder / 'metrics.json'} and plots")


@app.command("cpu")
def evaluate_cpu(
    dataset: Annotated[
        str, typer.Option("--dataset", "-d", help="spec-cpu2017, uci-computer-hardware or ncpp-spr")
    ] = "spec-cpu2017",
    protocol: Annotated[
        str | None,
        typer.Option(
            help="spec-cpu2017: random | group-model; uci-computer-hardware: random | kfold; "
            "ncpp-spr: train-test (default: the dataset's first)"
        ),
    ] = None,
) -> None:
    """Evaluate CPU models on held-out data: metrics.json, plots and a table against the published figures."""
    # Imported here: training.cpu imports this module (point_metrics).
    from training.cpu import evaluate_cpu_dataset, summary_rows, write_cpu_plots

    settings = Settings()
    try:
        metrics, predictions = evaluate_cpu_dataset(dataset, protocol, settings)
    except DatasetError as exc:
        raise typer.BadParameter(str(exc), param_hint="--dataset/--protocol") from exc
    folder = settings.report_dir / dataset / metrics["protocol"]
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "metrics.json").write_text(json.dumps(metrics, indent=1))
    write_cpu_plots(predictions, metrics, folder)
    sizes = f"n_train={metrics['n_train']}, n_test={metrics['n_test']}"
    table = Table(title=f"{dataset} / {metrics['protocol']} ({sizes})")
    for col in ("suite / target", "R²", "MAPE", "90% cov.", "acceptance bar", "pass"):
        table.add_column(col)
    for row in summary_rows(metrics):
        passed = "-" if row.passed is None else ("yes" if row.passed else "NO")
        table.add_row(row.name, f"{row.r2:.4f}", f"{row.mape:.2%}", f"{row.coverage:.3f}", row.bar, passed)
    console = Console()
    console.print(table)
    for name, values in metrics.get("baseline", {}).items():
        console.print(f"baseline {name}: " + ", ".join(f"{k} {v:.4g}" for k, v in values.items()))
    console.print(f"wrote {folder / 'metrics.json'} and plots")


@app.command("mlir")
def evaluate_mlir(
    directory: Annotated[
        Path, typer.Option("--data", help="Directory holding programs.jsonl.gz from 'perfcost collect mlir'")
    ] = Path("datasets") / "mlir-cpu-local",
    protocol: Annotated[
        str, typer.Option(help="random (80/20, seed 0) or group-family (leave one program family out)")
    ] = "random",
) -> None:
    """Evaluate the MLIR cost models on held-out programs: metrics.json, plots and a table."""
    # Imported here: training.mlir imports this module (point_metrics).
    from training.mlir import PROTOCOLS as MLIR_PROTOCOLS
    from training.mlir import evaluate_cli

    if protocol not in MLIR_PROTOCOLS:
        raise typer.BadParameter(f"must be one of {', '.join(MLIR_PROTOCOLS)}", param_hint="--protocol")
    try:
        evaluate_cli(directory, protocol, Settings())
    except DatasetError as exc:
        raise typer.BadParameter(str(exc), param_hint="--data") from exc
