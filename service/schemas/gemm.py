"""GEMM request/response schemas (``POST /v1/gemm/predict``)."""

from __future__ import annotations

from typing import Self

from pydantic import ConfigDict, Field, StrictFloat, model_validator

from service.devices import DeviceSpec
from service.features.gemm import Dtype, Layout, Op
from service.schemas.common import Int, Interval, ModelRef, OptionalInt, Strict

MAX_DIM = 1 << 24  # 16M: far past any measured GEMM; larger sizes are input errors, not predictions.
MAX_BATCH_DIM = 1 << 20


class GemmInstance(Strict):
    # The schema states what one_device enforces, so clients and generated tests see it too.
    model_config = ConfigDict(
        json_schema_extra={
            "oneOf": [
                {"required": ["device"], "properties": {"device": {"type": "string"}}},
                {"required": ["device_spec"], "properties": {"device_spec": {"type": "object"}}},
            ]
        }
    )

    m: Int = Field(gt=0, le=MAX_DIM, description="Rows of A and C")
    n: Int = Field(gt=0, le=MAX_DIM, description="Columns of B and C")
    k: Int = Field(gt=0, le=MAX_DIM, description="Shared dimension")
    batch: Int = Field(default=1, gt=0, le=MAX_BATCH_DIM)
    op: Op = "gemm"
    dtype: Dtype = "float32"
    layout: Layout | None = None
    kernel: str | None = Field(default=None, max_length=200, description="Kernel name, e.g. a CUTLASS kernel")
    tile_m: OptionalInt = Field(default=None, gt=0, le=4096)
    tile_n: OptionalInt = Field(default=None, gt=0, le=4096)
    tile_k: OptionalInt = Field(default=None, gt=0, le=4096)
    stages: OptionalInt = Field(default=None, gt=0, le=64)
    alpha: StrictFloat | None = None
    beta: StrictFloat | None = None
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


class GemmPrediction(Strict):
    runtime_ms: Interval | None
    power_w: Interval | None
    energy_j: Interval | None
    utilization: Interval | None = Field(description="Achieved FLOP/s over the device's peak for the dtype")
    cost_usd: Interval | None = None
    co2_g: Interval | None = None
    unavailable: dict[str, str] = Field(default_factory=dict, description="Why a target is null")
    out_of_distribution: bool
    ood_reasons: list[str]


class GemmPredictResponse(ModelRef):
    predictions: list[GemmPrediction]
