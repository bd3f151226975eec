"""CPU loaders: SPEC CPU2017 results, UCI computer hardware and the NCPP Sapphire Rapids sample.

Every loader reads verified files through the registry, keeps inputs and targets in separate column
lists, and counts malformed rows by reason with their line numbers in a :class:`LoadReport`; nothing
is dropped silently. A missing *input* value is kept (unknown, the models handle NaN); a missing or
non-positive *target* rejects the row, since a log-scale target needs a positive measurement.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from service.core.settings import Settings
from service.domains.cpu.features import SPEC_FIELDS, SUITES
from training.core.datasets import DatasetError, fetch, get_spec
from training.core.report import LoadReport, positive_mask

log = logging.getLogger(__name__)

SCORE = "score"
# A benchmark ratio column: "503.bwaves_r"; its runtime twin is "t_503.bwaves_r".
BENCHMARK = re.compile(r"^\d{3}\.\w+_[rs]$")
RUNTIME_PREFIX = "t_"


@dataclass
class SuiteData:
    """One SPEC suite: one row per result; SPEC_FIELDS and ``file`` as inputs/ids, one column per ratio."""

    suite: str
    frame: pd.DataFrame
    benchmarks: list[str]
    source_columns: list[str]


@dataclass
class SpecData:
    suites: dict[str, SuiteData]
    report: LoadReport
    files: list[dict[str, str]] = field(default_factory=list)


def _files(name: str) -> list[dict[str, str]]:
    return [{"file": f.file, "sha256": f.sha256} for f in get_spec(name).files]


def load_spec_suite(suite: str, path: Path, report: LoadReport) -> SuiteData:
    """One ``input_<suite>.csv``: spec columns, then per benchmark its ratio and its runtime ``t_...``."""
    raw = pd.read_csv(path)
    columns = [str(c) for c in raw.columns]
    missing = [c for c in (*SPEC_FIELDS, "file") if c not in columns]
    if missing:
        raise DatasetError(f"spec-cpu2017: {path.name} lacks the column(s) {', '.join(missing)}")
    benchmarks = [c for c in columns if BENCHMARK.match(c)]
    if not benchmarks:
        raise DatasetError(f"spec-cpu2017: {path.name} has no benchmark ratio column (like 503.bwaves_r)")
    where = pd.Series([f"{path.name}:{i + 2}" for i in range(len(raw))], index=raw.index)
    keep = positive_mask(raw, benchmarks, report, where)
    no_model = raw["model_name"].isna() | (raw["model_name"].astype(str).str.strip() == "")
    for idx in raw.index[no_model & keep]:
        report.reject("model_name missing", where[idx])
    keep &= ~no_model
    dup = raw["file"].duplicated(keep="first")
    for idx in raw.index[dup & keep]:
        report.reject("duplicate result file", f"{where[idx]}: {raw.at[idx, 'file']!r}")
    keep &= ~dup
    rows = raw.loc[keep]
    # Runtimes (t_...) are not carried at all: they are outcomes of the same run, never inputs.
    frame = rows.loc[:, [*SPEC_FIELDS, "file"]].copy()
    ratios = rows.loc[:, benchmarks].astype(float)
    frame = pd.concat([frame, ratios], axis=1)
    # SPEC's suite score is the geometric mean of the benchmark ratios.
    frame[SCORE] = np.exp(np.log(ratios).mean(axis=1))
    frame["line"] = where.loc[keep]
    return SuiteData(
        suite=suite, frame=frame.reset_index(drop=True), benchmarks=benchmarks, source_columns=columns
    )


def load_spec_cpu2017(settings: Settings, suites: tuple[str, ...] = SUITES) -> SpecData:
    """The four SPEC CPU2017 suites (or some), each as its own table."""
    unknown = [s for s in suites if s not in SUITES]
    if unknown:
        raise DatasetError(f"unknown suite(s) {', '.join(unknown)}; choose from {', '.join(SUITES)}")
    paths = fetch(get_spec("spec-cpu2017"), settings)
    report = LoadReport("spec-cpu2017")
    loaded = {s: load_spec_suite(s, paths[f"input_{s}.csv"], report) for s in suites}
    report.rows = sum(len(d.frame) for d in loaded.values())
    report.log()
    return SpecData(suites=loaded, report=report, files=_files("spec-cpu2017"))


UCI_INPUTS = ("myct", "mmin", "mmax", "cach", "chmin", "chmax")


@dataclass
class TableData:
    name: str
    frame: pd.DataFrame
    report: LoadReport
    files: list[dict[str, str]]


def load_uci_hardware(settings: Settings) -> TableData:
    """UCI computer hardware: six specs → PRP; ERP (the authors' linear fit) is kept as the baseline."""
    paths = fetch(get_spec("uci-computer-hardware"), settings)
    path = paths["machine.data"]
    raw = pd.read_csv(path)
    expected = ["vendor_name", "model_name", *UCI_INPUTS, "prp", "erp"]
    if [str(c).strip().lower() for c in raw.columns] != expected:
        raise DatasetError(
            f"uci-computer-hardware: {path.name} columns {list(raw.columns)} differ from {expected}"
        )
    raw.columns = pd.Index(expected)
    report = LoadReport("uci-computer-hardware")
    where = pd.Series([f"{path.name}:{i + 2}" for i in range(len(raw))], index=raw.index)
    keep = positive_mask(raw, ["prp", "erp", "myct"], report, where)
    for col in UCI_INPUTS:
        values = pd.to_numeric(raw[col], errors="coerce")
        bad = ~(np.isfinite(values) & (values >= 0))
        for idx in raw.index[bad & keep]:
            report.reject(f"{col} missing, non-numeric or < 0", f"{where[idx]}: {raw.at[idx, col]!r}")
        keep &= ~bad
    frame = raw.loc[keep].copy()
    for col in (*UCI_INPUTS, "prp", "erp"):
        frame[col] = frame[col].astype(float)
    frame["line"] = where.loc[keep]
    report.rows = len(frame)
    report.log()
    return TableData(
        "uci-computer-hardware", frame.reset_index(drop=True), report, _files("uci-computer-hardware")
    )


# NCPP system columns → the SPEC CPU field names (GHz → MHz where needed), so the one CPU feature module
# describes these systems too.
NCPP_SPEC_MAP = {
    "SVR.CPU.Thread(s) per Core": "threads_per_core",
    "SVR.CPU.Core(s) per Socket": "cores_per_socket",
    "SVR.CPU.Socket(s)": "sockets",
    "SVR.CPU.NUMA Node(s)": "numas",
    "SVR.CPU.CPU(s)": "cpus",
    "SVR.CPU.L1d Cache": "l1d_cache_kb",
    "SVR.CPU.L1i Cache": "l1i_cache_kb",
    "SVR.CPU.L2 Cache": "l2_cache_kb",
    "SVR.CPU.L3 Cache": "l3_cache_kb",
    "SVR.Memory.MemTotal": "mem_kb",
    "Measure.DIMM.Num": "mem_channels",
    "Measure.DIMM.Freq": "mem_data_rate",
}
NCPP_GHZ = {"SVR.CPU.Base Frequency": "nominal_mhz", "SVR.CPU.Maximum Frequency": "max_mhz"}
# System characteristics with no SPEC counterpart, kept as extra numeric inputs.
NCPP_EXTRA_NUMERIC = {
    "SVR.CPU.All-core Maximum Frequency": "allcore_ghz",
    "SVR.Power.TDP": "tdp_w",
    "SVR.Power.Frequency (MHz)": "power_freq_mhz",
    "Measure.DIMM.Total": "dimm_total_gb",
}
NCPP_KEYS = ("RESULT.WorkloadName", "RESULT.TestName")
NCPP_TARGET = "RESULT.Value"
NCPP_FILES = ("train_data.csv", "test_data.csv")


def _ncpp_hbm_gb(installed: object) -> float:
    """HBM capacity in GB from "...; 128GB (8x16GB HBM2 ...)" (0 when the system has none)."""
    if not isinstance(installed, str):
        return float("nan")
    found = re.search(r"(\d+)GB \([^)]*HBM", installed)
    return float(found.group(1)) if found else 0.0


def load_ncpp_file(path: Path, report: LoadReport) -> pd.DataFrame:
    raw = pd.read_csv(path)
    required = [*NCPP_SPEC_MAP, *NCPP_GHZ, *NCPP_EXTRA_NUMERIC, *NCPP_KEYS, NCPP_TARGET, "SVR.CPU.CPU Model"]
    missing = [c for c in required if c not in raw.columns]
    if missing:
        raise DatasetError(f"ncpp-spr: {path.name} lacks the column(s) {', '.join(missing)}")
    where = pd.Series([f"{path.name}:{i + 2}" for i in range(len(raw))], index=raw.index)
    keep = positive_mask(raw, [NCPP_TARGET], report, where)
    no_key = raw[list(NCPP_KEYS)].isna().any(axis=1)
    for idx in raw.index[no_key & keep]:
        report.reject("workload or test name missing", where[idx])
    keep &= ~no_key
    rows = raw.loc[keep]
    frame = pd.DataFrame(index=rows.index)
    frame["vendor"] = "Intel"
    frame["model_name"] = rows["SVR.CPU.CPU Model"].astype(str)
    frame["os"] = rows.get("SVR.System.OS")
    for src, dst in NCPP_SPEC_MAP.items():
        frame[dst] = pd.to_numeric(rows[src], errors="coerce")
    for src, dst in NCPP_GHZ.items():
        frame[dst] = pd.to_numeric(rows[src], errors="coerce") * 1000
    for src, dst in NCPP_EXTRA_NUMERIC.items():
        frame[dst] = pd.to_numeric(rows[src], errors="coerce")
    frame["hbm_gb"] = [_ncpp_hbm_gb(v) for v in rows.get("SVR.Memory.Installed", pd.Series(index=rows.index))]
    frame["workload"] = rows["RESULT.WorkloadName"].astype(str)
    frame["test"] = rows["RESULT.TestName"].astype(str)
    frame["value"] = rows[NCPP_TARGET].astype(float)
    frame["line"] = where.loc[keep]
    return frame.reset_index(drop=True)


def load_ncpp(settings: Settings) -> dict[str, TableData]:
    """NCPP sample: its own train and test files, each normalised to SPEC field names plus extras."""
    paths = fetch(get_spec("ncpp-spr"), settings)
    out = {}
    for name in NCPP_FILES:
        report = LoadReport(f"ncpp-spr/{name}")
        frame = load_ncpp_file(paths[name], report)
        report.rows = len(frame)
        report.log()
        out[name] = TableData("ncpp-spr", frame, report, _files("ncpp-spr"))
    return out
