"""The report of an evaluation: ``metrics.json`` and PNG plots of the held-out predictions (predicted
against measured, error by group)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import pandas as pd

DPI = 110


def pred_vs_measured(
    rows: pd.DataFrame,
    by: str,
    title: str,
    path: Path,
    label: str = "",
    offset: float = 0.0,
    legend: bool = True,
) -> Path:
    """Predicted against measured on log-log axes, one colour per ``by`` group. ``offset`` is added to
    both axes so that count targets with zeros (MLIR spills) can be drawn on a log scale."""
    fig, ax = plt.subplots(figsize=(6, 6))
    for group, part in rows.groupby(by):
        ax.scatter(part["true"] + offset, part["pred"] + offset, s=4, alpha=0.4, label=str(group))
    lo = rows[["true", "pred"]].min().min() + offset
    hi = rows[["true", "pred"]].max().max() + offset
    ax.plot([lo, hi], [lo, hi], color="black", linewidth=1)
    ax.set(
        xscale="log", yscale="log", xlabel=f"measured {label}".strip(), ylabel=f"predicted {label}".strip()
    )
    ax.set_title(title)
    if legend:
        ax.legend(fontsize=6, markerscale=3)
    fig.savefig(path, dpi=DPI, bbox_inches="tight")
    plt.close(fig)
    return path


def error_bars(errors: dict[str, float], title: str, path: Path) -> Path:
    """Horizontal bars of MAPE (given as fractions) per group."""
    fig, ax = plt.subplots(figsize=(8, max(3, 0.3 * len(errors))))
    ax.barh(list(errors), [100 * v for v in errors.values()])
    ax.set(xlabel="MAPE (%)", title=title)
    fig.savefig(path, dpi=DPI, bbox_inches="tight")
    plt.close(fig)
    return path


def write_report(
    report_dir: Path,
    metrics: dict[str, Any],
    predictions: pd.DataFrame,
    plots: Callable[[pd.DataFrame, dict[str, Any], Path], list[Path]],
) -> Path:
    """``<report_dir>/<dataset>/<protocol>/metrics.json`` and the domain's ``plots``; the folder."""
    folder = report_dir / metrics["dataset"] / metrics["protocol"]
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "metrics.json").write_text(json.dumps(metrics, indent=1))
    plots(predictions, metrics, folder)
    return folder
