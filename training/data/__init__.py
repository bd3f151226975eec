"""Stage: data. ``perfcost data list`` and ``perfcost data fetch``; registry and loaders live beside."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from service.core.settings import Settings
from training.core.datasets import REGISTRY, DatasetError, fetch, get_spec, is_available

app = typer.Typer(
    help="Public and bundled datasets: list, fetch (download-or-mirror, sha256-checked).",
    no_args_is_help=True,
)


@app.command("list")
def list_datasets() -> None:
    """Every registered dataset with its domain, rows, licence, source and whether it is cached."""
    from training.domains.gemm.data import bundled_gemm_datasets

    settings = Settings()
    table = Table(title="perfcost datasets")
    for col in ("name", "domain", "rows", "licence", "source", "cached"):
        table.add_column(col, overflow="fold")
    for name, spec in sorted(REGISTRY.items()):
        where = "mirror" if settings.data_mirror and (settings.data_mirror / name).is_dir() else "cache"
        table.add_row(
            name,
            spec.domain,
            f"{spec.rows:,}" if spec.rows else "?",
            spec.license,
            spec.repository,
            f"yes ({where})" if is_available(spec, settings) else "no",
        )
    for name, path in bundled_gemm_datasets(settings).items():
        rows = sum(1 for _ in (path / "measurements.csv").open()) - 1
        table.add_row(
            name, "gemm", f"{rows:,}", "Apache-2.0 (measured by perfcost)", str(path), "yes (bundled)"
        )
    Console().print(table)


@app.command("fetch")
def fetch_datasets(
    names: Annotated[list[str] | None, typer.Argument(help="Dataset names")] = None,
    all_: Annotated[bool, typer.Option("--all", help="Fetch every registered dataset")] = False,
) -> None:
    """Download (or take from PERFCOST_DATA_MIRROR) and verify datasets into PERFCOST_DATA_HOME."""
    if not names and not all_:
        raise typer.BadParameter("name at least one dataset, or pass --all", param_hint="NAMES")
    settings = Settings()
    console = Console()
    failed = 0
    for name in sorted(REGISTRY) if all_ else names or []:
        try:
            paths = fetch(get_spec(name), settings)
        except DatasetError as exc:
            console.print(f"[red]error[/]: {exc}")
            failed += 1
            continue
        console.print(f"{name}: {len(paths)} files verified ({next(iter(paths.values())).parent})")
    if failed:
        raise typer.Exit(code=1)
