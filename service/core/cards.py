"""Model cards as types: what a published version's ``card.json`` holds and the service reads.

The common part is checked when any version loads; a domain's part when its registry entry loads it (the
domain contract's ``check_card``), so a card missing a field the domain reads, or holding one of the wrong
type, is refused at load naming the field, not at the first request. Domains read their card through
:func:`card_of`, parsed once per loaded version."""

from __future__ import annotations

from typing import Any, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from service.core.devices import DeviceSpec


class Card(BaseModel):
    """What every domain's card holds. Fields a newer trainer adds are kept, not refused."""

    model_config = ConfigDict(extra="allow", frozen=True)

    name: str
    version: str
    domain: str | None = None
    feature_version: str
    feature_columns: tuple[str, ...]
    targets: dict[str, dict[str, Any]]
    files: dict[str, str] = Field(default_factory=dict)
    datasets: list[dict[str, Any]] = Field(default_factory=list)
    libraries: dict[str, str] = Field(default_factory=dict)
    trained_at: str | None = None
    training_seconds: float | None = None


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


class CpuCard(Card):
    # Per suite, its target names ("<suite>/<benchmark>", "<suite>/score"); each target's file stem.
    suites: dict[str, list[str]] = Field(default_factory=dict)
    target_keys: dict[str, str] = Field(default_factory=dict)
    score: dict[str, Any] = Field(default_factory=dict)
    profile: dict[str, Any] = Field(default_factory=dict)


class MlirCard(Card):
    device: str = "local CPU"
    profile: dict[str, Any] = Field(default_factory=dict)


C = TypeVar("C", bound=Card)


def parse_card(raw: dict[str, Any], card_type: type[C]) -> C:
    """``raw`` as ``card_type``; :class:`ValueError` naming the first offending field otherwise."""
    try:
        return card_type.model_validate(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first["loc"]) or "card"
        raise ValueError(f"card field {where}: {first['msg']}") from exc
