"""The contract of each domain: the feature version and columns its models are fit on, the targets they
answer, and what a card must hold to be served. The app, the registry and ``training`` read it from here,
so the fitting side and the serving side cannot drift apart; a new domain adds one entry."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any

import numpy as np

from service.cards import CpuCard, GemmCard, parse_card
from service.domains import gemm as gemm_domain
from service.domains import mlir as mlir_domain
from service.features import cpu as cpu_features
from service.features import gemm as gemm_features
from service.features import mlir as mlir_features


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


GEMM = Domain(
    "gemm",
    gemm_features.FEATURE_VERSION,
    gemm_features.FEATURE_COLUMNS,
    gemm_domain.TARGETS,
    check_card=partial(parse_card, card_type=GemmCard),
    at_split=gemm_features.with_k,
)
CPU = Domain(
    "cpu",
    cpu_features.FEATURE_VERSION,
    cpu_features.FEATURE_COLUMNS,
    check_card=partial(parse_card, card_type=CpuCard),
)
MLIR = Domain(
    "mlir",
    mlir_features.FEATURE_VERSION,
    mlir_features.FEATURE_COLUMNS,
    mlir_domain.TARGETS,
    check_card=mlir_domain.check_card,
)
DOMAINS: dict[str, Domain] = {d.name: d for d in (GEMM, CPU, MLIR)}
