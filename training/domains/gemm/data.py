"""GEMM loaders: every source normalised into one table.

Columns: ``source, device`` + :data:`service.features.gemm.CONFIG_COLUMNS` + :data:`TARGETS` +
``runtime_spread``. Malformed rows are counted by reason with their line numbers, logged, and returned
in the report; nothing is dropped silently.
"""

from __future__ import annotations

import io
import json
import logging
import math
import tarfile
import zipfile
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
    CLTUNE_FIELDS,
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


def _check_positive(
    frame: pd.DataFrame, cols: tuple[str, ...], report: LoadReport, line: pd.Series
) -> pd.DataFrame:
    """Drop rows whose required numeric columns are missing, non-finite or non-positive, by reason."""
    return frame.loc[positive_mask(frame, cols, report, "line " + line.astype(str))]


def _parse_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"non-finite {text!r}")
    return value


def load_gpperf(paths: dict[str, Path], report: LoadReport) -> pd.DataFrame:
    """GPPerf CUTLASS sweep: 7-line records inside the tarball (see the dataset card)."""
    (archive,) = paths.values()
    with tarfile.open(archive) as tar:
        member = next(m for m in tar.getmembers() if m.name.endswith("/results.csv"))
        extracted = tar.extractfile(member)
        if extracted is None:
            raise DatasetError(f"gpperf-rtx4070: {member.name} in {archive} is not a regular file")
        lines = extracted.read().decode("utf-8", errors="replace").splitlines()
    header = "Energy_Joules,GFLOPS_per_Watt,TFLOPS"
    if lines and lines[0].startswith(header):
        lines[0] = lines[0][len(header) :]
    records = []
    i = 0
    while i < len(lines):
        first = lines[i].split(",")
        if len(first) < 22 or not first[0].strip().isdigit():
            report.reject("line outside a 7-line record", f"line {i + 1}: {lines[i][:60]!r}")
            i += 1
            continue
        block = lines[i : i + 7]
        where = f"line {i + 1}"
        if len(block) < 7 or not block[6].startswith("problem_size_k,"):
            report.reject("truncated record", where)
            i += 1
            continue
        try:
            kv = dict(line.split(",", 1) for line in block[1:6])
            last = block[6].split(",")
            m, n, k = int(first[1]), int(first[2]), int(first[3])
            if (int(kv["problem_size_m"]), int(kv["problem_size_n"]), int(last[1])) != (m, n, k):
                raise ValueError("problem_size lines disagree with M, N, K")
            power_text = first[15].strip()
            power = float("nan") if power_text == "[N/A]" else _parse_float(power_text)
            energy_text = last[2].strip() if len(last) > 2 else ""
            runtime = _parse_float(first[13])
            records.append(
                {
                    "line": i + 1,
                    "device": "NVIDIA GeForce RTX 4070",
                    "op": "gemm",
                    "batch": 1,
                    "m": m,
                    "n": n,
                    "k": k,
                    "dtype": "float32" if "_sgemm_" in first[4] else "float16",
                    "layout": first[5].strip(),
                    "kernel": first[4].strip(),
                    "tile_m": int(first[6]),
                    "tile_n": int(first[7]),
                    "tile_k": int(first[8]),
                    "stages": int(first[9]),
                    "alpha": _parse_float(first[11]),
                    "beta": _parse_float(first[12]),
                    "runtime_ms": runtime,
                    # Energy is logged only alongside a power reading; without one it is not a measurement.
                    "power_w": power,
                    "energy_j": _parse_float(energy_text)
                    if not math.isnan(power) and energy_text
                    else float("nan"),
                }
            )
        except (ValueError, KeyError, IndexError) as exc:
            report.reject(f"malformed record ({exc.__class__.__name__})", f"{where}: {exc}")
        i += 7
    frame = pd.DataFrame.from_records(records)
    frame = _check_positive(frame, ("m", "n", "k", "runtime_ms"), report, frame["line"])
    power_bad = frame["power_w"].notna() & ~(frame["power_w"] > 0)
    for idx in frame.index[power_bad]:
        report.reject("power_w <= 0", f"line {frame.at[idx, 'line']!s}")
    frame.loc[power_bad, ["power_w", "energy_j"]] = np.nan
    return frame


def load_gpperf_tiled(paths: dict[str, Path], report: LoadReport) -> pd.DataFrame:
    """GPPerf hand-written tiled kernel: runtime and power files joined on (M, N, K, tile)."""
    times = pd.read_csv(paths["execution_times_all.csv"])
    power = pd.read_csv(paths["power_usage_results_all.csv"])
    times["line"] = [f"execution_times_all.csv:{i + 2}" for i in range(len(times))]
    power["line"] = [f"power_usage_results_all.csv:{i + 2}" for i in range(len(power))]
    times = _check_positive(times, ("M", "N", "K", "Tile Size", "Execution Time"), report, times["line"])
    power = _check_positive(
        power, ("M", "N", "K", "Tile Size", "Average Power Usage (W)"), report, power["line"]
    )
    keys = ["M", "N", "K", "Tile Size"]
    for frame, name in ((times, "execution"), (power, "power")):
        dup = frame.duplicated(keys, keep="first")
        for idx in frame.index[dup]:
            report.reject(f"duplicate {name} configuration", str(frame.at[idx, "line"]))
    merged = pd.merge(
        times.drop_duplicates(keys).drop(columns="line"),
        power.drop_duplicates(keys).drop(columns="line"),
        on=keys,
        how="outer",
    )
    tile = merged["Tile Size"].astype(int)
    return pd.DataFrame(
        {
            "device": "NVIDIA GeForce RTX 4070",
            "op": "gemm",
            "batch": 1,
            "m": merged["M"].astype(int),
            "n": merged["N"].astype(int),
            "k": merged["K"].astype(int),
            "dtype": "float32",
            "kernel": "gpperf_tiled_matmul",
            "tile_m": tile,
            "tile_n": tile,
            "tile_k": tile,
            "runtime_ms": merged["Execution Time"],
            "power_w": merged["Average Power Usage (W)"],
        }
    )


def load_uci_sgemm(paths: dict[str, Path], report: LoadReport) -> pd.DataFrame:
    """UCI SGEMM: target is the mean of the four runs; their relative range is kept as the spread."""
    (archive,) = paths.values()
    with zipfile.ZipFile(archive) as zf:
        name = next(n for n in zf.namelist() if n.endswith(".csv"))
        raw = pd.read_csv(io.BytesIO(zf.read(name)))
    runs = [f"Run{i} (ms)" for i in range(1, 5)]
    raw["line"] = np.arange(len(raw)) + 2
    raw = _check_positive(raw, (*(c.upper() for c in CLTUNE_FIELDS[:10]), *runs), report, raw["line"])
    values = raw[runs].astype(float)
    mean = values.mean(axis=1)
    frame = pd.DataFrame({f: raw[f.upper()].astype(int) for f in CLTUNE_FIELDS})
    frame["device"] = "NVIDIA GeForce GTX 680"
    frame["op"] = "gemm"
    frame["batch"] = 1
    frame["m"] = frame["n"] = frame["k"] = 2048
    frame["dtype"] = "float32"
    frame["layout"] = "nn"
    frame["kernel"] = "cltune_gemm_fast"
    frame["runtime_ms"] = mean
    frame["runtime_spread"] = (values.max(axis=1) - values.min(axis=1)) / mean
    return frame


def load_neusight(paths: dict[str, Path], report: LoadReport) -> pd.DataFrame:
    """NeuSight cuBLAS latencies. Kernel name, grid and occupancy were observed at run time, so only the
    shape, op and device are kept as inputs.

    NeuSight's ``N`` is the reduction dimension: its collector runs ``torch.bmm(randn(B, M, N),
    randn(B, N, K))`` and ``nn.Linear(N, K)`` on a (B, M, N) input, so a row is m = M, n = K, k = N (the
    recorded grid is ceil(K / tile) x ceil(M / tile) output tiles). ``linear`` rows time ``nn.Linear`` with
    its bias: the runtime includes adding the bias to the (M x K) output."""
    frames = []
    for rel, path in sorted(paths.items()):
        if not rel.startswith("train/"):
            continue
        raw = pd.read_csv(path)
        raw["line"] = [f"{rel}:{i + 2}" for i in range(len(raw))]
        raw = _check_positive(raw, ("B", "M", "N", "K", "Latency"), report, raw["line"])
        bad_op = ~raw["OPName"].isin(["bmm", "linear"])
        for idx in raw.index[bad_op]:
            report.reject("OPName not bmm/linear", str(raw.at[idx, "line"]))
        raw = raw.loc[~bad_op]
        frames.append(
            pd.DataFrame(
                {
                    "device": raw["Device"],
                    "op": raw["OPName"],
                    "batch": raw["B"].astype(int),
                    "m": raw["M"].astype(int),
                    "n": raw["K"].astype(int),
                    "k": raw["N"].astype(int),
                    "dtype": "float32",
                    "runtime_ms": raw["Latency"].astype(float),
                }
            )
        )
    return pd.concat(frames, ignore_index=True)


# DeepBench workbooks: file → the device catalog's name for the GPU on its ``Specs`` sheet.
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
    # Optional numbers may be blank (not measured), but a value that is there must be a real one.
    numeric = (c for c in KERNEL_NUMERIC_FIELDS if c != "quantize_activation")
    for col in (c for c in (*numeric, "power_w", "energy_j", "runtime_spread") if c in raw):
        values = pd.to_numeric(raw[col], errors="coerce")
        floor = 0.0 if col in ("power_w", "energy_j", "runtime_spread") else -np.inf
        bad = keep & raw[col].notna() & ~(np.isfinite(values) & (values >= floor))
        reason = f"{col} is not a finite number" + (" >= 0" if floor == 0 else "")
        for idx in raw.index[bad]:
            report.reject(reason, f"{where[idx]}: {raw.at[idx, col]!r}")
        keep &= ~bad
        raw[col] = values
    for col, choices in CSV_CHOICES.items():
        if col not in raw:
            continue
        bad = keep & raw[col].notna() & ~raw[col].isin(choices)
        if col != "layout":
            bad |= keep & raw[col].isna()
        for idx in raw.index[bad]:
            report.reject(f"{col} not one of {', '.join(choices)}", f"{where[idx]}: {raw.at[idx, col]!r}")
        keep &= ~bad
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
