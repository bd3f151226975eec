"""``perfcost collect cpu-gemm``: time numpy matrix multiplication through this machine's BLAS.

The collector walks a fixed sweep of GEMM/batched-GEMM configurations (:func:`build_sweep`), times each
one and appends one row per configuration to ``measurements.csv`` in the output directory, next to
``device.json`` (this CPU as a :class:`service.devices.DeviceSpec`, with a measured memory bandwidth)
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

import csv
import fcntl
import io
import json
import logging
import math
import os
import platform
import random
import sys
import time
import zlib
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from threadpoolctl import threadpool_info, threadpool_limits

from service.devices import describe_local_cpu

log = logging.getLogger(__name__)

app = typer.Typer(help="Collect measurements on this machine.", no_args_is_help=True)

SOURCE = "cpu-gemm-local"
DEFAULT_OUT = Path("datasets") / SOURCE
MEASUREMENTS = "measurements.csv"
DEVICE_FILE = "device.json"
ENVIRONMENT_FILE = "environment.json"
LOCK_FILE = ".collect.lock"
COLUMNS = (
    "key",
    "source",
    "device",
    "op",
    "batch",
    "m",
    "n",
    "k",
    "dtype",
    "layout",
    "kernel",
    "threads",
    "runtime_ms",
    "runtime_spread",
    "repeats",
    "measured_at",
)
HEADER = ",".join(COLUMNS)

# --- the sweep -------------------------------------------------------------------------------------
SWEEP_SEED = 20_240_611
DTYPES = ("float32", "float64")
# Skip rule: a configuration is left out when one call would take longer than ``max_call_seconds`` at
# these deliberately conservative rates (well below what a current x86 core reaches with AVX2/AVX-512)
# or when its three arrays would exceed MAX_CONFIG_BYTES.
CONSERVATIVE_GFLOPS_PER_THREAD = {"float32": 30.0, "float64": 15.0}
THREAD_EFFICIENCY = 0.7  # each thread beyond the first adds this fraction of a thread
CONSERVATIVE_BANDWIDTH_GBPS = 5.0
CALL_OVERHEAD_S = 5e-6
MAX_CONFIG_BYTES = 1 << 30
DEFAULT_MAX_CALL_SECONDS = 1.5

SQUARE_SIZES = (
    *(1, 2, 3, 4, 5, 8, 12, 16, 17, 24, 31, 32, 33, 48, 63, 64, 65, 96, 100, 127, 128, 129),
    *(192, 200, 255, 256, 257, 320, 384, 500, 511, 512, 513, 640, 768, 777, 1000, 1023, 1024, 1025),
    *(1280, 1500, 1536, 1537, 2000, 2047, 2048, 2049, 2500, 3001, 3072, 4096),
)
SKINNY_SHAPES = (  # (m, n, k): tall/flat operands, GEMV-like and outer-product-like shapes
    (4096, 64, 4096),
    (64, 4096, 4096),
    (4096, 4096, 64),
    (1, 2048, 2048),
    (2048, 1, 2048),
    (2048, 2048, 1),
    (1, 4096, 4096),
    (4096, 1, 4096),
    (4096, 4096, 1),
    (1, 1, 4096),
    (1, 4096, 1),
    (4096, 1, 1),
    (2, 2048, 2048),
    (2048, 2, 2048),
    (8, 4096, 4096),
    (4096, 8, 4096),
    (16, 1024, 8192),
    (1024, 16, 8192),
    (32, 3001, 1537),
    (1537, 32, 3001),
    (3001, 1537, 32),
    (127, 1000, 3001),
    (1000, 127, 1537),
    (64, 64, 16384),
    (256, 256, 16384),
    (16384, 64, 64),
    (64, 16384, 64),
    (1, 16384, 1024),
    (1024, 1, 16384),
    (128, 8192, 128),
    (8192, 128, 1024),
    (1000, 1000, 1),
    (3, 1537, 1537),
    (1537, 1537, 3),
    (512, 512, 8192),
    (8192, 512, 512),
)
NICE_DIMS = (
    1,
    2,
    4,
    8,
    16,
    32,
    64,
    96,
    127,
    128,
    129,
    255,
    256,
    257,
    500,
    511,
    512,
    1000,
    1024,
    1537,
    2048,
    3001,
)
RANDOM_GEMM_SHAPES = 900
RANDOM_BMM_SHAPES = 320
BMM_BATCHES = (2, 3, 4, 8, 16, 32, 64)


@dataclass(frozen=True, order=True)
class GemmConfig:
    """One point of the sweep. ``op`` is "gemm" for 2-D operands and "bmm" for 3-D (batched) ones."""

    op: str
    batch: int
    m: int
    n: int
    k: int
    dtype: str
    threads: int

    @property
    def key(self) -> str:
        return f"{self.op}|b={self.batch}|m={self.m}|n={self.n}|k={self.k}|{self.dtype}|t={self.threads}"

    @property
    def flops(self) -> float:
        return 2.0 * self.batch * self.m * self.n * self.k

    @property
    def nbytes(self) -> int:
        itemsize = np.dtype(self.dtype).itemsize
        return self.batch * (self.m * self.k + self.k * self.n + self.m * self.n) * itemsize

    def conservative_call_seconds(self) -> float:
        """A pessimistic estimate of one call, the basis of the skip rule."""
        rate = CONSERVATIVE_GFLOPS_PER_THREAD[self.dtype] * 1e9 * (1 + THREAD_EFFICIENCY * (self.threads - 1))
        return (
            self.flops / rate
            + self.nbytes / (CONSERVATIVE_BANDWIDTH_GBPS * 1e9)
            + CALL_OVERHEAD_S * self.batch
        )

    def shapes(self) -> tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]:
        lead = (self.batch,) if self.op == "bmm" else ()
        return (*lead, self.m, self.k), (*lead, self.k, self.n), (*lead, self.m, self.n)


@dataclass
class Sweep:
    configs: list[GemmConfig]
    skipped: list[tuple[GemmConfig, str]] = field(default_factory=list)

    def keys(self) -> list[str]:
        return [c.key for c in self.configs]


def local_cpu_count() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def default_threads(max_threads: int | None = None) -> list[int]:
    """1..N (N = usable cores or ``max_threads``); above 8, powers of two plus N."""
    top = max_threads or local_cpu_count()
    if top <= 8:
        return list(range(1, top + 1))
    return sorted({2**i for i in range(int(math.log2(top)) + 1)} | {top})


def _dim(rng: random.Random, high: int) -> int:
    """A random dimension in [1, high]: 30% from NICE_DIMS, otherwise log-distributed with the density
    tilted toward the large end (log(d) = u**0.6 * log(high), u uniform), so that medium and large
    shapes, which say most about a BLAS, are not outnumbered by tiny ones."""
    if rng.random() < 0.3:
        return rng.choice([d for d in NICE_DIMS if d <= high])
    return max(1, min(high, round(math.exp(rng.random() ** 0.6 * math.log(high)))))


def _shapes() -> list[tuple[str, int, int, int, int]]:
    """All (op, batch, m, n, k) shapes, deduplicated, in a fixed shuffled order."""
    rng = random.Random(SWEEP_SEED)
    shapes: list[tuple[str, int, int, int, int]] = [("gemm", 1, s, s, s) for s in SQUARE_SIZES]
    shapes += [("gemm", 1, m, n, k) for m, n, k in SKINNY_SHAPES]
    shapes += [
        ("gemm", 1, _dim(rng, 4096), _dim(rng, 4096), _dim(rng, 4096)) for _ in range(RANDOM_GEMM_SHAPES)
    ]
    for _ in range(RANDOM_BMM_SHAPES):
        batch = rng.choice(BMM_BATCHES)
        shapes.append(("bmm", batch, _dim(rng, 1024), _dim(rng, 1024), _dim(rng, 1024)))
    unique = list(dict.fromkeys(shapes))
    rng.shuffle(unique)
    return unique


def build_sweep(
    threads: Sequence[int] | None = None, max_call_seconds: float = DEFAULT_MAX_CALL_SECONDS
) -> Sweep:
    """The deterministic configuration list: every shape × dtype × thread count, in a fixed order
    (shapes shuffled with a fixed seed; the variants of one shape stay next to each other), minus the
    configurations the skip rule removes (they are returned in ``skipped`` with the reason)."""
    thread_list = list(dict.fromkeys(threads)) if threads else default_threads()
    sweep = Sweep(configs=[])
    for op, batch, m, n, k in _shapes():
        for dtype in DTYPES:
            for t in thread_list:
                cfg = GemmConfig(op, batch, m, n, k, dtype, t)
                if cfg.nbytes > MAX_CONFIG_BYTES:
                    sweep.skipped.append((cfg, f"arrays need {cfg.nbytes / 2**20:.0f} MiB"))
                elif (est := cfg.conservative_call_seconds()) > max_call_seconds:
                    sweep.skipped.append((cfg, f"one call estimated at {est:.2f} s > {max_call_seconds} s"))
                else:
                    sweep.configs.append(cfg)
    return sweep


# --- measuring -------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Timing:
    runtime_ms: float
    runtime_spread: float
    repeats: int


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


# --- the output directory --------------------------------------------------------------------------
class CollectError(RuntimeError):
    """The collection cannot proceed; the message says why and what to do."""


@contextmanager
def cli_errors(out: Path, unit: str) -> Iterator[None]:
    """A collector's failure is one line and exit 1; Ctrl-C says the finished ``unit`` are kept (130)."""
    try:
        yield
    except CollectError as exc:
        typer.echo(f"Error: {exc}", err=True)
        raise typer.Exit(1) from None
    except KeyboardInterrupt:
        typer.echo(f"Interrupted; every finished {unit} is saved in {out}. Rerun to resume.", err=True)
        raise typer.Exit(130) from None


@contextmanager
def exclusive_lock(out: Path) -> Iterator[None]:
    """Hold an exclusive ``flock`` on ``out/.collect.lock`` (released when the process dies)."""
    lock_path = out / LOCK_FILE
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 64, 0).decode(errors="replace").strip()
        os.close(fd)
        by = f" by pid {holder}" if holder.isdigit() else ""
        raise CollectError(
            f"another collector is already writing to {out} (lock {lock_path} is held{by}); "
            "wait for it to finish or pass a different --out"
        ) from None
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


def write_durably(fd: int, data: bytes) -> None:
    """Write all of ``data`` to an append-mode descriptor and fsync it before returning, so a record is
    either wholly on disk or (after a kill mid-write) a torn tail the resuming reader discards."""
    while data:
        written = os.write(fd, data)
        data = data[written:]
    os.fsync(fd)


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8", newline="") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    fsync_dir(path.parent)


# Measured columns that may be blank (not measured), but when present must be finite and >= 0.
OPTIONAL_MEASURES = ("power_w", "energy_j")


def _valid_row(fields: list[str], columns: tuple[str, ...]) -> bool:
    if len(fields) != len(columns) or not fields[0]:
        return False
    row = dict(zip(columns, fields, strict=True))
    try:
        runtime = float(row["runtime_ms"])
        optional = [float(row[c]) for c in OPTIONAL_MEASURES if row.get(c)]
    except ValueError:
        return False
    return math.isfinite(runtime) and runtime > 0 and all(math.isfinite(v) and v >= 0 for v in optional)


def recover_measurements(path: Path, columns: tuple[str, ...] = COLUMNS) -> dict[str, dict[str, str]]:
    """Rows already in ``path`` (a collector's CSV of ``columns``, the key first) by key, after repairing
    the file: a missing or half-written header is written, and a partially written last line, malformed
    lines and repeated keys are dropped (the file is rewritten atomically). A header with other columns
    is refused rather than overwritten."""
    header = ",".join(columns)
    raw = path.read_bytes() if path.exists() else b""
    lines = raw.decode("utf-8", errors="replace").split("\n")
    partial = lines.pop()  # the text after the last newline: "" unless a write was cut short
    if not lines:  # empty file or a header cut short: nothing to keep
        if partial:
            log.warning("%s: dropping a partially written header", path)
        _atomic_write(path, header + "\n")
        return {}
    if lines[0] != header:
        raise CollectError(
            f"{path} has columns {lines[0][:200]!r}, not the collector's {header!r}; "
            "move it away or pass a different --out"
        )
    rows: dict[str, dict[str, str]] = {}
    kept: list[str] = []
    malformed = duplicates = 0
    for line in lines[1:]:
        fields = next(csv.reader([line]), [])
        if not _valid_row(fields, columns):
            malformed += 1
        elif fields[0] in rows:
            duplicates += 1
        else:
            rows[fields[0]] = dict(zip(columns, fields, strict=True))
            kept.append(line)
    if partial or malformed or duplicates:
        log.warning(
            "%s: repairing: dropping %s%d malformed and %d duplicated lines; keeping %d rows",
            path,
            "a partially written last line, " if partial else "",
            malformed,
            duplicates,
            len(rows),
        )
        _atomic_write(path, "\n".join([header, *kept]) + "\n")
    return rows


class RowWriter:
    """Appends CSV rows of ``columns``, each with one ``write`` followed by ``fsync``."""

    def __init__(self, path: Path, columns: tuple[str, ...] = COLUMNS) -> None:
        self._fd = os.open(path, os.O_WRONLY | os.O_APPEND)
        self._columns = columns

    def append(self, row: dict[str, Any]) -> None:
        buffer = io.StringIO()
        csv.writer(buffer, lineterminator="\n").writerow([row[c] for c in self._columns])
        write_durably(self._fd, buffer.getvalue().encode("utf-8"))

    def close(self) -> None:
        os.close(self._fd)


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


def _check_environment(out: Path, env: dict[str, Any]) -> None:
    path = out / ENVIRONMENT_FILE
    try:
        previous = json.loads(path.read_text())
    except (OSError, ValueError):
        return
    for name in ("numpy", "kernel"):
        if previous.get(name) != env[name]:
            log.warning(
                "%s: earlier rows were collected with %s=%s, this run uses %s",
                path,
                name,
                previous.get(name),
                env[name],
            )
    before = [(lib.get("internal_api"), lib.get("version")) for lib in previous.get("blas", [])]
    if before != [(lib.get("internal_api"), lib.get("version")) for lib in env["blas"]]:
        log.warning(
            "%s: earlier rows were collected with BLAS %s, this run uses a different one", path, before
        )


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


@app.callback()
def _collect() -> None:
    """Collect measurements on this machine."""


@app.command("cpu-gemm")
def cpu_gemm(
    out: Annotated[
        Path, typer.Option("--out", help="Output directory (created; rerun to resume).")
    ] = DEFAULT_OUT,
    limit: Annotated[int | None, typer.Option("--limit", help="Only the first N configurations.")] = None,
    max_seconds_per_config: Annotated[
        float,
        typer.Option(
            "--max-seconds-per-config",
            help="Skip rule: leave out configurations whose single call is estimated (at a conservative "
            "FLOP rate) to take longer than this many seconds. Changes the sweep.",
        ),
    ] = DEFAULT_MAX_CALL_SECONDS,
    min_time: Annotated[
        float, typer.Option("--min-time", help="Seconds of timed calls per configuration.")
    ] = 0.2,
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
    if limit is not None and limit < 1:
        raise typer.BadParameter(f"must be at least 1, got {limit}", param_hint="'--limit'")
    if not (math.isfinite(max_seconds_per_config) and max_seconds_per_config > 0):
        raise typer.BadParameter(
            f"must be a positive number of seconds, got {max_seconds_per_config}",
            param_hint="'--max-seconds-per-config'",
        )
    if not (math.isfinite(min_time) and 0 < min_time <= 60):
        raise typer.BadParameter(f"must be in (0, 60] seconds, got {min_time}", param_hint="'--min-time'")
    if max_repeats < 5:
        raise typer.BadParameter(f"must be at least 5, got {max_repeats}", param_hint="'--max-repeats'")
    if bandwidth_mib < 1:
        raise typer.BadParameter(f"must be at least 1, got {bandwidth_mib}", param_hint="'--bandwidth-mib'")
    if out.exists() and not out.is_dir():
        raise typer.BadParameter(f"{out} exists and is not a directory", param_hint="'--out'")
    thread_list = _parse_threads(threads, max_threads)

    sweep = build_sweep(thread_list, max_seconds_per_config)
    configs = sweep.configs[:limit] if limit else sweep.configs
    if dry_run:
        ops = {op: sum(c.op == op for c in configs) for op in ("gemm", "bmm")}
        typer.echo(
            f"{len(configs)} configurations ({ops['gemm']} gemm, {ops['bmm']} bmm; threads {thread_list}); "
            f"{len(sweep.skipped)} left out by the skip rule"
        )
        return
    with cli_errors(out, "configuration"):
        _run(out, configs, sweep, thread_list, max_seconds_per_config, min_time, max_repeats, bandwidth_mib)


def _run(
    out: Path,
    configs: list[GemmConfig],
    sweep: Sweep,
    thread_list: list[int],
    max_seconds_per_config: float,
    min_time: float,
    max_repeats: int,
    bandwidth_mib: int,
) -> None:
    out.mkdir(parents=True, exist_ok=True)
    with exclusive_lock(out):
        path = out / MEASUREMENTS
        existing = recover_measurements(path)
        source = out.resolve().name or SOURCE

        load = os.getloadavg()[0]
        if load > 0.5:
            log.warning(
                "load average %.2f: other processes are using the CPU, so timings (multi-threaded ones most) "
                "will be inflated; collect on a quiet machine",
                load,
            )
        bandwidth = round(measure_bandwidth_gbps(bandwidth_mib), 2)
        device = describe_local_cpu(memory_bandwidth_gbps=bandwidth)
        recorded = {row["device"] for row in existing.values()}
        if recorded and recorded != {device.name}:
            raise CollectError(
                f"{path} holds measurements of {sorted(recorded)}, but this machine is {device.name!r}; "
                "pass a different --out"
            )
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
            "load_average_at_start": round(load, 2),
        }
        env = _environment(settings, bandwidth)
        _check_environment(out, env)
        _atomic_write(out / DEVICE_FILE, json.dumps(device.model_dump(), indent=2) + "\n")
        _atomic_write(out / ENVIRONMENT_FILE, json.dumps(env, indent=2) + "\n")
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
        writer = RowWriter(path)
        started = time.monotonic()
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
                task = progress.add_task(
                    f"cpu-gemm ({done} resumed)", total=len(configs), completed=done, key=""
                )
                for cfg in todo:
                    progress.update(task, key=cfg.key)
                    timing = measure(cfg, min_time, max_repeats=max_repeats)
                    writer.append(
                        {
                            "key": cfg.key,
                            "source": source,
                            "device": device.name,
                            "op": cfg.op,
                            "batch": cfg.batch,
                            "m": cfg.m,
                            "n": cfg.n,
                            "k": cfg.k,
                            "dtype": cfg.dtype,
                            "layout": "nn",
                            "kernel": kernel,
                            "threads": cfg.threads,
                            "runtime_ms": f"{timing.runtime_ms:.6g}",
                            "runtime_spread": f"{timing.runtime_spread:.4g}",
                            "repeats": timing.repeats,
                            "measured_at": datetime.now(UTC).isoformat(timespec="seconds"),
                        }
                    )
                    progress.advance(task)
        finally:
            writer.close()
        typer.echo(
            f"measured {len(todo)} configurations in {time.monotonic() - started:.0f} s "
            f"({done} already there, {len(configs)} in this sweep) -> {path}"
        )


@app.command("mlir")
def mlir(
    out: Annotated[Path, typer.Option("--out", help="Output directory (created; rerun to resume).")] = Path(
        "datasets"
    )
    / "mlir-cpu-local",
    per_family: Annotated[
        int, typer.Option("--per-family", help="Programs per family in the sweep (15 families).")
    ] = 220,
    limit: Annotated[int | None, typer.Option("--limit", help="Only the first N programs.")] = None,
    repetitions: Annotated[
        int, typer.Option("--repetitions", help="Benchmark repetitions per program (median, spread).")
    ] = 5,
    min_time: Annotated[
        float, typer.Option("--min-time", help="Seconds per repetition (and of warm-up).")
    ] = 0.02,
    threads: Annotated[
        int | None, typer.Option("--threads", help="IREE worker threads (default: usable CPUs but one).")
    ] = None,
    invocations: Annotated[
        int, typer.Option("--invocations", help="Separate benchmark launches per program (median).")
    ] = 3,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Print the sweep's size; measure nothing.")
    ] = False,
) -> None:
    """Generate MLIR programs, compile them with IREE for this CPU and benchmark them (resumable)."""
    # Imported here: the MLIR collector imports this module's helpers.
    from training import collect_mlir

    if per_family < 1:
        raise typer.BadParameter(f"must be at least 1, got {per_family}", param_hint="'--per-family'")
    if limit is not None and limit < 1:
        raise typer.BadParameter(f"must be at least 1, got {limit}", param_hint="'--limit'")
    if repetitions < 5:
        raise typer.BadParameter(f"must be at least 5, got {repetitions}", param_hint="'--repetitions'")
    if not (math.isfinite(min_time) and 0 < min_time <= 60):
        raise typer.BadParameter(f"must be in (0, 60] seconds, got {min_time}", param_hint="'--min-time'")
    cpus = os.cpu_count() or 1
    if threads is not None and not 1 <= threads <= cpus:
        raise typer.BadParameter(f"must be between 1 and {cpus}, got {threads}", param_hint="'--threads'")
    if not 1 <= invocations <= 20:
        raise typer.BadParameter(f"must be between 1 and 20, got {invocations}", param_hint="'--invocations'")
    if out.exists() and not out.is_dir():
        raise typer.BadParameter(f"{out} exists and is not a directory", param_hint="'--out'")
    collect_mlir.run_cli(out, per_family, limit, repetitions, min_time, threads, invocations, dry_run)


if __name__ == "__main__":
    app()
