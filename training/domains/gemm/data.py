"""GEMM datasets as one table: the dispatch over every source, and the user's own measurements.

:func:`load_gemm` loads a public dataset through the registry (its loader in :data:`LOADERS`: the sweeps
of :mod:`.public`, :mod:`.deepbench`, :mod:`.aiconfigurator`) or a bundled one, and normalises it into
the columns ``source, device`` + :data:`service.domains.gemm.features.CONFIG_COLUMNS` + :data:`TARGETS` +
``runtime_spread``. A bundled dataset, or a user's own, is a directory of ``measurements.csv`` and
``device.json`` (:func:`load_gemm_dir`, :func:`load_measurements`). Malformed rows are counted by reason
with their line numbers, logged, and returned in the report; nothing is dropped silently.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from service.core.devices import DeviceCatalog, DeviceSpec
from service.core.model import file_sha256
from service.core.settings import Settings
from service.domains.gemm import DOMAIN as GEMM
from service.domains.gemm.dtypes import QUANTIZED_ACTIVATION_DTYPES
from service.domains.gemm.features import (
    CONFIG_COLUMNS,
    DTYPES,
    KERNEL_NUMERIC_FIELDS,
    LAYOUTS,
    OPS,
    SIZE_FIELDS,
)
from training.core.datasets import REGISTRY, DatasetError, fetch, get_spec
from training.core.report import LoadReport, parse_boolean, positive_mask
from training.domains.gemm.aiconfigurator import load_aiconfigurator
from training.domains.gemm.deepbench import load_deepbench
from training.domains.gemm.public import load_gpperf, load_gpperf_tiled, load_neusight, load_uci_sgemm

log = logging.getLogger(__name__)

TARGETS = GEMM.targets
COLUMNS = ("source", "device", *CONFIG_COLUMNS, *TARGETS, "runtime_spread")
GEMM_DATASETS = tuple(sorted(n for n, s in REGISTRY.items() if s.domain == "gemm"))
BUNDLED_MARKERS = ("measurements.csv", "device.json")


@dataclass
class GemmData:
    name: str
    frame: pd.DataFrame
    report: LoadReport
    devices: dict[str, DeviceSpec]
    files: list[dict[str, str]]


def _finish(rows: pd.DataFrame, source: str) -> pd.DataFrame:
    out = rows.copy()
    out["source"] = source
    for col in COLUMNS:
        if col not in out:
            out[col] = np.nan
    out = out.loc[:, list(COLUMNS)].reset_index(drop=True)
    for col in ("op", "dtype", "layout", "kernel", "source", "device"):
        out[col] = out[col].astype(object).where(out[col].notna(), None)
    return out


# A measurements CSV (the collector's, or a user's own) needs sizes and a runtime; everything else in
# CONFIG_COLUMNS and TARGETS is optional. Missing categoricals take the API's defaults.
REQUIRED_CSV_COLUMNS = ("m", "n", "k", "runtime_ms")
CSV_DEFAULTS: dict[str, str | int] = {"batch": 1, "op": "gemm", "dtype": "float32"}
CSV_CHOICES: dict[str, tuple[str, ...]] = {"op": OPS, "dtype": DTYPES, "layout": LAYOUTS}


def _read_measurements_csv(path: Path) -> pd.DataFrame:
    try:
        raw = pd.read_csv(path, dtype=str, keep_default_na=False, na_values=[""])
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise DatasetError(f"{path}: not a readable CSV ({exc.__class__.__name__}: {exc})") from exc
    missing = [c for c in REQUIRED_CSV_COLUMNS if c not in raw.columns]
    if missing:
        optional = [
            c
            for c in ("device", *CONFIG_COLUMNS, *TARGETS, "runtime_spread")
            if c not in REQUIRED_CSV_COLUMNS
        ]
        raise DatasetError(
            f"{path}: missing required column(s) {', '.join(missing)}; a measurements CSV needs "
            f"{', '.join(REQUIRED_CSV_COLUMNS)} and may add {', '.join(optional)}"
        )
    return raw


def load_bundled(directory: Path, report: LoadReport) -> tuple[pd.DataFrame, dict[str, DeviceSpec]]:
    """Measurements taken on one device: ``measurements.csv`` plus ``device.json`` (what the collector
    writes, and the layout a user's own measurements take). Bad rows are rejected by reason and line."""
    try:
        device = DeviceSpec.model_validate(json.loads((directory / "device.json").read_text()))
    except (OSError, ValueError) as exc:
        raise DatasetError(f"{directory / 'device.json'}: not a valid device description: {exc}") from exc
    return load_measurements(directory / "measurements.csv", device, report), {device.name: device}


def _quantize_flags(raw: pd.DataFrame, keep: pd.Series, report: LoadReport, where: pd.Series) -> pd.Series:
    """``quantize_activation`` as 1/0 (NaN: blank, as in a request that leaves it unset); the rows to drop
    are rejected by reason: a value that spells no boolean, or true for a dtype with no quantized
    activation."""
    text = raw["quantize_activation"].astype(object).where(raw["quantize_activation"].notna(), None)
    parsed = text.map(lambda v: None if v is None else parse_boolean(v))
    values = parsed.map(lambda v: np.nan if v is None else float(v)).astype(float)
    bad = keep & text.notna() & parsed.isna()
    for idx in raw.index[bad]:
        report.reject("quantize_activation is not true/false/1/0", f"{where[idx]}: {text[idx]!r}")
    dtype = raw["dtype"] if "dtype" in raw else pd.Series("float32", index=raw.index)
    wrong = keep & ~bad & (values == 1.0) & ~dtype.isin(QUANTIZED_ACTIVATION_DTYPES)
    for idx in raw.index[wrong]:
        report.reject(
            f"quantize_activation is true but the dtype has no quantized activation (only "
            f"{', '.join(QUANTIZED_ACTIVATION_DTYPES)})",
            f"{where[idx]}: {dtype[idx]!r}",
        )
    raw["quantize_activation"] = values
    return ~(bad | wrong)


def _optional_numbers(raw: pd.DataFrame, keep: pd.Series, report: LoadReport, where: pd.Series) -> pd.Series:
    """The optional numeric columns (kernel parameters, power, energy, spread) as numbers; ``keep`` less
    the rows with a value that is not a finite number (>= 0 for power, energy and spread), rejected."""
    # Optional numbers may be blank (not measured), but a value that is there must be a real one.
    numeric = (c for c in KERNEL_NUMERIC_FIELDS if c != "quantize_activation")
    for col in (c for c in (*numeric, "power_w", "energy_j", "runtime_spread") if c in raw):
        values = pd.to_numeric(raw[col], errors="coerce")
        floor = 0.0 if col in ("power_w", "energy_j", "runtime_spread") else -np.inf
        bad = keep & raw[col].notna() & ~(np.isfinite(values) & (values >= floor))
        reason = f"{col} is not a finite number" + (" >= 0" if floor == 0 else "")
        for idx in raw.index[bad]:
            report.reject(reason, f"{where[idx]}: {raw.at[idx, col]!r}")
        keep = keep & ~bad
        raw[col] = values
    return keep


def _choices(raw: pd.DataFrame, keep: pd.Series, report: LoadReport, where: pd.Series) -> pd.Series:
    """``keep`` less the rows whose op, dtype or layout is not one of :data:`CSV_CHOICES`, rejected (only
    layout may be blank)."""
    for col, choices in CSV_CHOICES.items():
        if col not in raw:
            continue
        bad = keep & raw[col].notna() & ~raw[col].isin(choices)
        if col != "layout":
            bad |= keep & raw[col].isna()
        for idx in raw.index[bad]:
            report.reject(f"{col} not one of {', '.join(choices)}", f"{where[idx]}: {raw.at[idx, col]!r}")
        keep = keep & ~bad
    return keep


def load_measurements(path: Path, device: DeviceSpec, report: LoadReport) -> pd.DataFrame:
    """One device's measurements CSV (see :data:`REQUIRED_CSV_COLUMNS`); rows naming another device, and
    bad rows, are rejected by reason and line."""
    raw = _read_measurements_csv(path)
    unknown = sorted(set(raw.columns) - {*COLUMNS, "key", "repeats", "measured_at"})
    if unknown:
        log.info("%s: ignoring column(s) the GEMM model does not use: %s", path, ", ".join(unknown))
    for col, default in CSV_DEFAULTS.items():
        if col not in raw:
            raw[col] = default
    if "device" not in raw:
        raw["device"] = device.name
    raw["line"] = np.arange(len(raw)) + 2
    where = "line " + raw["line"].astype(str)
    keep = positive_mask(raw, ("batch", *REQUIRED_CSV_COLUMNS), report, where)
    for col in SIZE_FIELDS:
        raw[col] = pd.to_numeric(raw[col], errors="coerce")
        bad = keep & (raw[col] != np.floor(raw[col]))
        for idx in raw.index[bad]:
            report.reject(f"{col} is not a whole number", f"{where[idx]}: {raw.at[idx, col]!r}")
        keep &= ~bad
    raw["runtime_ms"] = pd.to_numeric(raw["runtime_ms"], errors="coerce")
    if "quantize_activation" in raw:
        keep &= _quantize_flags(raw, keep, report, where)
    keep = _optional_numbers(raw, keep, report, where)
    keep = _choices(raw, keep, report, where)
    wrong_device = keep & (raw["device"] != device.name)
    for idx in raw.index[wrong_device]:
        report.reject(
            f"device differs from device.json ({device.name!r})", f"{where[idx]}: {raw.at[idx, 'device']!r}"
        )
    keep &= ~wrong_device
    raw = raw.loc[keep]
    identity = [c for c in ("device", *CONFIG_COLUMNS) if c in raw]
    dup = raw.duplicated(identity, keep="first")
    first_line = raw.groupby(identity, dropna=False)["line"].transform("first")
    for idx in raw.index[dup]:
        report.reject("duplicate configuration", f"{where[idx]} repeats line {first_line[idx]}")
    raw = raw.loc[~dup].astype({c: "int64" for c in SIZE_FIELDS})
    if raw.empty:
        report.log()
        raise DatasetError(f"{path}: no usable rows ({report.summary()})")
    return raw


LOADERS: dict[str, Callable[[dict[str, Path], LoadReport], pd.DataFrame]] = {
    "gpperf-rtx4070": load_gpperf,
    "gpperf-rtx4070-tiled": load_gpperf_tiled,
    "uci-sgemm": load_uci_sgemm,
    "neusight-gemm": load_neusight,
    "deepbench": load_deepbench,
    "aiconfigurator-gemm": load_aiconfigurator,
}


def bundled_gemm_datasets(settings: Settings) -> dict[str, Path]:
    """Bundled GEMM datasets: folders of ``PERFCOST_BUNDLED_DATA_DIR`` with measurements and a device."""
    root = settings.bundled_data_dir
    if not root.is_dir():
        return {}
    return {
        d.name: d
        for d in sorted(root.iterdir())
        if d.is_dir() and all((d / m).is_file() for m in BUNDLED_MARKERS)
    }


def _loaded(
    name: str,
    frame: pd.DataFrame,
    report: LoadReport,
    devices: dict[str, DeviceSpec],
    files: list[dict[str, str]],
) -> GemmData:
    out = _finish(frame, name)
    report.rows = len(out)
    report.log()
    return GemmData(name=name, frame=out, report=report, devices=devices, files=files)


def load_gemm_dir(directory: Path, name: str | None = None) -> GemmData:
    """Measurements in a directory of ``measurements.csv`` + ``device.json`` (bundled or a user's own)."""
    name = name or directory.resolve().name
    if not all((directory / m).is_file() for m in BUNDLED_MARKERS):
        raise DatasetError(f"{directory}: a measurements directory needs {' and '.join(BUNDLED_MARKERS)}")
    report = LoadReport(name)
    frame, devices = load_bundled(directory, report)
    files = [{"file": f"{name}/{m}", "sha256": file_sha256(directory / m)} for m in BUNDLED_MARKERS]
    return _loaded(name, frame, report, devices, files)


def load_gemm(name: str, settings: Settings, catalog: DeviceCatalog | None = None) -> GemmData:
    """Load one GEMM dataset (public, through the registry, or bundled) as the normalised table."""
    bundled = bundled_gemm_datasets(settings)
    if name in bundled:
        return load_gemm_dir(bundled[name], name)
    spec = get_spec(name)
    if spec.domain != "gemm":
        raise DatasetError(f"dataset {name!r} is a {spec.domain} dataset, not GEMM")
    report = LoadReport(name)
    frame = LOADERS[name](fetch(spec, settings), report)
    catalog = catalog or DeviceCatalog.default(settings.device_dir)
    devices = {d: catalog.get(d) for d in sorted(frame["device"].unique())}
    return _loaded(name, frame, report, devices, [{"file": f.file, "sha256": f.sha256} for f in spec.files])


def available_gemm_datasets(settings: Settings) -> list[str]:
    return [*GEMM_DATASETS, *bundled_gemm_datasets(settings)]
