"""What the service needs to know of a domain to load and serve its models."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass(frozen=True)
class Domain:
    name: str
    feature_version: str
    columns: tuple[str, ...]
    # Fixed target names; empty where the card names them (CPU: one per benchmark of each suite).
    targets: tuple[str, ...] = ()
    # What a domain needs from the card beyond the columns (e.g. fitted figures its features use):
    # raises ValueError saying what is wrong, so the version is refused at load, not at the first request.
    check_card: Callable[[dict[str, Any]], object] | None = None
    # Feature rows with one column set to a value, recomputing what depends on it (GEMM: k), for models
    # whose targets are split on that column.
    at_split: Callable[[np.ndarray, float], np.ndarray] | None = None
