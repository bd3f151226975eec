"""Model registry over a directory: the newest good version of each model, swapped atomically on reload.

Each model's card names its domain, whose contract (:class:`~service.core.domain.Domain`) it must meet.
A version that fails to load (missing or tampered file, feature mismatch) is refused and recorded; the
newest version that loads is served, so a bad publish never takes down a good model. Requests take one
:class:`Snapshot` and use it throughout, so a reload in the middle of a request can neither fail it nor
mix versions.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

from service.core.domain import Domains
from service.core.model import CARD, ModelLoadError, TabularModel, list_versions

log = logging.getLogger(__name__)


def load_version(version_dir: Path, domains: Domains) -> TabularModel:
    """One published version, loaded and checked against the contract of the domain its card names;
    :class:`ModelLoadError` saying why it cannot be served otherwise."""
    try:
        domain = str(json.loads((version_dir / CARD).read_text()).get("domain"))
    except (OSError, ValueError):
        domain = None
    spec = domains.get(domain or "")
    if spec is None:
        raise ModelLoadError(f"card names unknown domain {domain!r}")
    model = TabularModel(version_dir, spec.feature_version, spec.columns, spec.at_split).load()
    try:
        spec.check_card_fields(model.card)
    except ValueError as exc:
        raise ModelLoadError(f"{version_dir}: {exc}") from exc
    return model


@dataclass(frozen=True)
class Refusal:
    model: str
    version: str
    reason: str


def newest_usable(
    model_dir: Path,
    name: str,
    domains: Domains,
    refused: list[Refusal] | None = None,
    current: TabularModel | None = None,
) -> TabularModel | None:
    """The version of ``name`` the service serves: the newest that loads (``current`` when that is it, so
    a reload does not load it again); each newer one that does not is logged and added to ``refused``.
    Everything that picks "the model" (the registry, ``perfcost score``, ``perfcost calibrate``) uses this."""
    for version_dir in reversed(list_versions(model_dir, name)):
        if current is not None and version_dir.name == current.version:
            return current
        try:
            return load_version(version_dir, domains)
        except ModelLoadError as exc:
            log.error("refusing %s version %s: %s", name, version_dir.name, exc)
            if refused is not None:
                refused.append(Refusal(name, version_dir.name, str(exc)))
    return current


@dataclass(frozen=True)
class Snapshot:
    models: MappingProxyType[str, TabularModel]
    refused: tuple[Refusal, ...] = ()
    loaded_at: float = 0.0

    def get(self, name: str) -> TabularModel | None:
        return self.models.get(name)


@dataclass
class ModelRegistry:
    model_dir: Path
    domains: Domains
    _snapshot: Snapshot = field(default_factory=lambda: Snapshot(MappingProxyType({})))
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def snapshot(self) -> Snapshot:
        return self._snapshot

    def reload(self) -> Snapshot:
        """Load the newest good version of every model in the directory and swap them in at once."""
        with self._lock:
            old = self._snapshot
            refused: list[Refusal] = []
            models: dict[str, TabularModel] = {}
            names = (
                sorted(p.name for p in self.model_dir.iterdir() if p.is_dir())
                if self.model_dir.is_dir()
                else []
            )
            for name in names:
                model = newest_usable(self.model_dir, name, self.domains, refused, old.get(name))
                if model is not None:
                    models[name] = model
            self._snapshot = Snapshot(MappingProxyType(models), tuple(refused), time.time())
            for name, model in models.items():
                previous = old.get(name)
                if previous is None or previous.version != model.version:
                    log.info("serving %s version %s", name, model.version)
            return self._snapshot

    def status(self) -> dict[str, Any]:
        snap = self._snapshot
        return {
            "loaded": {name: m.version for name, m in snap.models.items()},
            "refused": [{"model": r.model, "version": r.version, "reason": r.reason} for r in snap.refused],
        }
