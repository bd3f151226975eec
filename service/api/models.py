"""Loaded models' cards, the device catalog, and the admin reload."""

from __future__ import annotations

import hmac
from typing import TYPE_CHECKING, Annotated, Any

from fastapi import APIRouter, Header, HTTPException, Request

from service.core.deps import CatalogDep, RegistryDep, SettingsDep, SnapshotDep

if TYPE_CHECKING:
    from service.core.model import TabularModel
    from service.core.registry import Snapshot

router = APIRouter(tags=["models"])

CARD_FIELDS = (
    "name",
    "version",
    "domain",
    "datasets",
    "libraries",
    "trained_at",
    "training_seconds",
    "feature_version",
)


def _public_card(model: TabularModel) -> dict[str, Any]:
    card = {key: model.card.get(key) for key in CARD_FIELDS}
    card["targets"] = {
        name: {
            "estimator": spec["estimator"],
            "baseline": spec.get("baseline"),
            "n_train": spec.get("n_train"),
            "devices": spec.get("devices"),
            "cv": spec.get("cv"),
        }
        for name, spec in model.card.get("targets", {}).items()
    }
    return card


@router.get("/v1/models")
async def models(snapshot: SnapshotDep) -> dict[str, Any]:
    refused = [{"model": r.model, "version": r.version, "reason": r.reason} for r in snapshot.refused]
    return {"models": [_public_card(m) for m in snapshot.models.values()], "refused": refused}


def _loaded(name: str, snapshot: Snapshot) -> TabularModel:
    # Names are looked up among loaded models, never on the filesystem.
    model = snapshot.get(name)
    if model is None:
        raise HTTPException(
            status_code=404,
            detail=[
                {"field": "name", "reason": f"no loaded model named {name!r}; GET /v1/models lists them"}
            ],
        )
    return model


@router.get("/v1/models/{name}")
async def model_card(name: str, snapshot: SnapshotDep) -> dict[str, Any]:
    """The card of the version of a model that is serving."""
    return _public_card(_loaded(name, snapshot))


@router.get("/v1/models/{name}/versions/{version}")
async def model_version_card(name: str, version: str, snapshot: SnapshotDep) -> dict[str, Any]:
    """The card of one version, if it is the one serving; otherwise why not."""
    model = _loaded(name, snapshot)
    if model.version == version:
        return _public_card(model)
    refused = next((r for r in snapshot.refused if r.model == name and r.version == version), None)
    why = f"was refused: {refused.reason}" if refused else "is not loaded"
    raise HTTPException(
        status_code=404,
        detail=[
            {"field": "version", "reason": f"version {version!r} of {name!r} {why}; {model.version!r} serves"}
        ],
    )


@router.get("/v1/devices")
async def devices(catalog: CatalogDep, registry: RegistryDep) -> dict[str, Any]:
    """The catalog's devices, and those the served models were trained on (with the specs they used)."""
    known = {d.name: d.model_dump(exclude_none=True) for d in catalog}
    for model in registry.snapshot.models.values():
        domain = registry.domains.get(model.meta.domain or "") if model.meta is not None else None
        if domain is not None and domain.devices is not None:
            for spec in domain.devices(model):
                known.setdefault(spec.name, spec.model_dump(exclude_none=True))
    return {"devices": sorted(known.values(), key=lambda d: d["name"])}


@router.post("/v1/admin/reload")
async def reload(
    request: Request,
    registry: RegistryDep,
    settings: SettingsDep,
    authorization: Annotated[str | None, Header()] = None,
) -> dict[str, Any]:
    if settings.admin_token is None:
        raise HTTPException(
            status_code=403,
            detail=[
                {
                    "field": "authorization",
                    "reason": "reload is disabled: set PERFCOST_ADMIN_TOKEN to enable it",
                }
            ],
        )
    expected = f"Bearer {settings.admin_token.get_secret_value()}".encode()
    if authorization is None or not hmac.compare_digest(authorization.encode(), expected):
        raise HTTPException(
            status_code=401,
            detail=[{"field": "authorization", "reason": "missing or wrong 'Authorization: Bearer <token>'"}],
        )
    await request.app.state.reload()
    return registry.status()
