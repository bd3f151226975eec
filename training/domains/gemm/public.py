"""Loaders for the small public GEMM sweeps: GPPerf on an RTX 4070 (its CUTLASS sweep and its tiled
kernel), UCI SGEMM (CLTune's kernel on a GTX 680) and NeuSight's cuBLAS latencies.

Each loader takes the dataset's fetched files and a :class:`~training.core.report.LoadReport`, and returns
rows in the GEMM table's columns (:func:`training.domains.gemm.data.load_gemm` completes and orders them);
malformed rows are rejected by reason with their line numbers. DeepBench and AI Configurator have modules
of their own (:mod:`.deepbench`, :mod:`.aiconfigurator`).
"""

from __future__ import annotations

import io
import math
import tarfile
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from service.domains.gemm.features import CLTUNE_FIELDS
from training.core.datasets import DatasetError
from training.core.report import LoadReport, positive_mask


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


def _gpperf_record(first: list[str], block: list[str], number: int) -> dict[str, Any]:
    """The row of the 7-line record ``block`` (``first``: its first line split) that starts on line
    ``number``; ValueError, KeyError or IndexError where the record is malformed."""
    kv = dict(line.split(",", 1) for line in block[1:6])
    last = block[6].split(",")
    m, n, k = int(first[1]), int(first[2]), int(first[3])
    if (int(kv["problem_size_m"]), int(kv["problem_size_n"]), int(last[1])) != (m, n, k):
        raise ValueError("problem_size lines disagree with M, N, K")
    power_text = first[15].strip()
    power = float("nan") if power_text == "[N/A]" else _parse_float(power_text)
    energy_text = last[2].strip() if len(last) > 2 else ""
    runtime = _parse_float(first[13])
    return {
        "line": number,
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
        "energy_j": _parse_float(energy_text) if not math.isnan(power) and energy_text else float("nan"),
    }


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
            records.append(_gpperf_record(first, block, i + 1))
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
