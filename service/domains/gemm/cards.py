"""What a GEMM model's card holds beyond the common part: its devices, the training data's profile and
its calibrations."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field

from service.core.cards import Card
from service.core.devices import DeviceSpec


class GemmProfile(BaseModel):
    """What the training data covered: numeric ranges, categories, and per device the largest GEMM."""

    ranges: dict[str, tuple[float, float]] = Field(default_factory=dict)
    categories: dict[str, list[str]] = Field(default_factory=dict)
    device_max_flops: dict[str, float] = Field(default_factory=dict)


class GemmCard(Card):
    devices: list[DeviceSpec] = Field(default_factory=list)
    profile: GemmProfile = Field(default_factory=GemmProfile)
    # Rows a user's device was calibrated with (perfcost calibrate gemm), each with its file's sha256.
    calibrations: list[dict[str, Any]] = Field(default_factory=list)
    calibrated_from: str | None = None
