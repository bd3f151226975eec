"""MLIR request/response schemas (``POST /v1/mlir/predict``)."""

from __future__ import annotations

from pydantic import BaseModel, Field, StrictFloat, StrictStr

from service.core.schemas import Interval, ModelRef, Strict


class MlirInstance(Strict):
    mlir: StrictStr = Field(
        description="A program as MLIR text (a module or func.func; linalg, torch/ONNX or other dialects), "
        "at most PERFCOST_MAX_PROGRAM_BYTES (1 MiB by default)"
    )


class MlirPredictRequest(Strict):
    instances: list[MlirInstance] = Field(min_length=1, description="Programs to predict")
    coverage: StrictFloat = Field(
        default=0.9, gt=0.0, lt=1.0, description="Coverage of the prediction intervals"
    )


class MlirSummary(BaseModel):
    ops: dict[str, int] = Field(description="Op counts by op name as read from the text")
    dialects: dict[str, int] = Field(description="Op counts by dialect")
    unknown_ops: list[str] = Field(description="Op names the model never saw in training")
    estimated_flops: float = Field(description="FLOPs estimated from the linalg / ONNX ops' operand types")
    estimated_bytes: float = Field(description="Bytes read and written by those ops")
    tensor_types: int
    max_depth: int = Field(description="Deepest region nesting")
    constants_stripped: int = Field(description="Large constants cut before tokenizing")


class MlirPrediction(BaseModel):
    runtime_ms: Interval | None = Field(description="Wall time of one call on the training CPU")
    instructions: Interval | None = Field(description="Static instructions in the compiled dispatches")
    vector_registers: Interval | None = Field(description="Distinct vector registers used")
    spills: Interval | None = Field(description="Register spill stores plus reloads")
    utilization: Interval | None = Field(description="CPU time / (wall time x worker threads)")
    unavailable: dict[str, str] = Field(default_factory=dict, description="Why a target is null")
    out_of_distribution: bool
    ood_reasons: list[str]
    summary: MlirSummary


class MlirPredictResponse(ModelRef):
    device: str = Field(description="The CPU the model's measurements were taken on")
    predictions: list[MlirPrediction]
