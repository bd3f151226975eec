"""The contract of a domain: everything the service needs to load, check and serve one kind of prediction.

A domain is a package under ``service/domains/<name>/`` that builds one :class:`Domain`; the registry
(:mod:`service.domains`) lists it. The native ``/v1/<name>/predict`` route, the Open Inference Protocol
``/v2/models/<name>`` routes, the model registry, first start, the card writer and ``perfcost score``
read every domain from there, so a new predictor is a new package plus one registration line.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
from fastapi import APIRouter
from pydantic import BaseModel

from service.core.batching import MICRO_BATCH_MAX_INSTANCES
from service.core.cards import Card, parse_card
from service.core.devices import DeviceSpec

if TYPE_CHECKING:
    from service.core.deps import Serving
    from service.core.model import TabularModel


class RequestError(ValueError):
    """A request the domain refuses: ``field`` is the native path (``instances.3.device``, ``suite``) and
    ``status`` the native route's HTTP status; ``/v2`` maps both onto its tensors and parameters."""

    def __init__(self, field: str, reason: str, status: int = 422) -> None:
        super().__init__(reason)
        self.field = field
        self.status = status


# Response rows for instances of one request (they share its other fields).
Predict = Callable[[list[Any], Any, "TabularModel", "Serving"], list[dict[str, Any]]]


def _no_keys(model: TabularModel) -> dict[str, list[str]]:
    return {}


def _no_extra(request: Any, model: TabularModel) -> dict[str, Any]:
    return {}


def _no_batch_key(request: Any) -> tuple[Hashable, ...]:
    return ()


def _many_instances(request: Any) -> bool:
    return len(request.instances) > MICRO_BATCH_MAX_INSTANCES


# Compared and hashed by identity: a domain is one object, registered once.
@dataclass(frozen=True, eq=False)
class Domain:
    """One domain. Its schemas define both dialects' inputs and outputs; its functions do the rest."""

    name: str
    # The features its models are fit on: a fitted version with another version or columns is refused.
    feature_version: str
    columns: tuple[str, ...]
    # The card a version must hold (checked when training writes it and when the service loads it).
    card_type: type[Card]
    # Native request (instances, coverage and the domain's parameters), one instance, one prediction row,
    # and the response.
    request: type[BaseModel]
    instance: type[BaseModel]
    prediction: type[BaseModel]
    response: type[BaseModel]
    predict: Predict
    # Fixed target names; empty where the card names them (CPU: one per benchmark of each suite).
    targets: tuple[str, ...] = ()
    # What the domain reads from a card beyond its type (fitted figures its features use): raises
    # ValueError naming the field, so the version is refused at load, not at the first request.
    check_card: Callable[[dict[str, Any]], object] | None = None
    # Feature rows with the split column set to a value (GEMM: k), for targets split on that column.
    at_split: Callable[[np.ndarray, float], np.ndarray] | None = None
    # Checks that need no model (run before one is looked up), then those that need the served model;
    # each raises RequestError, so one bad request never fails the requests batched with it.
    precheck: Callable[[Any, Serving], None] | None = None
    check: Callable[[Any, TabularModel, Serving], None] | None = None
    # Requests share a micro-batch when model, coverage and this key agree (None: never micro-batched).
    batch_key: Callable[[Any], tuple[Hashable, ...]] | None = _no_batch_key
    # Whether a request runs in a worker thread rather than on the event loop.
    offload: Callable[[Any], bool] = _many_instances
    # Response fields beside model, version and predictions (CPU: the suite; MLIR: the device).
    answer: Callable[[Any, TabularModel], dict[str, Any]] = _no_extra
    # Keys of the prediction's mappings of intervals, which name /v2 outputs (CPU: each benchmark).
    output_keys: Callable[[TabularModel], dict[str, list[str]]] = _no_keys
    # Routes beyond /v1/<name>/predict (GEMM: search; CPU: benchmarks), and the statuses /predict answers.
    routes: APIRouter | None = None
    errors: tuple[int, ...] = (413, 422, 503)
    # Devices its served models know beyond the catalog (GEMM: those trained on), for GET /v1/devices.
    devices: Callable[[TabularModel], Iterable[DeviceSpec]] | None = None
    # Whether first start trains a default model of this domain when none is published.
    default: bool = True

    def __post_init__(self) -> None:
        # The routes read these two fields of every request: a domain without them fails here, when it is
        # built, not at its first request.
        missing = [f for f in ("instances", "coverage") if f not in self.request.model_fields]
        if missing:
            raise TypeError(f"domain {self.name!r}: request schema {self.request.__name__} lacks {missing}")

    def check_card_fields(self, card: dict[str, Any]) -> None:
        """The card as this domain's type, then the domain's own check: ValueError naming the field."""
        parse_card(card, self.card_type)
        if self.check_card is not None:
            self.check_card(card)


@dataclass(frozen=True)
class Domains:
    """The registered domains, by name, in registration order."""

    items: tuple[Domain, ...]
    by_name: dict[str, Domain] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        by_name: dict[str, Domain] = {}
        for domain in self.items:
            if domain.name in by_name:
                raise ValueError(f"domain {domain.name!r} is registered twice")
            by_name[domain.name] = domain
        object.__setattr__(self, "by_name", by_name)

    def __iter__(self) -> Iterator[Domain]:
        return iter(self.items)

    def __getitem__(self, name: str) -> Domain:
        return self.by_name[name]

    def get(self, name: str) -> Domain | None:
        return self.by_name.get(name)

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(self.by_name)

    def with_domain(self, domain: Domain) -> Domains:
        """These domains and one more (a user's or a test's own)."""
        return Domains((*self.items, domain))
