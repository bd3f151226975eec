"""Model cards as types: what a published version's ``card.json`` holds and the service reads. The common part
is checked when any version loads; a domain's part (its ``card_type``, a subclass of :class:`Card` in the
domain's package) when its registry entry loads it, so a card missing a field the domain reads, or holding
one of the wrong type, is refused at load naming the field, not at the first request. Domains read their
card through :meth:`~service.core.model.TabularModel.typed_card`, parsed once per loaded version."""

from __future__ import annotations

from typing import Any, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError


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


C = TypeVar("C", bound=Card)


def parse_card(raw: dict[str, Any], card_type: type[C]) -> C:
    """``raw`` as ``card_type``; :class:`ValueError` naming the first offending field otherwise."""
    try:
        return card_type.model_validate(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first["loc"]) or "card"
        raise ValueError(f"card field {where}: {first['msg']}") from exc
