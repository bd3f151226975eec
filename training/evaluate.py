"""Stage: evaluate. Held-out accuracy by protocol, written as ``metrics.json`` plus PNG plots."""

from __future__ import annotations

import json
import logging
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

from service.features import gemm as gemm_features
from service.settings import Settings
from training.data.gemm import load_gemm
from training.data.registry import REGISTRY, DatasetError
from training.train import fit_gemm, gemm_log_target

log = logging.getLogger(__name__)
app = typer.Typer(help="Held-out evaluation: metrics.json and plots under reports/.", no_args_is_help=True)

PROTOCOLS = ("random", "group-device")
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
        for column in ("device", "size"):
            for group, part in rows.groupby(column):
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


def _held_out(
    train: pd.DataFrame, test: pd.DataFrame, devices: dict, select_by: str, regime: str
) -> pd.DataFrame:
    fit = fit_gemm(train, devices, select_by=select_by, regimes=(regime,))
    features = gemm_features.build_features(test, devices)
    parts = []
    for target, (model, _) in fit.models.items():
        mask, _ = gemm_log_target(test, features, target)
        if not mask.any():
            continue
        X = features.loc[mask]
        center = model.predict(X)
        width = model.halfwidths(X, regime, COVERAGE)
        rows = test.loc[mask]
        parts.append(
            pd.DataFrame(
                {
                    "target": target,
                    "model": model.best_name_,
                    "device": rows["device"].to_numpy(),
                    "size": size_bucket(gemm_features.flops(rows)),
                    "true": rows[target].to_numpy(dtype=float),
                    "pred": np.exp(center),
                    "low": np.exp(center - width),
                    "high": np.exp(center + width),
                }
            )
        )
    return pd.concat(parts, ignore_index=True)


def evaluate_gemm_dataset(
    name: str, protocol: str, settings: Settings
) -> tuple[dict[str, Any], pd.DataFrame]:
    data = load_gemm(name, settings)
    frame = data.frame
    if protocol == "random":
        train, test = train_test_split(frame, test_size=0.2, random_state=0)
        predictions = _held_out(train, test, data.devices, "seen", "seen")
        n_train = len(train)
    elif protocol == "group-device":
        names = sorted(frame["device"].unique())
        if len(names) < 3:
            raise DatasetError(f"{name}: group-device needs at least 3 devices, the dataset has {len(names)}")
        parts = []
        for device in names:
            log.info("group-device: holding out %s", device)
            held = frame["device"] == device
            parts.append(_held_out(frame.loc[~held], frame.loc[held], data.devices, "unseen", "unseen"))
        predictions = pd.concat(parts, ignore_index=True)
        n_train = int(len(frame) * (len(names) - 1) / len(names))
    else:
        raise DatasetError(f"unknown protocol {protocol!r}; choose from {', '.join(PROTOCOLS)}")
    return summarize(predictions, name, protocol, n_train), predictions


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
    if metrics["protocol"] == "group-device":
        groups = Table(title="held-out devices")
        for col in ("device", "runtime MAPE", "median APE", "90% cov.", "n_test"):
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
        str, typer.Option(help="random (80/20, seed 0) or group-device (leave one device out)")
    ] = "random",
) -> None:
    """Evaluate GEMM models on held-out data; print a table next to the published figures."""
    if protocol not in PROTOCOLS:
        raise typer.BadParameter(f"must be one of {', '.join(PROTOCOLS)}", param_hint="--protocol")
    settings = Settings()
    try:
        metrics, predictions = evaluate_gemm_dataset(dataset, protocol, settings)
    except DatasetError as exc:
        raise typer.BadParameter(str(exc), param_hint="--dataset") from exc
    folder = settings.report_dir / dataset / protocol
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
