"""Shapes shared by every domain's API."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from service.core.numbers import Int as Int
from service.core.numbers import OptionalInt as OptionalInt


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
