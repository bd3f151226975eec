"""Device catalog: the hardware specs every GEMM feature is computed against.

Built-in devices come from ``service/data/devices.json`` (each with its source). A user adds a device
with one JSON or YAML file of the same fields in ``PERFCOST_DEVICE_DIR``; trained models also carry the
specs of every device they were trained on, so a locally measured CPU is known to the service that
serves its model.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Iterable
from importlib import resources
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from service.core.numbers import Int

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
    # Dense peaks per math unit (no structured sparsity), in GFLOP/s (GOP/s for INT8): null where the part
    # has no such unit. On tensor-core parts fp16/bf16/tf32/fp8/int8/fp4 are the tensor-core rates with
    # the accumulation frameworks use (FP32 for 16-bit and FP8 inputs; GeForce parts run FP32 accumulate
    # at half their FP16-accumulate rate); elsewhere fp16 is the vector (SIMT) FP16 rate.
    fp64_gflops: float | None = Field(default=None, ge=1e-3, le=1e9, allow_inf_nan=False)
    tf32_gflops: float | None = Field(default=None, ge=1e-3, le=1e9, allow_inf_nan=False)
    fp16_gflops: float | None = Field(default=None, ge=1e-3, le=1e9, allow_inf_nan=False)
    bf16_gflops: float | None = Field(default=None, ge=1e-3, le=1e9, allow_inf_nan=False)
    fp8_gflops: float | None = Field(default=None, ge=1e-3, le=1e9, allow_inf_nan=False)
    int8_gflops: float | None = Field(default=None, ge=1e-3, le=1e9, allow_inf_nan=False)
    fp4_gflops: float | None = Field(default=None, ge=1e-3, le=1e9, allow_inf_nan=False)
    boost_clock_mhz: float | None = Field(default=None, ge=1, le=100_000, allow_inf_nan=False)
    l3_cache_mb: float | None = Field(default=None, ge=1e-6, le=1e6, allow_inf_nan=False)
    tdp_w: float | None = Field(default=None, ge=1e-3, le=1e7, allow_inf_nan=False)
    price_per_hour_usd: float | None = Field(default=None, ge=0, le=1e6, allow_inf_nan=False)
    isa: list[str] = Field(default_factory=list, description="ISA extensions (CPU), e.g. avx2, avx512f, amx")
    source: str | None = Field(default=None, max_length=2000)

    def unit_gflops(self, unit: str) -> float | None:
        """The dense peak of one math unit (``fp64``, ``fp32``, ``tf32``, ``fp16``, ``bf16``, ``fp8``,
        ``int8``, ``fp4``), None where the device lists none."""
        value: float | None = getattr(self, f"{unit}_gflops")
        return value


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
