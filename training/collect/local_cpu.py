"""This machine's CPU, read from /proc and /sys: what the collectors record next to their measurements."""

from __future__ import annotations

import os
import platform
import time
from pathlib import Path

from service.core.devices import DeviceSpec


def local_cpu_count() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def cpuinfo() -> dict[str, str]:
    info: dict[str, str] = {}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, sep, value = line.partition(":")
            if sep and key.strip() not in info:
                info[key.strip()] = value.strip()
    except OSError:
        pass
    return info


def _cache_mb(level: int, kind: str = "Unified") -> float | None:
    """Total size of one cache level across the distinct caches the OS reports."""
    seen: dict[str, float] = {}
    for index in Path("/sys/devices/system/cpu").glob("cpu[0-9]*/cache/index[0-9]*"):
        try:
            if int((index / "level").read_text()) != level or (index / "type").read_text().strip() not in (
                kind,
                "Data",
            ):
                continue
            size = (index / "size").read_text().strip()
            shared = (index / "shared_cpu_list").read_text().strip()
        except (OSError, ValueError):
            continue
        factor = {"K": 1 / 1024, "M": 1.0, "G": 1024.0}.get(size[-1], 1 / (1024 * 1024))
        seen[shared] = float(size.rstrip("KMG")) * factor
    return sum(seen.values()) or None


def _max_mhz() -> float | None:
    """The highest clock the OS reports (cpufreq); None in guests that expose no cpufreq."""
    try:
        return int(Path("/sys/devices/system/cpu/cpu0/cpufreq/cpuinfo_max_freq").read_text()) / 1000
    except (OSError, ValueError):
        return None


def _mem_total_kb() -> int:
    """MemTotal from /proc/meminfo; 0 where it cannot be read."""
    try:
        return next(
            int(line.split()[1])
            for line in Path("/proc/meminfo").read_text().splitlines()
            if line.startswith("MemTotal")
        )
    except (OSError, StopIteration, ValueError):
        return 0


def measure_peak_gflops(threads: int, dtype: str, size: int = 2048, repeats: int = 3) -> float:
    """The best rate of a ``size``³ numpy matmul on ``threads`` BLAS threads: a floor for the peak."""
    import numpy as np
    from threadpoolctl import threadpool_limits

    rng = np.random.default_rng(0)
    a = rng.standard_normal((size, size)).astype(dtype)
    b = rng.standard_normal((size, size)).astype(dtype)
    best = float("inf")
    with threadpool_limits(limits=threads, user_api="blas"):
        a @ b  # warm-up: thread pool and pages
        for _ in range(repeats):
            started = time.perf_counter()
            a @ b
            best = min(best, time.perf_counter() - started)
    return 2.0 * size**3 / best / 1e9


def describe_local_cpu(
    memory_bandwidth_gbps: float | None = None,
    threads: int | None = None,
    measured_gflops: dict[str, float] | None = None,
) -> DeviceSpec:
    """This machine's CPU as a catalog device, from /proc and /sys.

    The FP32 peak is estimated from ISA flags at the highest clock the OS reports: two FMA pipes per core
    (2 flops each per lane), 512-bit lanes on Intel AVX-512, 256-bit lanes on AMD (Zen 4 executes AVX-512
    as two 256-bit halves) and on AVX2-only parts. Guests often report only the nominal clock, under the
    boost clock the cores really run at: ``measured_gflops`` (``float32`` / ``float64`` rates the
    collector measured) then raise the peak, which is never below a throughput measured on the machine
    (a roofline under the measurements would clip every prediction to it). A measured memory bandwidth
    may be passed in (the collector measures one); otherwise a conservative 10 GB/s per core stands in
    and the source says so.
    """
    info = cpuinfo()
    flags = set(info.get("flags", "").split())
    vendor_id = info.get("vendor_id", platform.processor() or "unknown")
    cores = threads or local_cpu_count()
    if "avx512f" in flags and vendor_id == "GenuineIntel":
        lanes = 16
    elif "avx2" in flags or "avx512f" in flags:
        lanes = 8
    else:
        lanes = 4
    nominal = float(info.get("cpu MHz", "0") or 0) or 2000.0
    max_mhz = _max_mhz()
    mhz = max_mhz or nominal
    measured = measured_gflops or {}
    fp32 = max(round(cores * mhz / 1000 * lanes * 2 * 2, 1), round(measured.get("float32", 0.0), 1))
    fp64 = max(round(cores * mhz / 1000 * lanes * 2, 1), round(measured.get("float64", 0.0), 1))
    peak_note = f"FP peaks: ISA flags at {mhz:.0f} MHz" + (
        ", raised to the measured numpy matmul rate" if measured else ""
    )
    isa = sorted(f for f in flags if f.startswith(("avx", "amx", "fma", "sse4")))
    mem_kb = _mem_total_kb()
    bandwidth_note = "measured by the collector" if memory_bandwidth_gbps else "assumed 10 GB/s per core"
    return DeviceSpec(
        name=f"{info.get('model name', platform.machine()).strip()} ({cores} cores)",
        kind="cpu",
        vendor=vendor_id,
        memory_gb=round(mem_kb / 1024 / 1024, 1) or 1.0,
        memory_bandwidth_gbps=memory_bandwidth_gbps or 10.0 * cores,
        sm_count=cores,
        cores_per_sm=lanes,
        clock_mhz=nominal,
        boost_clock_mhz=max_mhz,
        fp32_gflops=fp32,
        fp64_gflops=fp64,
        l2_cache_mb=_cache_mb(2) or 1.0,
        l3_cache_mb=_cache_mb(3),
        isa=isa,
        source=f"described from /proc/cpuinfo and /sys on {platform.node()}; {peak_note}; "
        f"bandwidth {bandwidth_note}",
    )


def cpu_flags() -> list[str]:
    """The ISA flags /proc/cpuinfo lists for the first CPU, sorted."""
    return sorted(cpuinfo().get("flags", "").split())
