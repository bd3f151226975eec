"""``perfcost collect gpu-gemm``: time cuBLAS GEMMs through PyTorch on one NVIDIA GPU, with NVML energy.

Output: the layout ``perfcost train gemm --from DIR`` reads, as ``perfcost collect cpu-gemm`` writes it
(``measurements.csv`` with one row per configuration, ``device.json`` as a
:class:`service.core.devices.DeviceSpec`, ``environment.json``), crash-safe and resumable the same way: the
lock, the durable appends and the atomic rewrites are :mod:`training.collect.storage`'s. The CSV's columns
(:data:`COLUMNS`) are the CPU collector's without ``kernel`` and ``threads`` and with ``power_w`` and
``energy_j``; a killed run loses at most the configuration in flight, and a rerun skips every key already
present (``key`` names op, batch, sizes, dtype and layout). Needs the ``gpu`` extra
(``pip install -e '.[gpu]'``: torch with CUDA, nvidia-ml-py); without a CUDA device the command says so in
one line and exits 1.

The sweeps are :mod:`training.collect.gpu_sweep`'s, the timing and the device description
:mod:`training.collect.gpu_backend`'s.

A committed dataset's card (``datasets/<name>/README.md``, as ``datasets/cpu-gemm-local`` has) must say:
the GPU (name, board/form factor, memory, UUID prefix or host), driver, CUDA and torch versions (all in
``environment.json``); the sweep and options (``--sweep``, ``--dtype``, ``--min-time``); when and how long;
whether the GPU was shared or another process ran on it (``nvidia-smi`` at start), its power limit and
clocks as found (never changed by the collector), temperature/throttling seen; whether energy was
supported; the spread (median and p90 of ``runtime_spread``) and, if measured, the between-run noise; and
the licence.
"""

from __future__ import annotations

import logging
import math
import platform
import re
import sys
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

import typer

from service.core.devices import DeviceSpec
from service.domains.gemm.features import OPS
from training.collect.gemm import SHAPE_COLUMNS, gemm_row, measure_rows
from training.collect.gpu_backend import Backend, ConfigSkipped, make_backend
from training.collect.gpu_sweep import (
    FULL_SEED,
    GPU_DTYPES,
    GpuGemmConfig,
    SweepError,
    SweepName,
    build_configs,
)
from training.collect.options import (
    ConfigLimit,
    MinTimePerConfig,
    check_at_least,
    check_min_time,
    check_out,
    cli_errors,
    one_line_errors,
)
from training.collect.storage import MEASUREMENTS, CollectError, check_device, locked_measurements, record_run

log = logging.getLogger(__name__)

COLUMNS = (*SHAPE_COLUMNS, "runtime_ms", "runtime_spread", "power_w", "energy_j", "repeats", "measured_at")
# A configuration whose operands would take more than this share of the GPU's memory is left out.
MAX_MEMORY_SHARE = 0.4


def device_slug(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-") or "gpu"


def default_out(device_name: str) -> Path:
    return Path("datasets") / f"gpu-gemm-{device_slug(device_name)}"


def _compared(env: dict[str, Any]) -> dict[str, Any]:
    """What rows of one directory should share: the GPU, its driver, torch and CUDA, and TF32 off."""
    return {
        name: env[name]
        for name in ("gpu_uuid", "driver", "torch", "cuda_runtime", "allow_tf32")
        if name in env
    }


def _number(value: float | None, fmt: str) -> str:
    return "" if value is None or not math.isfinite(value) else format(value, fmt)


def _environment(backend: Backend, settings: dict[str, Any]) -> dict[str, Any]:
    return {
        "collector": "perfcost collect gpu-gemm",
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        **backend.environment(),
        "python": sys.version,
        "platform": platform.platform(),
        "timing": "CUDA events around batches of back-to-back torch.matmul/torch.bmm calls after "
        "warm-up; runtime_ms = median per-call time over batches, runtime_spread = (p90 - p10) / "
        "median; energy_j = NVML total-energy difference over the timed calls, power_w = that "
        "difference over the wall-clock time (blank where unsupported)",
        "settings": settings,
    }


def _fitting(configs: Sequence[GpuGemmConfig], device: DeviceSpec) -> list[GpuGemmConfig]:
    """The configurations whose operands fit in :data:`MAX_MEMORY_SHARE` of the GPU's memory."""
    budget = MAX_MEMORY_SHARE * device.memory_gb * 2**30
    fits = [c for c in configs if c.nbytes <= budget]
    if len(fits) < len(configs):
        log.warning(
            "leaving out %d configurations whose operands exceed %.0f%% of the GPU's %.1f GiB",
            len(configs) - len(fits),
            100 * MAX_MEMORY_SHARE,
            device.memory_gb,
        )
    return fits


def _row(
    backend: Backend, cfg: GpuGemmConfig, min_time: float, source: str, device: str
) -> dict[str, Any] | None:
    """The CSV row of one configuration, or None (no row, a rerun tries again) where it was skipped."""
    try:
        timing = backend.time(cfg, min_time)
    except ConfigSkipped as exc:
        log.warning("%s: skipped (%s); a rerun tries it again", cfg.key, exc)
        return None
    return {
        **gemm_row(cfg, timing, source, device),
        "layout": cfg.layout,
        "power_w": _number(timing.power_w, ".5g"),
        "energy_j": _number(timing.energy_j, ".6g"),
    }


def run_collection(
    out: Path,
    configs: Sequence[GpuGemmConfig],
    backend: Backend,
    min_time: float,
    settings: dict[str, Any] | None = None,
) -> int:
    """Measure every configuration of ``configs`` not yet in ``out`` with ``backend`` (under the lock,
    each row durable before the next starts); returns how many were measured this run."""
    with locked_measurements(out, COLUMNS) as existing:
        device = DeviceSpec.model_validate(backend.device_spec().model_dump())
        check_device(out, existing, device.name, "this GPU")
        fits = _fitting(configs, device)
        run_settings = {
            **(settings or {}),
            "min_time_s": min_time,
            "configurations_this_run": len(configs),
            "left_out_for_memory": len(configs) - len(fits),
        }
        record_run(out, device, _environment(backend, run_settings), _compared)
        source = out.resolve().name
        todo = [c for c in fits if c.key not in existing]
        log.info(
            "device %r; %d of %d configurations already measured",
            device.name,
            len(fits) - len(todo),
            len(fits),
        )
        return measure_rows(
            out / MEASUREMENTS,
            COLUMNS,
            todo,
            "gpu-gemm",
            len(fits),
            lambda cfg: _row(backend, cfg, min_time, source, device.name),
        )


# --- the command (registered as ``perfcost collect gpu-gemm`` in training/collect/cli.py) ----------
def _parse_dtypes(dtype: str | None) -> list[str] | None:
    if dtype is None:
        return None
    values = [part.strip() for part in dtype.split(",") if part.strip()]
    bad = [v for v in values if v not in GPU_DTYPES]
    if not values or bad:
        raise typer.BadParameter(
            f"{dtype!r}: give a comma-separated list of {', '.join(GPU_DTYPES)}", param_hint="'--dtype'"
        )
    return values


def _describe(configs: Sequence[GpuGemmConfig], sweep: SweepName) -> str:
    """The dry run's line: how many configurations of which ops and dtypes."""
    ops = {op: sum(c.op == op for c in configs) for op in OPS}
    return (
        f"{len(configs)} configurations of the {sweep.value} sweep ("
        + ", ".join(f"{n} {op}" for op, n in ops.items())
        + "; dtypes "
        + ", ".join(sorted({c.dtype for c in configs}))
        + ")"
    )


def _open_backend(device_index: int, out: Path | None) -> tuple[Backend, Path]:
    """The backend on ``cuda:<device_index>`` and the output directory (default: named after the GPU)."""
    backend = make_backend(device_index)
    try:
        return backend, out or default_out(backend.device_spec().name)
    except CollectError:
        backend.close()
        raise


def gpu_gemm(
    out: Annotated[
        Path | None,
        typer.Option(
            "--out", help="Output directory (created; rerun to resume). Default: datasets/gpu-gemm-<device>."
        ),
    ] = None,
    sweep: Annotated[
        SweepName,
        typer.Option("--sweep", help="calibration: the shipped <= 32 shapes; full: a few hundred more."),
    ] = SweepName.calibration,
    dtype: Annotated[
        str | None,
        typer.Option(
            "--dtype", help="Only these dtypes, comma-separated (float32,float16,bfloat16,float64)."
        ),
    ] = None,
    min_time: MinTimePerConfig = 0.2,
    device_index: Annotated[int, typer.Option("--device-index", help="CUDA device index.")] = 0,
    limit: ConfigLimit = None,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Print the sweep's size; needs no GPU, measures nothing.")
    ] = False,
) -> None:
    """Time torch.matmul/torch.bmm (cuBLAS) on a CUDA GPU, with NVML energy (resumable; gpu extra)."""
    check_min_time(min_time)
    check_at_least(device_index, 0, "--device-index")
    check_at_least(limit, 1, "--limit")
    check_out(out)
    dtypes = _parse_dtypes(dtype)
    with one_line_errors(SweepError):
        configs = build_configs(sweep, dtypes)
    configs = configs[:limit] if limit else configs
    if not configs:
        raise typer.BadParameter(
            f"no configuration of the {sweep.value} sweep has dtype {dtype}", param_hint="'--dtype'"
        )
    if dry_run:
        typer.echo(_describe(configs, sweep))
        return
    with one_line_errors():
        backend, target = _open_backend(device_index, out)
    try:
        with cli_errors(target, "configuration"):
            started = time.monotonic()
            settings = {"sweep": sweep.value, "dtypes": dtypes, "limit": limit, "full_seed": FULL_SEED}
            measured = run_collection(target, configs, backend, min_time, settings)
            typer.echo(
                f"measured {measured} configurations in {time.monotonic() - started:.0f} s "
                f"({len(configs)} in this sweep) -> {target / MEASUREMENTS}"
            )
    finally:
        backend.close()
