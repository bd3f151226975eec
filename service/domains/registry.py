"""The contract of each domain: the feature version and columns its models are fit on, the targets they
answer, and what a card must hold to be served. The app, the registry and ``training`` read it from here,
so the fitting side and the serving side cannot drift apart; a new domain adds one entry."""

from __future__ import annotations

from functools import partial

from service.core.cards import CpuCard, GemmCard, parse_card
from service.core.domain import Domain
from service.domains.cpu import features as cpu_features
from service.domains.gemm import features as gemm_features
from service.domains.gemm import runtime as gemm_domain
from service.domains.mlir import features as mlir_features
from service.domains.mlir import runtime as mlir_domain

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
