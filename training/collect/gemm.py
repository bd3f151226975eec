"""What the CPU and GPU GEMM collectors share: a configuration's shape and key, its timing, the CSV
columns every GEMM row has, and the loop that measures the configurations not yet in the CSV."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from service.domains.gemm.dtypes import DTYPE_SPECS
from service.domains.gemm.figures import gemm_bytes, gemm_flops
from training.collect.storage import RowWriter

# The first columns of both collectors' CSVs: the key, where and on what it was measured, and the shape.
SHAPE_COLUMNS = ("key", "source", "device", "op", "batch", "m", "n", "k", "dtype", "layout")


@dataclass(frozen=True, order=True)
class GemmShape:
    """The product a configuration measures: ``op`` "gemm" or "linear" for 2-D operands (batch 1),
    "bmm" for ``batch`` matrices. A collector adds the field that tells its configurations of one shape
    apart (:meth:`variant`, the key's last part)."""

    op: str
    batch: int
    m: int
    n: int
    k: int
    dtype: str

    def variant(self) -> str:
        raise NotImplementedError

    @property
    def key(self) -> str:
        return f"{self.op}|b={self.batch}|m={self.m}|n={self.n}|k={self.k}|{self.dtype}|{self.variant()}"

    @property
    def flops(self) -> float:
        return float(gemm_flops(self.batch, self.m, self.n, self.k))

    @property
    def nbytes(self) -> int:
        spec = DTYPE_SPECS[self.dtype]
        return int(gemm_bytes(self.batch, self.m, self.n, self.k, spec.a_bytes, spec.b_bytes, spec.c_bytes))


@dataclass(frozen=True)
class Timing:
    runtime_ms: float
    runtime_spread: float
    repeats: int


def gemm_row(cfg: GemmShape, timing: Timing, source: str, device: str) -> dict[str, Any]:
    """The columns both collectors write; each adds its own (layout, kernel, threads, energy)."""
    return {
        "key": cfg.key,
        "source": source,
        "device": device,
        "op": cfg.op,
        "batch": cfg.batch,
        "m": cfg.m,
        "n": cfg.n,
        "k": cfg.k,
        "dtype": cfg.dtype,
        "runtime_ms": f"{timing.runtime_ms:.6g}",
        "runtime_spread": f"{timing.runtime_spread:.4g}",
        "repeats": timing.repeats,
        "measured_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }


Config = TypeVar("Config", bound=GemmShape)


def measure_rows(
    path: Path,
    columns: tuple[str, ...],
    todo: Sequence[Config],
    label: str,
    total: int,
    measure: Callable[[Config], dict[str, Any] | None],
) -> int:
    """Append ``measure(cfg)`` to the CSV at ``path`` for each of ``todo`` (of ``total`` in the sweep; the
    rest measured earlier), each row durable before the next is measured, with a progress bar on stderr.
    A configuration ``measure`` returns None for writes no row (a rerun tries it again). Returns how many
    rows were written."""
    done = total - len(todo)
    writer = RowWriter(path, columns)
    written = 0
    try:
        with Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            TextColumn("{task.fields[key]}"),
            console=Console(stderr=True),
        ) as progress:
            task = progress.add_task(f"{label} ({done} resumed)", total=total, completed=done, key="")
            for cfg in todo:
                progress.update(task, key=cfg.key)
                row = measure(cfg)
                if row is not None:
                    writer.append(row)
                    written += 1
                progress.advance(task)
    finally:
        writer.close()
    return written
