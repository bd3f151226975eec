"""Dataset registry and fetching: download-or-mirror, checksum verified, cached, like sklearn's fetch_*.

The registry (``datasets.json`` beside this file) is the project's own record of each public dataset:
files, URLs, sha256, licence and published figures. Files come from, in order: the mirror directory
``PERFCOST_DATA_MIRROR`` (laid out ``<dataset>/<file>``), the cache ``PERFCOST_DATA_HOME``, or a download
(pooch: progress bar, retries, temp file + atomic rename, sha256 check). A file whose checksum does not
match is never used.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import pooch
import requests

from service.core.model import file_sha256
from service.core.settings import Settings

log = logging.getLogger(__name__)


class DatasetError(RuntimeError):
    """A dataset file could not be had; the message names the dataset, the file and what to do."""


@dataclass(frozen=True)
class DatasetFile:
    file: str
    sha256: str
    url: str
    bytes: int | None = None


@dataclass(frozen=True)
class DatasetSpec:
    name: str
    domain: str
    description: str
    license: str
    repository: str
    files: tuple[DatasetFile, ...]
    rows: int | None = None
    published: dict[str, Any] = field(default_factory=dict)

    def file(self, name: str) -> DatasetFile:
        for f in self.files:
            if f.file == name:
                return f
        raise KeyError(f"dataset {self.name} has no file {name!r}")


def _load_registry() -> dict[str, DatasetSpec]:
    raw = json.loads(resources.files("training").joinpath("data/datasets.json").read_text())
    return {
        name: DatasetSpec(
            name=name,
            domain=d["domain"],
            description=d["description"],
            license=d["license"],
            repository=d["repository"],
            rows=d.get("rows"),
            published=d.get("published", {}),
            files=tuple(DatasetFile(f["file"], f["sha256"], f["url"], f.get("bytes")) for f in d["files"]),
        )
        for name, d in raw.items()
    }


REGISTRY: dict[str, DatasetSpec] = _load_registry()


def get_spec(name: str) -> DatasetSpec:
    try:
        return REGISTRY[name]
    except KeyError:
        raise DatasetError(f"unknown dataset {name!r}; known: {', '.join(sorted(REGISTRY))}") from None


def _mirror_path(spec: DatasetSpec, f: DatasetFile, settings: Settings) -> Path | None:
    return settings.data_mirror / spec.name / f.file if settings.data_mirror else None


def _cache_path(spec: DatasetSpec, f: DatasetFile, settings: Settings) -> Path:
    return settings.data_home / spec.name / f.file


def is_available(spec: DatasetSpec, settings: Settings) -> bool:
    """Every file is in the mirror or the cache (not re-hashed here; fetching verifies)."""
    for f in spec.files:
        mirror = _mirror_path(spec, f, settings)
        if not ((mirror is not None and mirror.is_file()) or _cache_path(spec, f, settings).is_file()):
            return False
    return True


def fetch_file(spec: DatasetSpec, f: DatasetFile, settings: Settings, progressbar: bool = True) -> Path:
    """Path of one verified file of a dataset, downloading it into the cache when needed."""
    mirror = _mirror_path(spec, f, settings)
    if mirror is not None and mirror.is_file():
        if file_sha256(mirror) != f.sha256:
            raise DatasetError(
                f"{spec.name}: {f.file} in the mirror {settings.data_mirror} fails its sha256 check; "
                "the file was not used. Replace it with the published file or unset PERFCOST_DATA_MIRROR."
            )
        return mirror
    cached = _cache_path(spec, f, settings)
    if cached.is_file() and file_sha256(cached) == f.sha256:
        return cached
    fetcher = pooch.create(
        path=settings.data_home / spec.name,
        base_url="",
        registry={f.file: f"sha256:{f.sha256}"},
        urls={f.file: f.url},
        retry_if_failed=settings.download_retries,
    )
    where = f"from {f.url}"
    if mirror is not None:
        where += f" (not in the mirror {settings.data_mirror} either)"
    try:
        return Path(fetcher.fetch(f.file, progressbar=progressbar))
    except ValueError as exc:
        raise DatasetError(
            f"{spec.name}: {f.file} downloaded {where} fails its sha256 check and was discarded "
            f"({exc}). The source may have changed; report it or use a mirror (PERFCOST_DATA_MIRROR)."
        ) from exc
    except (requests.RequestException, OSError) as exc:
        raise DatasetError(
            f"{spec.name}: {f.file} could not be downloaded {where}: {exc.__class__.__name__}: {exc}. "
            "Check the network, or point PERFCOST_DATA_MIRROR at a directory holding <dataset>/<file>."
        ) from exc


def fetch(spec: DatasetSpec, settings: Settings, progressbar: bool = True) -> dict[str, Path]:
    """All files of a dataset, verified: file name → local path."""
    return {f.file: fetch_file(spec, f, settings, progressbar) for f in spec.files}
