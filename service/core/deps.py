"""Request dependencies, as ``Annotated`` aliases the routers declare.

They are ``async def`` although they never await: FastAPI runs a plain ``def`` dependency in its thread
pool, and those hand-offs (several per request) cost more than the lookups themselves under load.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, HTTPException, Request

from service.core.batching import MicroBatcher
from service.core.devices import DeviceCatalog
from service.core.domain import Domains
from service.core.first_start import FirstStart
from service.core.model import TabularModel
from service.core.registry import ModelRegistry, Snapshot
from service.core.settings import Settings


async def get_settings(request: Request) -> Settings:
    return request.app.state.settings  # type: ignore[no-any-return]


async def get_registry(request: Request) -> ModelRegistry:
    return request.app.state.registry  # type: ignore[no-any-return]


async def get_snapshot(request: Request) -> Snapshot:
    """One snapshot per request: a reload during the request cannot change the models it uses."""
    return request.app.state.registry.snapshot  # type: ignore[no-any-return]


async def get_catalog(request: Request) -> DeviceCatalog:
    return request.app.state.catalog  # type: ignore[no-any-return]


@dataclass(frozen=True)
class Serving:
    """What a prediction route reads from the app, resolved as one dependency: FastAPI's bookkeeping per
    dependency cost more than the lookups (four of them were ~0.1 ms of a ~0.5 ms request under load)."""

    snapshot: Snapshot
    settings: Settings
    catalog: DeviceCatalog
    batcher: MicroBatcher
    first_start: FirstStart
    domains: Domains


def serving_of(request: Request) -> Serving:
    """One snapshot per request: a reload during the request cannot change the models it uses.

    The prediction routes call this themselves instead of declaring ``ServingDep``: FastAPI's dependency
    resolution was 15% of the server's CPU time for a one-instance request (profiled under 16 clients),
    more than the features, the model and the intervals together."""
    state = request.app.state
    return Serving(
        state.registry.snapshot,
        state.settings,
        state.catalog,
        state.batcher,
        state.first_start,
        state.registry.domains,
    )


async def get_serving(request: Request) -> Serving:
    return serving_of(request)


SettingsDep = Annotated[Settings, Depends(get_settings)]
RegistryDep = Annotated[ModelRegistry, Depends(get_registry)]
SnapshotDep = Annotated[Snapshot, Depends(get_snapshot)]
CatalogDep = Annotated[DeviceCatalog, Depends(get_catalog)]
ServingDep = Annotated[Serving, Depends(get_serving)]


def require_model(snapshot: Snapshot, name: str, first_start: FirstStart | None = None) -> TabularModel:
    model = snapshot.get(name)
    if model is None:
        why = first_start.reason(name) if first_start is not None else None
        why = why or unloaded_reason(snapshot, name)
        reason = f"no {name!r} model is loaded: {why}; GET /readyz shows every domain"
        raise HTTPException(status_code=503, detail=[{"field": "model", "reason": reason}])
    return model


def unloaded_reason(snapshot: Snapshot, name: str) -> str:
    """Why the registry serves no version of ``name``: its refused versions, or none published."""
    refused = [r for r in snapshot.refused if r.model == name]
    if refused:
        return f"version {refused[0].version} was refused ({refused[0].reason})"
    return f"none is published (run 'perfcost train {name}', then reload)"


def check_batch(n: int, settings: Settings) -> None:
    if n > settings.max_batch:
        raise HTTPException(
            status_code=413,
            detail=[
                {
                    "field": "instances",
                    "reason": f"{n} instances exceed the limit of {settings.max_batch} per request "
                    "(PERFCOST_MAX_BATCH); split the batch",
                }
            ],
        )
