"""GEMM request/response schemas (``POST /v1/gemm/predict``)."""

from __future__ import annotations

from typing import Self

from pydantic import Field, StrictFloat, StrictInt, model_validator

from service.devices import DeviceSpec
from service.features.gemm import Dtype, Layout, Op
from service.schemas.common import Interval, ModelRef, Strict

MAX_DIM = 1 << 24  # 16M: far past any measured GEMM; larger sizes are input errors, not predictions.
MAX_BATCH_DIM = 1 << 20


class GemmInstance(Strict):
    m: StrictInt = Field(gt=0, le=MAX_DIM, description="Rows of A and C")
    n: StrictInt = Field(gt=0, le=MAX_DIM, description="Columns of B and C")
    k: StrictInt = Field(gt=0, le=MAX_DIM, description="Shared dimension")
    batch: StrictInt = Field(default=1, gt=0, le=MAX_BATCH_DIM)
    op: Op = "gemm"
    dtype: Dtype = "float32"
    layout: Layout | None = None
    kernel: str | None = Field(default=None, max_length=200, description="Kernel name, e.g. a CUTLASS kernel")
    tile_m: StrictInt | None = Field(default=None, gt=0, le=4096)
    tile_n: StrictInt | None = Field(default=None, gt=0, le=4096)
    tile_k: StrictInt | None = Field(default=None, gt=0, le=4096)
    stages: StrictInt | None = Field(default=None, gt=0, le=64)
    alpha: StrictFloat | None = None
    beta: StrictFloat | None = None
    threads: StrictInt | None = Field(default=None, gt=0, le=4096, description="CPU threads used")
    mwg: StrictInt | None = Field(default=None, gt=0, le=4096)
    nwg: StrictInt | None = Field(default=None, gt=0, le=4096)
    kwg: StrictInt | None = Field(default=None, gt=0, le=4096)
    mdimc: StrictInt | None = Field(default=None, gt=0, le=4096)
    ndimc: StrictInt | None = Field(default=None, gt=0, le=4096)
    mdima: StrictInt | None = Field(default=None, gt=0, le=4096)
    ndimb: StrictInt | None = Field(default=None, gt=0, le=4096)
    kwi: StrictInt | None = Field(default=None, gt=0, le=4096)
    vwm: StrictInt | None = Field(default=None, gt=0, le=64)
    vwn: StrictInt | None = Field(default=None, gt=0, le=64)
    strm: StrictInt | None = Field(default=None, ge=0, le=1)
    strn: StrictInt | None = Field(default=None, ge=0, le=1)
    sa: StrictInt | None = Field(default=None, ge=0, le=1)
    sb: StrictInt | None = Field(default=None, ge=0, le=1)
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
