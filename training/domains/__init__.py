"""The offline side of every registered domain: ``training.domains.<name>.TRAINING`` for each domain of
:data:`service.domains.DOMAINS`, found by its name (the list of domains is written once, there)."""

from __future__ import annotations

import importlib

from service.core.domain import Domain
from service.domains import DOMAINS
from training.core.domain import DomainTraining


def training_of(domain: Domain) -> DomainTraining:
    """The domain's training package's ``TRAINING``; a LookupError saying what is missing otherwise."""
    module_name = f"{__name__}.{domain.name}"
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name != module_name:
            raise
        raise LookupError(f"domain {domain.name!r} has no training package {module_name}") from exc
    found = getattr(module, "TRAINING", None)
    if not isinstance(found, DomainTraining):
        raise LookupError(f"{module_name} defines no TRAINING (a training.core.domain.DomainTraining)")
    return found


def trainings() -> dict[str, DomainTraining]:
    """Every registered domain's training, by name, in registration order."""
    return {domain.name: training_of(domain) for domain in DOMAINS}
