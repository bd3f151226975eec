"""GEMM dtypes: what each means for the physics (bytes per operand, the math unit that runs it, whether
quantizing the activation can be part of the op) and the peak a device offers it, falling back where the
device lacks the unit. Part of the GEMM feature module's math: a change here bumps its FEATURE_VERSION."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, get_args

from service.core.devices import DeviceSpec

Dtype = Literal[
    "float16",
    "bfloat16",
    "float32",
    "float64",
    "int8",
    "tfloat32",
    "float8_e4m3fn",
    "float8_e5m2",
    "float8_block",
    "nvfp4",
    "int8_weight_only",
    "int4_weight_only",
]
DTYPES: tuple[str, ...] = get_args(Dtype)
# Math units a device lists a dense peak for (``DeviceSpec.<unit>_gflops``).
Unit = Literal["fp64", "fp32", "tf32", "fp16", "bf16", "fp8", "int8", "fp4"]


@dataclass(frozen=True)
class DtypeSpec:
    """What a dtype means for the physics: bytes per element of A (the activation), B (the weight) and C,
    the math unit that runs it, and whether quantizing A can be part of the op (a request says so with
    ``quantize_activation``)."""

    a_bytes: float
    b_bytes: float
    c_bytes: float
    unit: Unit
    quantized_activation: bool = False


# FP8 and NVFP4 products write BF16; block and group scales add their bytes per element (NVFP4: one E4M3
# scale per 16 elements; INT4 weight-only: one 16-bit scale per group of 128; FP8 block: one FP32 scale per
# 128 activation elements and per 128x128 weight block). Weight-only formats multiply BF16 activations by
# weights dequantized in the kernel, on the BF16 unit. ``int8`` is W8A8 (e.g. SmoothQuant) with BF16 output.
DTYPE_SPECS: dict[str, DtypeSpec] = {
    "float16": DtypeSpec(2, 2, 2, "fp16"),
    "bfloat16": DtypeSpec(2, 2, 2, "bf16"),
    "float32": DtypeSpec(4, 4, 4, "fp32"),
    "float64": DtypeSpec(8, 8, 8, "fp64"),
    "int8": DtypeSpec(1, 1, 2, "int8", quantized_activation=True),
    "tfloat32": DtypeSpec(4, 4, 4, "tf32"),
    "float8_e4m3fn": DtypeSpec(1, 1, 2, "fp8", quantized_activation=True),
    "float8_e5m2": DtypeSpec(1, 1, 2, "fp8", quantized_activation=True),
    "float8_block": DtypeSpec(1 + 4 / 128, 1 + 4 / 128**2, 2, "fp8", quantized_activation=True),
    "nvfp4": DtypeSpec(0.5 + 1 / 16, 0.5 + 1 / 16, 2, "fp4", quantized_activation=True),
    "int8_weight_only": DtypeSpec(2, 1 + 2 / 128, 2, "bf16"),
    "int4_weight_only": DtypeSpec(2, 0.5 + 2 / 128, 2, "bf16"),
}
QUANTIZED_ACTIVATION_DTYPES = tuple(d for d, s in DTYPE_SPECS.items() if s.quantized_activation)
# Where a device has no unit for a dtype, the rate the hardware and its libraries really fall back to:
# FP8 and FP4 weights are dequantized to 16 bits in the kernel (as vLLM's Marlin kernels do on Ampere and
# Hopper), INT8 without integer tensor cores runs as FP16, TF32 without tensor cores is plain FP32, and
# 16-bit types without a unit of their own run on the FP32 vector units.
FALLBACKS: dict[str, tuple[str, ...]] = {
    "fp64": ("fp32",),
    "fp32": (),
    "tf32": ("fp32",),
    "fp16": ("fp32",),
    "bf16": ("fp32",),
    "fp8": ("fp16", "bf16", "fp32"),
    "int8": ("fp16", "fp32"),
    "fp4": ("bf16", "fp16", "fp32"),
}


@dataclass(frozen=True)
class Peak:
    """The rate a dtype runs at on a device, the unit behind it and, when that is not the dtype's own
    unit, why (the response flags it)."""

    gflops: float
    unit: str
    fallback: str | None = None


def dtype_peak(spec: DeviceSpec, dtype: str) -> Peak:
    """The dense peak of ``spec`` for ``dtype``: its own unit's, else the first unit it falls back to
    (:data:`FALLBACKS`), flagged with the reason. An unknown dtype is priced as float32."""
    unit = DTYPE_SPECS[dtype].unit if dtype in DTYPE_SPECS else "fp32"
    own = spec.unit_gflops(unit)
    if own is not None:
        return Peak(own, unit)
    for other in FALLBACKS[unit]:
        rate = spec.unit_gflops(other)
        if rate is not None:
            why = (
                f"{spec.name!r} lists no {unit.upper()} peak for dtype {dtype!r}: priced at its "
                f"{other.upper()} rate ({rate:.6g} GFLOP/s), the unit it falls back to"
            )
            return Peak(rate, other, why)
    raise AssertionError("fp32_gflops is required of every device")  # pragma: no cover
