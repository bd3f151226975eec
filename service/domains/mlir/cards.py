"""What an MLIR model's card holds beyond the common part: the measured CPU and the training programs'
profile."""

from __future__ import annotations

from typing import Any

from pydantic import Field

from service.core.cards import Card


class MlirCard(Card):
    device: str = "local CPU"
    profile: dict[str, Any] = Field(default_factory=dict)
