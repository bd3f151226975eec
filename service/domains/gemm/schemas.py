"""GEMM request/response schemas (``POST /v1/gemm/predict``, ``POST /v1/gemm/search``)."""

from __future__ import annotations

from typing import Any, Literal, Self

from pydantic import ConfigDict, Field, StrictBool, StrictFloat, model_validator

from service.core.devices import DeviceSpec
from service.core.schemas import Int, Interval, ModelRef, OptionalInt, Strict
from service.domains.gemm.dtypes import QUANTIZED_ACTIVATION_DTYPES, Dtype
from service.domains.gemm.features import Layout, Op

MAX_DIM = 1 << 24  # 16M: far past any measured GEMM; larger sizes are input errors, not predictions.
MAX_BATCH_DIM = 1 << 20


class GemmShape(Strict):
    """The product: sizes, batch, op, dtype, layout and scaling factors."""

    m: Int = Field(gt=0, le=MAX_DIM, description="Rows of A and C")
    n: Int = Field(gt=0, le=MAX_DIM, description="Columns of B and C")
    k: Int = Field(gt=0, le=MAX_DIM, description="Shared dimension")
    batch: Int = Field(default=1, gt=0, le=MAX_BATCH_DIM)
    op: Op = "gemm"
    dtype: Dtype = Field(
        default="float32",
        description="Element type and the math it runs on. float32/float64/float16/bfloat16: both operands "
        "and C in that type; tfloat32: float32 data on TF32 tensor cores; float8_e4m3fn/float8_e5m2: FP8 "
        "operands with per-tensor scales, BF16 output; float8_block: E4M3 with 1x128 activation and 128x128 "
        "weight block scales (DeepSeek-V3/DeepGEMM style); nvfp4: FP4 E2M1 with an E4M3 scale per 16 "
        "elements; int8: W8A8 (e.g. SmoothQuant), BF16 output; int8_weight_only/int4_weight_only: BF16 "
        "activations times weights dequantized in the kernel. A is the activation (m x k), B the weight.",
    )
    quantize_activation: StrictBool | None = Field(
        default=None,
        description="Whether quantizing A (the BF16 activation) into the dtype is part of the timed op, as "
        "in TensorRT-LLM's dynamic FP8/FP4 path: one more elementwise pass (read A in BF16, write it "
        "quantized) and a launch. Unset or false: a bare GEMM on operands already quantized, with "
        "precomputed scales (cuBLASLt, DeepGEMM). Only for dtypes with a quantized activation: "
        + ", ".join(QUANTIZED_ACTIVATION_DTYPES),
    )
    layout: Layout | None = None
    alpha: StrictFloat | None = None
    beta: StrictFloat | None = None

    @model_validator(mode="after")
    def quantize_only_quantized(self) -> Self:
        if self.quantize_activation and self.dtype not in QUANTIZED_ACTIVATION_DTYPES:
            raise ValueError(
                f"quantize_activation: dtype {self.dtype!r} has no quantized activation to produce; it "
                f"applies to {', '.join(QUANTIZED_ACTIVATION_DTYPES)}"
            )
        return self


class GemmConfiguration(Strict):
    """How the product is computed: a kernel and its tile or tuning parameters, CPU threads (all optional:
    unset means the library's own choice)."""

    kernel: str | None = Field(default=None, max_length=200, description="Kernel name, e.g. a CUTLASS kernel")
    framework: str | None = Field(
        default=None,
        max_length=100,
        description="Framework or library that runs the GEMM (e.g. trtllm, vllm, sglang, cublas)",
    )
    framework_version: str | None = Field(
        default=None, max_length=100, description="Its version (kept with measurements; no model input)"
    )
    tile_m: OptionalInt = Field(default=None, gt=0, le=4096)
    tile_n: OptionalInt = Field(default=None, gt=0, le=4096)
    tile_k: OptionalInt = Field(default=None, gt=0, le=4096)
    stages: OptionalInt = Field(default=None, gt=0, le=64)
    threads: OptionalInt = Field(default=None, gt=0, le=4096, description="CPU threads used")
    mwg: OptionalInt = Field(default=None, gt=0, le=4096)
    nwg: OptionalInt = Field(default=None, gt=0, le=4096)
    kwg: OptionalInt = Field(default=None, gt=0, le=4096)
    mdimc: OptionalInt = Field(default=None, gt=0, le=4096)
    ndimc: OptionalInt = Field(default=None, gt=0, le=4096)
    mdima: OptionalInt = Field(default=None, gt=0, le=4096)
    ndimb: OptionalInt = Field(default=None, gt=0, le=4096)
    kwi: OptionalInt = Field(default=None, gt=0, le=4096)
    vwm: OptionalInt = Field(default=None, gt=0, le=64)
    vwn: OptionalInt = Field(default=None, gt=0, le=64)
    strm: OptionalInt = Field(default=None, ge=0, le=1)
    strn: OptionalInt = Field(default=None, ge=0, le=1)
    sa: OptionalInt = Field(default=None, ge=0, le=1)
    sb: OptionalInt = Field(default=None, ge=0, le=1)


class GemmInstance(GemmConfiguration, GemmShape):
    # The schema states what one_device enforces, so clients and generated tests see it too.
    model_config = ConfigDict(
        json_schema_extra={
            "oneOf": [
                {"required": ["device"], "properties": {"device": {"type": "string"}}},
                {"required": ["device_spec"], "properties": {"device_spec": {"type": "object"}}},
            ]
        }
    )

    device: str | None = Field(default=None, min_length=1, max_length=200, description="Catalog device name")
    device_spec: DeviceSpec | None = Field(
        default=None, description="Inline specs of a device the catalog lacks"
    )
    price_per_hour_usd: StrictFloat | None = Field(default=None, ge=0, le=1e6)
    grid_gco2_per_kwh: StrictFloat | None = Field(default=None, ge=0, le=1e4)

    @model_validator(mode="after")
    def one_device(self) -> Self:
        if (self.device is None) == (self.device_spec is None):
            raise ValueError("give exactly one of 'device' (a catalog name) or 'device_spec' (inline specs)")
        return self


class GemmPredictRequest(Strict):
    instances: list[GemmInstance] = Field(min_length=1, description="GEMM configurations to predict")
    coverage: StrictFloat = Field(
        default=0.9, gt=0.0, lt=1.0, description="Coverage of the prediction intervals"
    )


class Roofline(Strict):
    """Where the GEMM sits on its device's roofline: the work, the bytes it moves at least, and the peaks
    its dtype and configuration can use (achieved rate = flops / runtime)."""

    flops: float
    bytes: float
    peak_gflops: float
    bandwidth_gbps: float
    peak_unit: str = Field(description="The math unit whose dense peak prices the dtype (fp32, bf16, fp8)")
    peak_fallback: str | None = Field(
        default=None,
        description="Why the peak is not the dtype's own unit's: the device lacks that unit and runs the "
        "dtype on another (also among the out-of-distribution reasons)",
    )


class GemmPrediction(Strict):
    runtime_ms: Interval | None
    power_w: Interval | None
    energy_j: Interval | None
    utilization: Interval | None = Field(description="Achieved FLOP/s over the device's peak for the dtype")
    cost_usd: Interval | None = None
    co2_g: Interval | None = None
    unavailable: dict[str, str] = Field(default_factory=dict, description="Why a target is null")
    roofline: Roofline
    out_of_distribution: bool
    ood_reasons: list[str]


class GemmPredictResponse(ModelRef):
    predictions: list[GemmPrediction]


class GemmLayer(GemmShape):
    count: Int = Field(default=1, gt=0, le=1_000_000, description="How often the workload runs this GEMM")


class SearchConstraints(Strict):
    max_power_w: StrictFloat | None = Field(default=None, gt=0, description="Highest power of any layer")
    max_cost_usd: StrictFloat | None = Field(default=None, gt=0, description="Cost of the whole workload")
    max_time_ms: StrictFloat | None = Field(default=None, gt=0, description="Time of the whole workload")


Objective = Literal["time", "energy", "cost"]


class GemmSearchRequest(Strict):
    workload: list[GemmLayer] = Field(min_length=1, description="The GEMMs of one run, each with its count")
    devices: list[str] | None = Field(
        default=None, min_length=1, description="Candidate catalog devices (default: the whole catalog)"
    )
    configurations: list[GemmConfiguration] = Field(
        default_factory=lambda: [GemmConfiguration()],
        min_length=1,
        description="Candidate kernel / tile / tuning configurations (default: the library's own choice)",
    )
    objective: Objective = Field(default="time", description="What the ranking minimises")
    constraints: SearchConstraints = Field(default_factory=SearchConstraints)
    coverage: StrictFloat = Field(default=0.9, gt=0.0, lt=1.0, description="Coverage of the intervals")
    top: Int = Field(default=10, gt=0, le=1000, description="How many ranked candidates to return")


class SearchCandidate(Strict):
    device: str
    configuration: dict[str, Any] = Field(description="The configuration's set fields")
    time_ms: Interval
    energy_j: Interval | None
    cost_usd: Interval | None
    max_power_w: Interval | None
    out_of_distribution: bool
    ood_reasons: list[str]


class SearchExclusion(Strict):
    device: str
    configuration: dict[str, Any]
    reason: str


class GemmSearchResponse(ModelRef):
    objective: Objective
    candidates_considered: int
    ranked: list[SearchCandidate]
    excluded: list[SearchExclusion]
