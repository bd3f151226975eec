"""``perfcost collect cpu-gemm``: time numpy matrix multiplication through this machine's BLAS.

The collector walks a fixed sweep of GEMM/batched-GEMM configurations (:mod:`.cpu_sweep`), times each
one and appends one row per configuration to ``measurements.csv`` in the output directory, next to
``device.json`` (this CPU as a :class:`service.core.devices.DeviceSpec`, with a measured memory bandwidth)
and ``environment.json`` (numpy, BLAS, Python, platform).

Crash safety: each row is written with a single ``write`` and ``fsync``-ed before the next
configuration starts, so a killed run loses at most the configuration in flight. On restart a partially
written last line (or any malformed or duplicated line) is dropped by rewriting the file atomically,
and every key already present is skipped, so any sequence of killed runs followed by one complete run
yields each configuration of the sweep exactly once. An exclusive ``flock`` on ``.collect.lock`` makes a
second collector on the same directory refuse instead of interleaving rows.

Timing: inputs are uniform random numbers from a generator seeded by the configuration's key, written
into a preallocated output (``np.matmul(a, b, out=c)``); one warm-up call (two if the first is under
0.1 s), then calls are timed one by one with ``time.perf_counter_ns`` until ``--min-time`` seconds and at
least 5 calls have been measured, at most ``--max-repeats`` calls. ``runtime_ms`` is the median call and
``runtime_spread`` the interquartile range relative to it, ``(p75 - p25) / median``.
"""

from __future__ import annotations

import logging
import math
import os
import platform
import sys
import time
import zlib
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import typer
from threadpoolctl import threadpool_info, threadpool_limits

from training.collect.cpu_sweep import (
    DEFAULT_MAX_CALL_SECONDS,
    DTYPES,
    SWEEP_SEED,
    GemmConfig,
    build_sweep,
    default_threads,
)
from training.collect.gemm import SHAPE_COLUMNS, Timing, gemm_row, measure_rows
from training.collect.local_cpu import describe_local_cpu, local_cpu_count, measure_peak_gflops
from training.collect.options import (
    ConfigLimit,
    MinTimePerConfig,
    OutDir,
    check_at_least,
    check_min_time,
    check_out,
    cli_errors,
)
from training.collect.storage import MEASUREMENTS, check_device, locked_measurements, record_run

log = logging.getLogger(__name__)

SOURCE = "cpu-gemm-local"
DEFAULT_OUT = Path("datasets") / SOURCE
COLUMNS = (*SHAPE_COLUMNS, "kernel", "threads", "runtime_ms", "runtime_spread", "repeats", "measured_at")
HEADER = ",".join(COLUMNS)


# --- measuring -------------------------------------------------------------------------------------
def measure(cfg: GemmConfig, min_time: float, min_repeats: int = 5, max_repeats: int = 200) -> Timing:
    """Median time of one ``np.matmul`` call for ``cfg`` (see the module docstring)."""
    rng = np.random.default_rng(zlib.crc32(cfg.key.encode()))
    shape_a, shape_b, shape_c = cfg.shapes()
    a = rng.random(shape_a).astype(cfg.dtype, copy=False)
    b = rng.random(shape_b).astype(cfg.dtype, copy=False)
    c = np.empty(shape_c, dtype=cfg.dtype)
    clock = time.perf_counter_ns
    min_time_ns = min_time * 1e9
    samples: list[int] = []
    with threadpool_limits(limits=cfg.threads, user_api="blas"):
        start = clock()
        np.matmul(a, b, out=c)
        if clock() - start < 100_000_000:
            np.matmul(a, b, out=c)
        total = 0
        while len(samples) < max_repeats and (len(samples) < min_repeats or total < min_time_ns):
            start = clock()
            np.matmul(a, b, out=c)
            elapsed = clock() - start
            samples.append(elapsed)
            total += elapsed
    p25, median, p75 = np.percentile(np.asarray(samples, dtype=float) / 1e6, [25, 50, 75])
    return Timing(float(median), float((p75 - p25) / median) if median > 0 else 0.0, len(samples))


def measure_bandwidth_gbps(mib: int = 256, repeats: int = 5) -> float:
    """STREAM-copy-like bandwidth of one core: best of ``repeats`` copies of a ``mib`` MiB array,
    counting the bytes read and the bytes written."""
    src = np.ones(mib * 2**20 // 8)
    dst = np.empty_like(src)
    np.copyto(dst, src)  # touch every page before timing
    best = math.inf
    for _ in range(repeats):
        start = time.perf_counter_ns()
        np.copyto(dst, src)
        best = min(best, (time.perf_counter_ns() - start) / 1e9)
    return 2 * src.nbytes / best / 1e9


def blas_libraries() -> list[dict[str, Any]]:
    return [lib for lib in threadpool_info() if lib.get("user_api") == "blas"]


def kernel_name() -> str:
    """``numpy.matmul/<blas>``, naming the BLAS numpy itself links (preferred when several are loaded)."""
    libs = blas_libraries()
    ours = [lib for lib in libs if "numpy" in str(lib.get("filepath", ""))] or libs
    return f"numpy.matmul/{ours[0].get('internal_api', 'unknown')}" if ours else "numpy.matmul/unknown"


def _environment(settings: dict[str, Any], bandwidth_gbps: float) -> dict[str, Any]:
    return {
        "collector": "perfcost collect cpu-gemm",
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "numpy": np.__version__,
        "blas": blas_libraries(),
        "kernel": kernel_name(),
        "python": sys.version,
        "python_implementation": platform.python_implementation(),
        "platform": platform.platform(),
        "machine": platform.machine(),
        "processor": platform.processor(),
        "usable_cpus": local_cpu_count(),
        "memory_bandwidth_gbps": bandwidth_gbps,
        "timing": "median of individually timed np.matmul(a, b, out=c) calls after warm-up; "
        "runtime_spread = (p75 - p25) / median",
        "settings": settings,
    }


def _compared(env: dict[str, Any]) -> dict[str, Any]:
    """What rows of one directory should share: numpy, its kernel and the BLAS libraries' versions."""
    return {
        "numpy": env.get("numpy"),
        "kernel": env.get("kernel"),
        "BLAS": [(lib.get("internal_api"), lib.get("version")) for lib in env.get("blas", [])],
    }


# --- the command -----------------------------------------------------------------------------------
def _parse_threads(threads: str | None, max_threads: int | None) -> list[int]:
    cpus = os.cpu_count() or 1
    if max_threads is not None and not 1 <= max_threads <= cpus:
        raise typer.BadParameter(
            f"must be between 1 and {cpus} (this machine's CPUs)", param_hint="'--max-threads'"
        )
    if threads is None:
        return default_threads(max_threads)
    if max_threads is not None:
        raise typer.BadParameter("give either --threads or --max-threads, not both", param_hint="'--threads'")
    try:
        values = [int(part) for part in threads.split(",") if part.strip()]
    except ValueError:
        raise typer.BadParameter(
            f"{threads!r} is not a comma-separated list of integers", param_hint="'--threads'"
        ) from None
    if not values or any(not 1 <= v <= cpus for v in values):
        raise typer.BadParameter(
            f"thread counts must be between 1 and {cpus}, got {threads!r}", param_hint="'--threads'"
        )
    return sorted(set(values))


def _check_options(
    out: Path,
    limit: int | None,
    max_seconds_per_config: float,
    min_time: float,
    max_repeats: int,
    threads: str | None,
    max_threads: int | None,
    bandwidth_mib: int,
) -> list[int]:
    """Reject bad options (BadParameter, before anything is measured); the thread counts to sweep."""
    check_at_least(limit, 1, "--limit")
    if not (math.isfinite(max_seconds_per_config) and max_seconds_per_config > 0):
        raise typer.BadParameter(
            f"must be a positive number of seconds, got {max_seconds_per_config}",
            param_hint="'--max-seconds-per-config'",
        )
    check_min_time(min_time)
    check_at_least(max_repeats, 5, "--max-repeats")
    check_at_least(bandwidth_mib, 1, "--bandwidth-mib")
    check_out(out)
    return _parse_threads(threads, max_threads)


def cpu_gemm(
    out: OutDir = DEFAULT_OUT,
    limit: ConfigLimit = None,
    max_seconds_per_config: Annotated[
        float,
        typer.Option(
            "--max-seconds-per-config",
            help="Skip rule: leave out configurations whose single call is estimated (at a conservative "
            "FLOP rate) to take longer than this many seconds. Changes the sweep.",
        ),
    ] = DEFAULT_MAX_CALL_SECONDS,
    min_time: MinTimePerConfig = 0.2,
    max_repeats: Annotated[int, typer.Option("--max-repeats", help="At most this many timed calls.")] = 200,
    threads: Annotated[
        str | None,
        typer.Option(
            "--threads", help="Comma-separated BLAS thread counts, e.g. '1,2' (default: 1..usable CPUs)."
        ),
    ] = None,
    max_threads: Annotated[
        int | None, typer.Option("--max-threads", help="Thread counts 1..N (instead of --threads).")
    ] = None,
    bandwidth_mib: Annotated[
        int, typer.Option("--bandwidth-mib", help="Array size (MiB) of the bandwidth measurement.")
    ] = 256,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Print the sweep's size and skip count; measure nothing.")
    ] = False,
) -> None:
    """Time np.matmul through the installed BLAS over a fixed GEMM/batched-GEMM sweep (resumable)."""
    thread_list = _check_options(
        out, limit, max_seconds_per_config, min_time, max_repeats, threads, max_threads, bandwidth_mib
    )

    sweep = build_sweep(thread_list, max_seconds_per_config)
    configs = sweep.configs[:limit] if limit else sweep.configs
    if dry_run:
        ops = {op: sum(c.op == op for c in configs) for op in ("gemm", "bmm")}
        typer.echo(
            f"{len(configs)} configurations ({ops['gemm']} gemm, {ops['bmm']} bmm; threads {thread_list}); "
            f"{len(sweep.skipped)} left out by the skip rule"
        )
        return
    settings = {
        "min_time_s": min_time,
        "min_repeats": 5,
        "max_repeats": max_repeats,
        "max_seconds_per_config": max_seconds_per_config,
        "threads": thread_list,
        "sweep_seed": SWEEP_SEED,
        "sweep_size": len(sweep.configs),
        "sweep_skipped": len(sweep.skipped),
        "configurations_this_run": len(configs),
    }
    with cli_errors(out, "configuration"):
        _run(out, configs, settings, min_time, max_repeats, bandwidth_mib)


def _load_average() -> float:
    load = os.getloadavg()[0]
    if load > 0.5:
        log.warning(
            "load average %.2f: other processes are using the CPU, so timings (multi-threaded ones most) "
            "will be inflated; collect on a quiet machine",
            load,
        )
    return load


def _run(
    out: Path,
    configs: list[GemmConfig],
    settings: dict[str, Any],
    min_time: float,
    max_repeats: int,
    bandwidth_mib: int,
) -> None:
    """Measure the configurations not yet in ``out`` (``settings`` go into ``environment.json``)."""
    with locked_measurements(out, COLUMNS) as existing:
        path = out / MEASUREMENTS
        source = out.resolve().name or SOURCE
        load = _load_average()
        bandwidth = round(measure_bandwidth_gbps(bandwidth_mib), 2)
        threads = max(c.threads for c in configs) if configs else local_cpu_count()
        peaks = {d: measure_peak_gflops(threads, d) for d in DTYPES}
        device = describe_local_cpu(memory_bandwidth_gbps=bandwidth, measured_gflops=peaks)
        check_device(out, existing, device.name, "this machine")
        env = _environment({**settings, "load_average_at_start": round(load, 2)}, bandwidth)
        record_run(out, device, env, _compared)
        kernel = env["kernel"]

        todo = [c for c in configs if c.key not in existing]
        done = len(configs) - len(todo)
        extra = len(existing.keys() - {c.key for c in configs})
        if extra:
            log.info("%s: %d rows are not part of this sweep (other options); kept", path, extra)
        log.info(
            "device %r, bandwidth %.1f GB/s, kernel %s; %d of %d configurations already measured",
            device.name,
            bandwidth,
            kernel,
            done,
            len(configs),
        )

        def row(cfg: GemmConfig) -> dict[str, Any]:
            timing = measure(cfg, min_time, max_repeats=max_repeats)
            return {
                **gemm_row(cfg, timing, source, device.name),
                "layout": "nn",
                "kernel": kernel,
                "threads": cfg.threads,
            }

        started = time.monotonic()
        measure_rows(path, COLUMNS, todo, "cpu-gemm", len(configs), row)
        typer.echo(
            f"measured {len(todo)} configurations in {time.monotonic() - started:.0f} s "
            f"({done} already there, {len(configs)} in this sweep) -> {path}"
        )
