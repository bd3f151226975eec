"""Shapes shared by every domain's API."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, StrictInt


def _integral_float_to_int(value: Any) -> Any:
    # JSON has one number type: 64.0 is the integer 64 (JSON Schema agrees, and JavaScript clients
    # cannot tell them apart), while 1.5, "64" and true stay invalid.
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


Int = Annotated[StrictInt, BeforeValidator(_integral_float_to_int)]
# Not ``Int | None``: pydantic then writes its constraints into the schema as "gt"/"le", not JSON Schema.
OptionalInt = Annotated[StrictInt | None, BeforeValidator(_integral_float_to_int)]


class Strict(BaseModel):
    """Unknown fields are rejected, not ignored; NaN and infinities are invalid numbers."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


class Interval(BaseModel):
    value: float
    low: float
    high: float


class ModelRef(BaseModel):
    model: str = Field(description="Name of the model that answered")
    version: str = Field(description="Version of that model")


class ErrorDetail(BaseModel):
    field: str = Field(description="Path of the offending field, e.g. instances.0.device")
    reason: str


class ErrorResponse(BaseModel):
    detail: list[ErrorDetail]


def error_responses(*status_codes: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` for a route: each of these statuses answers an :class:`ErrorResponse`."""
    return {code: {"model": ErrorResponse} for code in status_codes}
