"""CPU features: the one place where a CPU system description becomes model inputs.

Training (``training/``) and serving (``service/``) both call :func:`build_features`; a fitted model
records :data:`FEATURE_VERSION` and :data:`FEATURE_COLUMNS`, and loading refuses a model whose record
differs from this module. Change the math here → bump the version.

Inputs are the system-description columns of a SPEC CPU2017 result (:data:`NUMERIC_FIELDS`,
:data:`CATEGORICAL_FIELDS`), never a benchmark ratio or runtime. Categoricals are encoded statelessly
(crc32 codes), so a value never seen in training still encodes; what training saw, and what a request
has outside it, is :mod:`service.domains.cpu.profile`'s business.
"""

from __future__ import annotations

import math
import re
import zlib
from collections.abc import Iterable, Mapping
from typing import Any, Literal, get_args

import numpy as np
import pandas as pd

FEATURE_VERSION = "cpu-1"

# The four SPEC CPU2017 suites; a model serves those its training data held.
Suite = Literal["FP_rate", "FP_speed", "Int_rate", "Int_speed"]
SUITES: tuple[str, ...] = get_args(Suite)

NUMERIC_FIELDS = (
    "nominal_mhz",
    "max_mhz",
    "cpus",
    "threads_per_core",
    "cores_per_socket",
    "sockets",
    "numas",
    "l1d_cache_kb",
    "l1i_cache_kb",
    "l2_cache_kb",
    "l3_cache_kb",
    "mem_kb",
    "mem_channels",
    "channel_kb",
    "mem_data_rate",
    "storage_gb",
    "os_vid",
    "threads_or_copies",
)
CATEGORICAL_FIELDS = (
    "vendor",
    "hardware_vendor",
    "test_sponsor",
    "model_name",
    "arch",
    "os_name",
    "os",
    "compiler",
    "parallel",
    "file_system",
)
# Everything a request may describe; nothing else of a SPEC result row is an input.
SPEC_FIELDS = (*NUMERIC_FIELDS, *CATEGORICAL_FIELDS)

# Parsed from model_name and compiler; categorical like the fields above.
PARSED_CATEGORICAL = ("cpu_family", "cpu_tier", "sku_suffix", "compiler_family")
PARSED_NUMERIC = ("sku_series", "sku_number", "cpu_generation", "compiler_major")
DERIVED = (
    "total_cores",
    "total_threads",
    "l2_per_core_kb",
    "l3_per_core_kb",
    "mem_bandwidth_gbps",
    "bandwidth_per_core_gbps",
    "mem_per_core_gb",
    "boost_ratio",
    "copies_per_core",
    "copies_per_thread",
    "core_ghz",
)
FEATURE_COLUMNS: tuple[str, ...] = (
    *NUMERIC_FIELDS,
    *(f"{c}_code" for c in CATEGORICAL_FIELDS),
    *(f"{c}_code" for c in PARSED_CATEGORICAL),
    *PARSED_NUMERIC,
    *DERIVED,
)

_TRADEMARKS = re.compile(r"\((?:R|TM|r|tm)\)|\b(?:Intel|AMD|Processor)\b|@.*$|\bCPU\b", re.IGNORECASE)
# Letters, digits, then an optional in-number letter (EPYC "7F32", "7H12") and a suffix ("8380H").
_SKU = re.compile(
    r"^(?P<letters>[A-Za-z]*)(?P<digits>\d+)(?:(?P<mid>[A-Za-z])(?P<more>\d+))?(?P<suffix>\w*)$"
)
_VERSION = re.compile(r"^v(\d+)$", re.IGNORECASE)
_COMPILER = re.compile(r"Version\s+(?P<major>\d+)(?:\.\d+)*\s+of\s+(?P<family>[A-Za-z]+)", re.IGNORECASE)
_XEON_SCALABLE = ("Platinum", "Gold", "Silver", "Bronze")


def category_code(value: object) -> float:
    """A stable number for a category (crc32), NaN when missing: the same string always maps the same,
    and a string never seen in training still gets a number instead of an error."""
    if not isinstance(value, str) or not value.strip():
        return float("nan")
    return float(zlib.crc32(value.strip().encode()) % 1_000_003)


def parse_model_name(name: object) -> dict[str, Any]:
    """Family, tier, SKU series/number/suffix and generation from a CPU model name.

    ``"Xeon Platinum 8380"`` → Xeon, Platinum, series 8, number 380, generation 3;
    ``"Xeon E5-2699 v4"`` → Xeon, E5, 2, 699, generation 4; ``"EPYC 7742"`` → EPYC, "", 7, 742, 2.
    Anything unparsed is "" or NaN, never an error: a new naming scheme must still predict.
    """
    out: dict[str, Any] = {
        "cpu_family": "",
        "cpu_tier": "",
        "sku_suffix": "",
        "sku_series": math.nan,
        "sku_number": math.nan,
        "cpu_generation": math.nan,
    }
    if not isinstance(name, str):
        return out
    tokens = _TRADEMARKS.sub(" ", name).split()
    if not tokens:
        return out
    out["cpu_family"] = tokens[0]
    tier: list[str] = []
    version = math.nan
    sku: re.Match[str] | None = None
    for token in tokens[1:]:
        found = _VERSION.match(token)
        if found:
            version = float(found.group(1))
            continue
        code = token
        if "-" in token:
            prefix, code = token.split("-", 1)
            tier.append(prefix)
        match = _SKU.match(code)
        if match and sku is None:
            sku = match
            if match.group("letters"):
                tier.append(match.group("letters"))
        elif sku is None:
            tier.append(token)
    out["cpu_tier"] = " ".join(tier)
    if sku is not None:
        digits = sku.group("digits") + (sku.group("more") or "")
        out["sku_suffix"] = (sku.group("mid") or "") + sku.group("suffix")
        out["sku_series"] = float(digits[0])
        out["sku_number"] = float(digits[1:]) if len(digits) > 1 else math.nan
        out["cpu_generation"] = _generation(out["cpu_family"], tier, digits, version)
    elif not math.isnan(version):
        out["cpu_generation"] = version
    return out


def _generation(family: str, tier: list[str], digits: str, version: float) -> float:
    """Vendor numbering conventions; NaN where none is known (the model then leans on the specs)."""
    if not math.isnan(version):
        return version  # Xeon E3/E5/E7 "v4"
    if family.upper() == "EPYC" and len(digits) >= 3:
        return float(digits[-1])  # 7xx1 Naples, 7xx2 Rome, 7xx3 Milan, 9xx4 Genoa
    if family == "Xeon" and any(t in _XEON_SCALABLE for t in tier) and len(digits) == 4:
        return float(digits[1])  # 81xx Skylake-SP, 82xx Cascade Lake, 83xx Ice Lake, 84xx Sapphire Rapids
    if family == "Core" and len(digits) in (4, 5):
        return float(digits[: len(digits) - 3])  # i9-9900K → 9, i9-10900K → 10
    return math.nan


def parse_compiler(text: object) -> tuple[str, float]:
    """Compiler family and major version from SPEC's compiler string ("Version 19.0.1.144 of Intel")."""
    if not isinstance(text, str):
        return "", math.nan
    match = _COMPILER.search(text)
    if not match:
        return "", math.nan
    return match.group("family"), float(match.group("major"))


def _numeric(rows: pd.DataFrame, col: str) -> np.ndarray:
    if col not in rows:
        return np.full(len(rows), np.nan)
    values = pd.to_numeric(rows[col], errors="coerce").to_numpy(dtype=float)
    bad = ~np.isfinite(values) | (values < 0)
    return np.where(bad, np.nan, values)


def _ratio(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    # A zero, subnormal (the schemas allow cache sizes down to 0) or missing divisor gives inf or nan,
    # mapped to missing below; numpy's warnings about it would only be noise.
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        out = a / b
    return np.where(np.isfinite(out), out, np.nan)


def parsed_categories(rows: pd.DataFrame) -> pd.DataFrame:
    """The parsed categorical and numeric fields (family, tier, generation, compiler...) per row."""
    names = rows["model_name"] if "model_name" in rows else pd.Series([None] * len(rows), index=rows.index)
    parsed = pd.DataFrame([parse_model_name(n) for n in names], index=rows.index)
    compilers = rows["compiler"] if "compiler" in rows else pd.Series([None] * len(rows), index=rows.index)
    comp = [parse_compiler(c) for c in compilers]
    parsed["compiler_family"] = [c[0] for c in comp]
    parsed["compiler_major"] = np.array([c[1] for c in comp], dtype=float)
    return parsed


def build_features(rows: pd.DataFrame) -> pd.DataFrame:
    """Feature table for CPU systems.

    ``rows`` holds any of :data:`SPEC_FIELDS` (a missing one is unknown: NaN); other columns, such as
    benchmark ratios, are ignored. Returns exactly :data:`FEATURE_COLUMNS`, in order.
    """
    out = pd.DataFrame(index=rows.index)
    for col in NUMERIC_FIELDS:
        out[col] = _numeric(rows, col)
    for col in CATEGORICAL_FIELDS:
        out[f"{col}_code"] = [category_code(v) for v in rows[col]] if col in rows else np.nan
    parsed = parsed_categories(rows)
    for col in PARSED_CATEGORICAL:
        out[f"{col}_code"] = [category_code(v) for v in parsed[col]]
    for col in PARSED_NUMERIC:
        out[col] = parsed[col].to_numpy(dtype=float)

    cores_per_socket, sockets = out["cores_per_socket"].to_numpy(), out["sockets"].to_numpy()
    total_cores = cores_per_socket * sockets
    threads_per_core = out["threads_per_core"].to_numpy()
    total_threads = np.where(
        np.isnan(threads_per_core), out["cpus"].to_numpy(), total_cores * threads_per_core
    )
    # DDR moves 8 bytes per transfer per channel: channels × MT/s × 8 B.
    bandwidth = out["mem_channels"].to_numpy() * out["mem_data_rate"].to_numpy() * 8 / 1000
    copies = out["threads_or_copies"].to_numpy()
    out["total_cores"] = total_cores
    out["total_threads"] = total_threads
    # SPEC reports L2 per core and L3 per socket.
    out["l2_per_core_kb"] = out["l2_cache_kb"].to_numpy()
    out["l3_per_core_kb"] = _ratio(out["l3_cache_kb"].to_numpy(), cores_per_socket)
    out["mem_bandwidth_gbps"] = bandwidth
    out["bandwidth_per_core_gbps"] = _ratio(bandwidth, total_cores)
    out["mem_per_core_gb"] = _ratio(out["mem_kb"].to_numpy() / 2**20, total_cores)
    out["boost_ratio"] = _ratio(out["max_mhz"].to_numpy(), out["nominal_mhz"].to_numpy())
    out["copies_per_core"] = _ratio(copies, total_cores)
    out["copies_per_thread"] = _ratio(copies, total_threads)
    # Aggregate clock: a first-order throughput proxy for rate runs.
    out["core_ghz"] = total_cores * out["max_mhz"].to_numpy() / 1000
    return out.loc[:, list(FEATURE_COLUMNS)]


def specs_frame(specs: Iterable[Mapping[str, Any]]) -> pd.DataFrame:
    """Request-like dicts of CPU specs → the row table :func:`build_features` takes.

    Unknown keys are an error naming them (a typo would otherwise silently become a missing value);
    a numeric field that is not a number is an error naming the field and the row.
    """
    records = []
    for i, spec in enumerate(specs):
        unknown = sorted(set(spec) - set(SPEC_FIELDS))
        if unknown:
            raise ValueError(
                f"row {i}: unknown CPU field(s) {', '.join(unknown)}; known: {', '.join(SPEC_FIELDS)}"
            )
        record: dict[str, Any] = {}
        for col in NUMERIC_FIELDS:
            value = spec.get(col)
            if value is None:
                record[col] = math.nan
                continue
            if (
                isinstance(value, bool)
                or not isinstance(value, int | float)
                or not math.isfinite(value)
                or value < 0
            ):
                raise ValueError(f"row {i}: {col} must be a finite number >= 0, got {value!r}")
            record[col] = float(value)
        for col in CATEGORICAL_FIELDS:
            value = spec.get(col)
            if value is not None and not isinstance(value, str):
                raise ValueError(f"row {i}: {col} must be a string, got {value!r}")
            record[col] = value
        records.append(record)
    return pd.DataFrame.from_records(records, columns=list(SPEC_FIELDS))
