"""Device catalog: the hardware specs every GEMM feature is computed against.

Built-in devices come from ``service/data/devices.json`` (each with its source). A user adds a device
with one JSON or YAML file of the same fields in ``PERFCOST_DEVICE_DIR``; trained models also carry the
specs of every device they were trained on, so a locally measured CPU is known to the service that
serves its model.
"""

from __future__ import annotations

import json
import logging
import os
import platform
import re
from collections.abc import Iterable
from importlib import resources
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from service.schemas.common import Int

log = logging.getLogger(__name__)

SPEC_FIELDS = (
    "memory_gb",
    "memory_bandwidth_gbps",
    "sm_count",
    "cores_per_sm",
    "clock_mhz",
    "fp32_gflops",
    "l2_cache_mb",
)


class DeviceError(ValueError):
    """A device could not be found or described; the message says what to do."""


class DeviceSpec(BaseModel):
    """One device. GPUs use the NeuSight fields; a CPU maps cores to ``sm_count`` and FP32 SIMD lanes
    per core to ``cores_per_sm`` so one feature module serves both."""

    # Strict: an inline spec in a request rejects "64" and true for numbers, as every other field does.
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    name: str = Field(min_length=1, max_length=200)
    kind: Literal["gpu", "cpu"] = "gpu"
    vendor: str | None = Field(default=None, max_length=100)
    # Bounds span microcontrollers to exascale systems: beyond them the features over- or underflow, so
    # a spec outside is an input error, not a device.
    memory_gb: float = Field(ge=1e-6, le=1e7, allow_inf_nan=False)
    memory_bandwidth_gbps: float = Field(ge=1e-3, le=1e7, allow_inf_nan=False)
    sm_count: Int = Field(gt=0, le=1_000_000)
    cores_per_sm: Int = Field(gt=0, le=100_000)
    clock_mhz: float = Field(ge=1, le=100_000, allow_inf_nan=False)
    fp32_gflops: float = Field(ge=1e-3, le=1e9, allow_inf_nan=False)
    l2_cache_mb: float = Field(ge=1e-6, le=1e6, allow_inf_nan=False)
    fp64_gflops: float | None = Field(default=None, ge=1e-3, le=1e9, allow_inf_nan=False)
    fp16_gflops: float | None = Field(default=None, ge=1e-3, le=1e9, allow_inf_nan=False)
    l3_cache_mb: float | None = Field(default=None, ge=1e-6, le=1e6, allow_inf_nan=False)
    tdp_w: float | None = Field(default=None, ge=1e-3, le=1e7, allow_inf_nan=False)
    price_per_hour_usd: float | None = Field(default=None, ge=0, le=1e6, allow_inf_nan=False)
    isa: list[str] = Field(default_factory=list, description="ISA extensions (CPU), e.g. avx2, avx512f, amx")
    source: str | None = Field(default=None, max_length=2000)

    def peak_gflops(self, dtype: str) -> float:
        """Peak rate for a dtype: FP64 when known, otherwise FP32 (the rate every device lists)."""
        if dtype == "float64" and self.fp64_gflops:
            return self.fp64_gflops
        if dtype in ("float16", "bfloat16") and self.fp16_gflops:
            return self.fp16_gflops
        return self.fp32_gflops


def canonical(name: str) -> str:
    """Catalog key: case-insensitive, with runs of spaces, underscores and hyphens treated alike."""
    return re.sub(r"[\s_\-]+", " ", name.strip().lower())


def read_device_file(path: Path) -> list[DeviceSpec]:
    try:
        raw = (
            yaml.safe_load(path.read_text())
            if path.suffix in (".yaml", ".yml")
            else json.loads(path.read_text())
        )
    except (OSError, ValueError, yaml.YAMLError) as exc:
        raise DeviceError(f"device file {path}: cannot be read: {exc}") from exc
    items = raw.get("devices", [raw]) if isinstance(raw, dict) else raw
    specs = []
    for item in items:
        try:
            specs.append(DeviceSpec.model_validate(item))
        except ValidationError as exc:
            errors = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
            raise DeviceError(f"device file {path}: {errors}") from exc
    return specs


class DeviceCatalog:
    """Name → spec, matched case-insensitively."""

    def __init__(self, devices: Iterable[DeviceSpec] = ()) -> None:
        self._by_key: dict[str, DeviceSpec] = {}
        for device in devices:
            self.add(device)

    @classmethod
    def default(cls, device_dir: Path | None = None) -> DeviceCatalog:
        text = resources.files("service").joinpath("data/devices.json").read_text()
        catalog = cls(DeviceSpec.model_validate(d) for d in json.loads(text)["devices"])
        if device_dir is not None:
            if not device_dir.is_dir():
                raise DeviceError(f"PERFCOST_DEVICE_DIR={device_dir} is not a directory")
            for path in sorted(device_dir.iterdir()):
                if path.suffix in (".json", ".yaml", ".yml"):
                    for spec in read_device_file(path):
                        catalog.add(spec)
        return catalog

    def add(self, device: DeviceSpec) -> None:
        self._by_key[canonical(device.name)] = device

    def get(self, name: str) -> DeviceSpec:
        try:
            return self._by_key[canonical(name)]
        except KeyError:
            raise DeviceError(
                f"unknown device {name!r}: GET /v1/devices lists the known ones; describe a new one inline "
                "with 'device_spec' or add a JSON/YAML file with the same fields to PERFCOST_DEVICE_DIR"
            ) from None

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and canonical(name) in self._by_key

    def __iter__(self):  # type: ignore[no-untyped-def]
        return iter(sorted(self._by_key.values(), key=lambda d: d.name))

    def __len__(self) -> int:
        return len(self._by_key)


def _cpuinfo() -> dict[str, str]:
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


def _max_mhz(info: dict[str, str]) -> float:
    try:
        return int(Path("/sys/devices/system/cpu/cpu0/cpufreq/cpuinfo_max_freq").read_text()) / 1000
    except (OSError, ValueError):
        return float(info.get("cpu MHz", "0") or 0) or 2000.0


def describe_local_cpu(memory_bandwidth_gbps: float | None = None, threads: int | None = None) -> DeviceSpec:
    """This machine's CPU as a catalog device, from /proc and /sys.

    The FP32 peak is estimated from ISA flags: two FMA pipes per core (2 flops each per lane), 512-bit
    lanes on Intel AVX-512,
    256-bit lanes on AMD (Zen 4 executes AVX-512 as two 256-bit halves) and on AVX2-only parts. A measured
    memory bandwidth may be passed in (the collector measures one); otherwise a conservative 10 GB/s per
    core stands in and the source says so.
    """
    info = _cpuinfo()
    flags = set(info.get("flags", "").split())
    vendor_id = info.get("vendor_id", platform.processor() or "unknown")
    cores = threads or len(os.sched_getaffinity(0))
    if "avx512f" in flags and vendor_id == "GenuineIntel":
        lanes = 16
    elif "avx2" in flags or "avx512f" in flags:
        lanes = 8
    else:
        lanes = 4
    mhz = _max_mhz(info)
    isa = sorted(f for f in flags if f.startswith(("avx", "amx", "fma", "sse4")))
    try:
        mem_kb = next(
            int(line.split()[1])
            for line in Path("/proc/meminfo").read_text().splitlines()
            if line.startswith("MemTotal")
        )
    except (OSError, StopIteration, ValueError):
        mem_kb = 0
    bandwidth_note = "measured by the collector" if memory_bandwidth_gbps else "assumed 10 GB/s per core"
    return DeviceSpec(
        name=f"{info.get('model name', platform.machine()).strip()} ({cores} cores)",
        kind="cpu",
        vendor=vendor_id,
        memory_gb=round(mem_kb / 1024 / 1024, 1) or 1.0,
        memory_bandwidth_gbps=memory_bandwidth_gbps or 10.0 * cores,
        sm_count=cores,
        cores_per_sm=lanes,
        clock_mhz=mhz,
        fp32_gflops=round(cores * mhz / 1000 * lanes * 2 * 2, 1),
        fp64_gflops=round(cores * mhz / 1000 * lanes * 2, 1),
        l2_cache_mb=_cache_mb(2) or 1.0,
        l3_cache_mb=_cache_mb(3),
        isa=isa,
        source=f"described from /proc/cpuinfo and /sys on {platform.node()}; FP peaks estimated from ISA "
        f"flags; bandwidth {bandwidth_note}",
    )
