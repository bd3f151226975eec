"""Stage: evaluate. ``perfcost evaluate gemm|cpu|mlir``: held-out figures as metrics.json, PNG plots
and a printed table."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from service.core.settings import Settings
from training.core.datasets import REGISTRY, DatasetError
from training.core.plots import write_report
from training.domains.cpu.train import evaluate_cpu_dataset, summary_rows, write_cpu_plots
from training.domains.gemm.evaluate import PROTOCOLS, evaluate_gemm_dataset, write_gemm_plots
from training.domains.mlir.train import PROTOCOLS as MLIR_PROTOCOLS
from training.domains.mlir.train import evaluate_cli

app = typer.Typer(help="Held-out evaluation: metrics.json and plots under reports/.", no_args_is_help=True)


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
    settings = Settings()
    try:
        metrics, predictions = evaluate_cpu_dataset(dataset, protocol, settings)
    except DatasetError as exc:
        raise typer.BadParameter(str(exc), param_hint="--dataset/--protocol") from exc
    folder = write_report(settings.report_dir, metrics, predictions, write_cpu_plots)
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
    if protocol not in MLIR_PROTOCOLS:
        raise typer.BadParameter(f"must be one of {', '.join(MLIR_PROTOCOLS)}", param_hint="--protocol")
    try:
        evaluate_cli(directory, protocol, Settings())
    except DatasetError as exc:
        raise typer.BadParameter(str(exc), param_hint="--data") from exc
