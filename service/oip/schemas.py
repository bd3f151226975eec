"""Open Inference Protocol v2 (the KServe / Triton / MLServer REST dialect): its wire schemas and errors."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, StrictInt, StrictStr

from service.core.schemas import ErrorDetail

EXTENSIONS = ("binary_tensor_data",)


class V2Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


Dim = Annotated[StrictInt, Field(ge=0)]


class RequestInput(V2Model):
    name: StrictStr
    shape: list[Dim] = Field(min_length=1, max_length=2, description="[N] or [N, 1]")
    datatype: StrictStr = Field(description="BOOL, INT64, FP64 or BYTES, as the model metadata lists it")
    parameters: dict[str, Any] | None = Field(
        default=None, description="binary_data_size: the tensor's bytes follow the JSON header"
    )
    data: list[Any] | None = Field(default=None, description="Row-major, flat or nested; absent if binary")


class RequestOutput(V2Model):
    name: StrictStr
    parameters: dict[str, Any] | None = Field(default=None, description="binary_data: true for raw bytes")


class InferRequest(V2Model):
    id: StrictStr | None = None
    parameters: dict[str, Any] | None = Field(
        default=None, description="The native request's fields besides the instances (coverage, ...)"
    )
    inputs: list[RequestInput] = Field(min_length=1)
    outputs: list[RequestOutput] | None = Field(default=None, description="Default: every output")


class ResponseOutput(BaseModel):
    name: str
    datatype: str
    shape: list[int]
    parameters: dict[str, Any] | None = None
    data: list[Any] | None = None


class InferResponse(BaseModel):
    model_name: str
    model_version: str = Field(description="The registry's served version, the native 'version'")
    id: str
    outputs: list[ResponseOutput]


class MetadataTensor(BaseModel):
    name: str
    datatype: str
    shape: list[int]
    parameters: dict[str, Any] = Field(default_factory=dict)


class ModelMetadata(BaseModel):
    name: str
    versions: list[str]
    platform: str
    inputs: list[MetadataTensor]
    outputs: list[MetadataTensor]
    parameters: dict[str, Any] = Field(default_factory=dict)


class ServerMetadata(BaseModel):
    name: str
    version: str
    extensions: list[str]


class Liveness(BaseModel):
    live: bool


class Readiness(BaseModel):
    ready: bool
    name: str | None = None


class V2Error(BaseModel):
    """OIP's error body; ``detail`` carries the same problems in the shape every other route answers."""

    error: str
    detail: list[ErrorDetail]


class TensorError(ValueError):
    """A request that cannot be served: the status and each problem as (field, reason); reasons name the
    tensor, row or parameter, since OIP clients show only the joined message."""

    def __init__(self, problems: Sequence[tuple[str, str]], status: int = 400) -> None:
        super().__init__("; ".join(reason for _, reason in problems))
        self.problems = list(problems)
        self.status = status


def bad(field: str, reason: str, status: int = 400) -> TensorError:
    return TensorError([(field, reason)], status)


def error_body(problems: Sequence[tuple[str, str]]) -> dict[str, Any]:
    return {
        "error": "; ".join(reason for _, reason in problems),
        "detail": [{"field": field, "reason": reason} for field, reason in problems],
    }
