"""The GPU collector's measuring side: cuBLAS through torch on one NVIDIA GPU, NVML for the device and
energy.

What is timed: see :mod:`training.collect.gpu_timing` (operands, warm-up, CUDA-event batches).

Energy. Where NVML supports it (Volta and newer), ``nvmlDeviceGetTotalEnergyConsumption`` (mJ since the
driver loaded) is read just before the first timed batch is queued and just after the last one finished:
``energy_j`` is that difference over the timed calls (whole-board energy, static power included) and
``power_w`` the difference over the wall-clock time between the two reads. The counter advances in steps
(tens of milliseconds on the boards we know of), so at the default 0.2 s a row's energy is good to a few
percent at best; use ``--min-time 1`` or more for a dataset meant for energy. Where the counter is not
supported, or did not advance, both are blank.

Device. ``device.json`` is built from the driver: name, SM count, memory and L2 size from
``torch.cuda.get_device_properties``; maximum SM and memory clocks, memory bus width and default power
limit (``tdp_w``) from NVML; ``memory_bandwidth_gbps = 2 * mem_clock_MHz * bus_width / 8 / 1000`` (double
data rate); ``cores_per_sm`` and the dense FP16 tensor rate per SM and clock from tables by compute
capability (:data:`CORES_PER_SM`, :data:`FP16_FLOPS_PER_SM_CLOCK`), ``fp32_gflops = 2 * SMs * cores *
clock``. Peaks are at the maximum boost clock, so they can sit a few percent above a datasheet's.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from dataclasses import dataclass
from typing import Any, Protocol

from service.core.devices import DeviceSpec
from training.collect.gemm import Timing
from training.collect.gpu_sweep import GpuGemmConfig
from training.collect.gpu_timing import make_operands, summarize, timed_batches, warm_up
from training.collect.storage import CollectError

log = logging.getLogger(__name__)

INSTALL_HINT = "pip install -e '.[gpu]'"

# FP32 CUDA cores per SM by compute capability (NVIDIA CUDA C++ Programming Guide, "Arithmetic
# Instructions" throughput table, and the architecture whitepapers). 7.2/8.7 are Jetson Xavier/Orin;
# 10.0 (B200) and 12.0 (GeForce RTX 50) are Blackwell.
CORES_PER_SM: dict[tuple[int, int], int] = {
    (5, 0): 128,
    (5, 2): 128,
    (5, 3): 128,
    (6, 0): 64,
    (6, 1): 128,
    (6, 2): 128,
    (7, 0): 64,
    (7, 2): 64,
    (7, 5): 64,
    (8, 0): 64,
    (8, 6): 128,
    (8, 7): 128,
    (8, 9): 128,
    (9, 0): 128,
    (10, 0): 128,
    (12, 0): 128,
}
# Dense (no sparsity) FP16 matrix FLOPs per SM per clock, from the NVIDIA architecture whitepapers
# (Pascal GP100, Volta V100, Turing, Ampere GA100 and GA102, Ada, Hopper H100):
#   6.0 (P100): no tensor cores; half2 on the 64 FP32 lanes: 64 * 2 (half2) * 2 (FMA) = 256.
#   7.0 (V100), 7.5 (Turing): 8 tensor cores * 64 FMA = 512 FMA = 1024 FLOPs.
#   8.0 (A100): 4 tensor cores * 256 FMA = 1024 FMA = 2048 FLOPs.
#   8.6 (GA10x), 8.9 (Ada): 4 tensor cores * 128 FMA = 512 FMA = 1024 FLOPs.
#   9.0 (H100/H200): 4 tensor cores * 512 FMA = 2048 FMA = 4096 FLOPs.
# Check: A100 108 SM * 1.41 GHz * 2048 = 312 TFLOP/s; V100 SXM2 80 * 1.53 * 1024 = 125; H100 SXM
# 132 * 1.83 * 4096 = 989; L4 58 * 2.04 * 1024 = 121 (each the datasheet's dense FP16 figure).
# Assumption: these are the FP16-accumulate rates. torch accumulates FP16/BF16 GEMMs in FP32, which the
# data-centre and workstation parts run at the same rate but GeForce parts of 7.5, 8.6 and 8.9 at half
# (Turing, Ampere GA102 and Ada whitepapers), so a "GeForce" name halves the figure. Others (6.1 runs
# FP16 at 1/64 rate, Jetson, Blackwell) are left unknown: fp16_gflops None, the model then uses FP32.
FP16_FLOPS_PER_SM_CLOCK: dict[tuple[int, int], int] = {
    (6, 0): 256,
    (7, 0): 1024,
    (7, 5): 1024,
    (8, 0): 2048,
    (8, 6): 1024,
    (8, 9): 1024,
    (9, 0): 4096,
}
GEFORCE_HALF_RATE_FP32_ACCUMULATE = {(7, 5), (8, 6), (8, 9)}


class NoCudaDevice(CollectError):
    """torch (with CUDA) or a GPU is missing."""


class ConfigSkipped(Exception):
    """One configuration cannot be measured here (e.g. out of GPU memory); the run goes on without a
    row for it, so a later run tries it again."""


# --- measuring -------------------------------------------------------------------------------------
@dataclass(frozen=True)
class GpuTiming(Timing):
    power_w: float | None = None
    energy_j: float | None = None


class Backend(Protocol):
    """What the collector needs from a GPU: its description, its environment, and a timing (with energy
    where ``energy_supported``) of one configuration, or :class:`ConfigSkipped` when that one cannot
    be measured. :class:`TorchBackend` is the real one; tests pass a deterministic fake."""

    energy_supported: bool

    def device_spec(self) -> DeviceSpec: ...

    def environment(self) -> dict[str, Any]: ...

    def time(self, cfg: GpuGemmConfig, min_time: float) -> GpuTiming: ...

    def close(self) -> None: ...


def _import_torch() -> Any:
    import torch

    return torch


def _import_nvml() -> Any:
    import pynvml

    return pynvml


def _text(value: Any) -> str | None:
    if value is None:
        return None
    return value.decode() if isinstance(value, bytes) else str(value)


def peak_rates(
    major: int, minor: int, name: str, sm_count: int, clock_mhz: float
) -> tuple[int, float, float | None]:
    """(cores per SM, FP32 GFLOP/s, dense FP16 tensor GFLOP/s or None) at ``clock_mhz``."""
    cc = (major, minor)
    if cc not in CORES_PER_SM:
        known = ", ".join(f"{a}.{b}" for a, b in sorted(CORES_PER_SM))
        raise CollectError(
            f"compute capability {major}.{minor} ({name}) is not in the cores-per-SM table of "
            f"training/collect/gpu_backend.py (known: {known}); add it from NVIDIA's documentation"
        )
    cores = CORES_PER_SM[cc]
    fp32 = 2.0 * sm_count * cores * clock_mhz / 1000
    per_clock = FP16_FLOPS_PER_SM_CLOCK.get(cc)
    if per_clock is not None and cc in GEFORCE_HALF_RATE_FP32_ACCUMULATE and "geforce" in name.lower():
        per_clock //= 2
    fp16 = sm_count * per_clock * clock_mhz / 1000 if per_clock else None
    return cores, round(fp32, 1), round(fp16, 1) if fp16 else None


class TorchBackend:
    """cuBLAS through torch on ``cuda:<index>``, NVML for clocks, power limit and energy."""

    def __init__(self, torch: Any, nvml: Any, device_index: int) -> None:
        self.torch, self.nvml, self.index = torch, nvml, device_index
        self.device = torch.device(f"cuda:{device_index}")
        torch.cuda.set_device(self.device)
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.set_float32_matmul_precision("highest")
        self.props = torch.cuda.get_device_properties(self.device)
        nvml.nvmlInit()
        self.handle = self._nvml_handle()
        try:
            nvml.nvmlDeviceGetTotalEnergyConsumption(self.handle)
            self.energy_supported = True
        except nvml.NVMLError as exc:
            log.warning("NVML energy counter not available (%s): power_w and energy_j stay blank", exc)
            self.energy_supported = False
        self._spec: DeviceSpec | None = None

    def _nvml_handle(self) -> Any:
        nvml, uuid = self.nvml, getattr(self.props, "uuid", None)
        if uuid is not None:
            text = str(uuid)
            for candidate in (text if text.startswith(("GPU-", "MIG-")) else f"GPU-{text}", text):
                try:
                    return nvml.nvmlDeviceGetHandleByUUID(candidate)
                except nvml.NVMLError:
                    continue
        log.warning(
            "matching cuda:%d to NVML by index (no UUID match); check CUDA_VISIBLE_DEVICES", self.index
        )
        return nvml.nvmlDeviceGetHandleByIndex(self.index)

    def _nvml(self, fn: str, *args: Any) -> Any:
        try:
            return getattr(self.nvml, fn)(self.handle, *args)
        except self.nvml.NVMLError as exc:
            log.warning("NVML %s not available: %s", fn, exc)
            return None

    def _copy_bandwidth_gbps(self, mib: int = 512) -> float:
        """Device-to-device copy of ``mib`` MiB, bytes read + written, best of 5 (fallback only)."""
        torch = self.torch
        src = torch.ones(mib * 2**18, device=self.device)
        dst = torch.empty_like(src)
        dst.copy_(src)
        best = math.inf
        for _ in range(5):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            dst.copy_(src)
            end.record()
            end.synchronize()
            best = min(best, start.elapsed_time(end) / 1000)
        return 2 * src.numel() * 4 / best / 1e9

    def device_spec(self) -> DeviceSpec:
        if self._spec is not None:
            return self._spec
        nvml, props = self.nvml, self.props
        name = str(props.name)
        clock = self._nvml("nvmlDeviceGetMaxClockInfo", nvml.NVML_CLOCK_SM)
        if not clock:
            raise CollectError(f"NVML reports no maximum SM clock for {name}; cannot derive the peak rates")
        mem_clock = self._nvml("nvmlDeviceGetMaxClockInfo", nvml.NVML_CLOCK_MEM)
        bus_width = self._nvml("nvmlDeviceGetMemoryBusWidth")
        how = "NVML max memory clock x bus width x 2 (DDR)"
        # cudaDeviceProp's memory clock is in kHz (torch exposes it from 2.6 on): the same formula.
        cuda_clock_khz = getattr(props, "memory_clock_rate", None)
        cuda_bus_width = getattr(props, "memory_bus_width", None)
        if mem_clock and bus_width:
            bandwidth = 2 * mem_clock * bus_width / 8 / 1000
        elif cuda_clock_khz and cuda_bus_width:
            bandwidth = 2 * cuda_clock_khz * cuda_bus_width / 8 / 1e6
            how = "CUDA device properties: memory clock x bus width x 2 (DDR)"
        else:
            bandwidth, how = (
                self._copy_bandwidth_gbps(),
                "measured device-to-device copy (NVML lacks bus width)",
            )
        l2_bytes = getattr(props, "L2_cache_size", None)
        if not l2_bytes:
            raise CollectError(f"torch {self.torch.__version__} does not report the L2 size; {INSTALL_HINT}")
        cores, fp32, fp16 = peak_rates(props.major, props.minor, name, props.multi_processor_count, clock)
        limit = self._nvml("nvmlDeviceGetPowerManagementDefaultLimit")
        self._spec = DeviceSpec(
            name=name,
            kind="gpu",
            vendor="NVIDIA",
            memory_gb=round(props.total_memory / 2**30, 2),
            memory_bandwidth_gbps=round(bandwidth, 1),
            sm_count=props.multi_processor_count,
            cores_per_sm=cores,
            clock_mhz=float(clock),
            fp32_gflops=fp32,
            fp16_gflops=fp16,
            l2_cache_mb=round(l2_bytes / 2**20, 3),
            tdp_w=round(limit / 1000, 1) if limit else None,
            source=f"described by perfcost collect gpu-gemm from torch.cuda.get_device_properties and NVML "
            f"(compute capability {props.major}.{props.minor}); bandwidth: {how}; FP32/FP16 peaks at the max "
            "SM clock from the cores-per-SM and tensor-rate tables (NVIDIA architecture whitepapers)",
        )
        return self._spec

    def environment(self) -> dict[str, Any]:
        torch, nvml = self.torch, self.nvml
        cuda_driver = None
        try:
            version = nvml.nvmlSystemGetCudaDriverVersion_v2()
            cuda_driver = f"{version // 1000}.{version % 1000 // 10}"
        except (nvml.NVMLError, AttributeError):
            pass
        clocks = {
            f"{what}_clock_mhz_at_start": self._nvml(
                "nvmlDeviceGetClockInfo", getattr(nvml, f"NVML_CLOCK_{what.upper()}")
            )
            for what in ("sm", "mem")
        }
        power_limit = self._nvml("nvmlDeviceGetEnforcedPowerLimit")
        temperature = self._nvml("nvmlDeviceGetTemperature", nvml.NVML_TEMPERATURE_GPU)
        return {
            "gpu": str(self.props.name),
            "gpu_uuid": _text(self._nvml("nvmlDeviceGetUUID")),
            "compute_capability": f"{self.props.major}.{self.props.minor}",
            "device_index": self.index,
            "driver": self._driver_version(),
            "cuda_driver": cuda_driver,
            "cuda_runtime": torch.version.cuda,
            "torch": torch.__version__,
            "cublas": "cuBLAS of the torch build (torch.matmul / torch.bmm)",
            "allow_tf32": bool(torch.backends.cuda.matmul.allow_tf32),
            "allow_fp16_reduced_precision_reduction": bool(
                torch.backends.cuda.matmul.allow_fp16_reduced_precision_reduction
            ),
            "float32_matmul_precision": torch.get_float32_matmul_precision(),
            "energy_supported": self.energy_supported,
            "enforced_power_limit_w": power_limit / 1000 if power_limit else None,
            "temperature_c_at_start": temperature,
            **clocks,
        }

    def _driver_version(self) -> str | None:
        try:
            return _text(self.nvml.nvmlSystemGetDriverVersion())
        except self.nvml.NVMLError as exc:
            log.warning("NVML driver version not available: %s", exc)
            return None

    def _energy_mj(self) -> int | None:
        if not self.energy_supported:
            return None
        try:
            return int(self.nvml.nvmlDeviceGetTotalEnergyConsumption(self.handle))
        except self.nvml.NVMLError:
            return None

    def time(self, cfg: GpuGemmConfig, min_time: float) -> GpuTiming:
        try:
            return self._time(cfg, min_time)
        except self.torch.cuda.OutOfMemoryError as exc:
            raise ConfigSkipped(f"out of GPU memory: {str(exc).splitlines()[0]}") from None
        finally:
            self.torch.cuda.empty_cache()  # the next configuration starts from a clean pool

    def _time(self, cfg: GpuGemmConfig, min_time: float) -> GpuTiming:
        call = make_operands(self.torch, cfg, self.device)
        estimate_ms, per_batch = warm_up(self.torch, self.device, call, min_time)
        energy_before, wall_before = self._energy_mj(), time.perf_counter()
        per_call = timed_batches(self.torch, call, per_batch, estimate_ms, min_time)
        energy_after, wall_after = self._energy_mj(), time.perf_counter()
        runtime_ms, spread = summarize(per_call)
        repeats = len(per_call) * per_batch
        power = energy = None
        if energy_before is not None and energy_after is not None and energy_after > energy_before:
            joules = (energy_after - energy_before) / 1000
            energy, power = joules / repeats, joules / (wall_after - wall_before)
        return GpuTiming(runtime_ms, spread, repeats, power, energy)

    def close(self) -> None:
        with contextlib.suppress(self.nvml.NVMLError):
            self.nvml.nvmlShutdown()


def make_backend(device_index: int) -> Backend:
    """The torch/NVML backend on ``cuda:<device_index>``; :class:`NoCudaDevice` (one line) if torch,
    CUDA, a GPU or NVML is missing."""
    try:
        torch = _import_torch()
    except ImportError as exc:
        raise NoCudaDevice(
            f"no CUDA device: torch is not installed ({exc}); install it with {INSTALL_HINT}"
        ) from None
    if not torch.cuda.is_available():
        raise NoCudaDevice(
            f"no CUDA device: torch {torch.__version__} (CUDA build {torch.version.cuda}) sees no GPU "
            "(torch.cuda.is_available() is false); on a machine with an NVIDIA GPU and driver, install a "
            f"CUDA build of torch: {INSTALL_HINT}"
        )
    count = torch.cuda.device_count()
    if not 0 <= device_index < count:
        raise NoCudaDevice(f"no CUDA device: --device-index {device_index}, but torch sees {count} GPU(s)")
    try:
        nvml = _import_nvml()
    except ImportError:
        raise CollectError(
            f"nvidia-ml-py (pynvml) is not installed; install it with {INSTALL_HINT}"
        ) from None
    try:
        return TorchBackend(torch, nvml, device_index)
    except nvml.NVMLError as exc:
        raise CollectError(f"NVML failed on cuda:{device_index}: {exc}") from None
