"""What a CPU model's card holds beyond the common part: its suites, target files, score rule and profile."""

from __future__ import annotations

from typing import Any

from pydantic import Field

from service.core.cards import Card


class CpuCard(Card):
    # Per suite, its target names ("<suite>/<benchmark>", "<suite>/score"); each target's file stem.
    suites: dict[str, list[str]] = Field(default_factory=dict)
    target_keys: dict[str, str] = Field(default_factory=dict)
    score: dict[str, Any] = Field(default_factory=dict)
    profile: dict[str, Any] = Field(default_factory=dict)
