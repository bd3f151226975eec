"""DeepBench's cuBLAS GEMM workbooks (one per GPU) as rows of the GEMM table."""

from __future__ import annotations

import re
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

from training.core.datasets import DatasetError
from training.core.report import LoadReport, positive_mask

DEEPBENCH_DEVICES = {
    "DeepBench_NV_1080Ti.xlsx": "NVIDIA GeForce GTX 1080 Ti",
    "DeepBench_NV_M40.xlsx": "Tesla M40",
    # "NVIDIA Tesla P100" in an ASUS X99-E WS workstation: the PCIe card (the memory size is not stated).
    "DeepBench_NV_P100.xlsx": "Tesla P100-PCIE-16GB",
    # "NVIDIA T4"; its Specs sheet also names an "NVIDIA DGX-1", which holds no T4 (copied from V100's).
    "DeepBench_NV_T4.xlsx": "Tesla T4",
    "DeepBench_NV_TitanX.xlsx": "NVIDIA GeForce GTX TITAN X",
    "DeepBench_NV_TitanX_Pascal.xlsx": "NVIDIA TITAN X (Pascal)",
    "DeepBench_NV_TitanXp.xlsx": "NVIDIA TITAN Xp",
    # "NVIDIA V100" in an "NVIDIA DGX-1": the SXM2 module (16 GB assumed; the sheet does not say).
    "DeepBench_NV_V100.xlsx": "Tesla V100-SXM2-16GB",
}
# Sheet name → dtype. "FP16 ip, Mixed math" (V100, T4): FP16 inputs and outputs on the tensor cores with
# FP32 accumulation. P100's "Psuedo FP16" (sic) has FP16 inputs and outputs but FP32 multiply and add
# (cublasSgemmEx): it runs at the FP32 rate, yet reads and writes half the bytes, so it is float16 here.
DEEPBENCH_SHEET_DTYPES = (("FP32", "float32"), ("FP16", "float16"))
DEEPBENCH_BLOCK = "dense matrix multiplication"
DEEPBENCH_FIELDS = ("m", "n", "k", "a_transpose", "b_transpose", "time_ms")


def _header_field(cell: object) -> str | None:
    """Which DeepBench GEMM column a header cell names ('M', 'A Transpose', 'Time (msec)', ...)."""
    if not isinstance(cell, str):
        return None
    text = " ".join(re.sub(r"[^a-z0-9]+", " ", cell.lower()).split())
    if text in ("m", "n", "k"):
        return text
    words = text.split()
    if any(w.startswith("trans") for w in words):
        for side in ("a", "b"):
            if side in words:
                return f"{side}_transpose"
    if "time" in words or "msec" in words or "ms" in words:
        return "time_ms"
    return None


def _deepbench_block(grid: pd.DataFrame, where: str) -> pd.DataFrame:
    """The rows of the "Dense Matrix Multiplication" block of one sheet (``grid`` read without a header),
    one column per :data:`DEEPBENCH_FIELDS`. The block runs until the next block's title: text in the
    title's column on a row without sizes (a note there beside sizes is still a GEMM row)."""
    cells = grid.to_numpy(dtype=object)
    hits = [
        (r, c)
        for r, c in zip(*np.nonzero([[isinstance(v, str) for v in row] for row in cells]), strict=True)
        if str(cells[r, c]).strip().lower().startswith(DEEPBENCH_BLOCK)
    ]
    if not hits:
        raise DatasetError(f"{where}: no 'Dense Matrix Multiplication' block")
    title_row, title_col = (int(i) for i in hits[0])
    # The column headers sit on the title row (every published workbook) or on one of the next two rows.
    columns: dict[str, int] = {}
    header_row = title_row
    for r in range(title_row, min(title_row + 3, len(cells))):
        found = {}
        for c, value in enumerate(cells[r]):
            name = _header_field(value)
            if name is not None and name not in found:
                found[name] = c
        if len(found) > len(columns):
            columns, header_row = found, r
        if len(columns) == len(DEEPBENCH_FIELDS):
            break
    missing = [f for f in DEEPBENCH_FIELDS if f not in columns]
    if missing:
        raise DatasetError(
            f"{where}: the 'Dense Matrix Multiplication' block (row {title_row + 1}) has no column for "
            f"{', '.join(missing)}"
        )
    sizes = [columns[f] for f in ("m", "n", "k")]
    end = len(cells)
    for r in range(header_row + 1, len(cells)):
        title = cells[r, title_col]
        if isinstance(title, str) and title.strip() and pd.isna(cells[r, sizes]).all():
            end = r
            break
    block = grid.iloc[header_row + 1 : end, [columns[f] for f in DEEPBENCH_FIELDS]]
    block.columns = pd.Index(DEEPBENCH_FIELDS)
    return block


def _workbook_blocks(rel: str, path: Path) -> list[pd.DataFrame]:
    """The GEMM blocks of one workbook (its first FP32 sheet, and its FP16 sheet where there is one), each
    row labelled with its place (``line``), the workbook's device and the sheet's dtype."""
    device = DEEPBENCH_DEVICES.get(rel)
    if device is None:
        raise DatasetError(f"deepbench: {rel} is not a known DeepBench workbook")
    with warnings.catch_warnings():
        # The workbooks carry an Excel extension openpyxl does not read; the cell values are unaffected.
        warnings.filterwarnings("ignore", "Unknown extension", UserWarning)
        # Text such as 'N/A' stays text, so a rejected row shows what the cell held.
        sheets = pd.read_excel(
            path, sheet_name=None, header=None, engine="openpyxl", keep_default_na=False, na_values=[""]
        )
    chosen = []
    for tag, dtype in DEEPBENCH_SHEET_DTYPES:
        names = [s for s in sheets if tag.lower() in str(s).lower()]
        if names:
            chosen.append((names[0], dtype))
        elif dtype == "float32":
            raise DatasetError(f"deepbench: {rel} has no FP32 sheet (sheets: {', '.join(map(str, sheets))})")
    blocks = []
    for sheet, dtype in chosen:
        block = _deepbench_block(sheets[sheet], f"deepbench: {rel}, sheet {sheet!r}")
        block = block.loc[block.notna().any(axis=1)]  # blank rows separate the groups
        if block.empty:
            raise DatasetError(f"deepbench: {rel}, sheet {sheet!r}: the GEMM block has no rows")
        blocks.append(
            block.assign(line=[f"{rel}:{sheet}:{i + 1}" for i in block.index], device=device, dtype=dtype)
        )
    return blocks


def load_deepbench(paths: dict[str, Path], report: LoadReport) -> pd.DataFrame:
    """DeepBench cuBLAS GEMM times: the "Dense Matrix Multiplication" block of each workbook's first FP32
    sheet and of its FP16 sheet (V100, T4: mixed precision; P100: pseudo-FP16), nothing else."""
    frames = [block for rel, path in sorted(paths.items()) for block in _workbook_blocks(rel, path)]
    raw = pd.concat(frames, ignore_index=True)
    raw = raw.loc[positive_mask(raw, ("m", "n", "k", "time_ms"), report, raw["line"])]
    keep = pd.Series(True, index=raw.index)
    for col in ("m", "n", "k"):
        values = pd.to_numeric(raw[col])
        bad = values != np.floor(values)
        for idx in raw.index[bad & keep]:
            report.reject(f"{col} is not a whole number", f"{raw.at[idx, 'line']!s}: {raw.at[idx, col]!r}")
        keep &= ~bad
    flags = {}
    for col in ("a_transpose", "b_transpose"):
        flags[col] = raw[col].map(lambda v: v.strip().lower() if isinstance(v, str) else None)
        bad = ~flags[col].isin(["n", "t"])
        for idx in raw.index[bad & keep]:
            report.reject(f"{col} not N or T", f"{raw.at[idx, 'line']!s}: {raw.at[idx, col]!r}")
        keep &= ~bad
    frame = pd.DataFrame(
        {
            "line": raw["line"],
            "device": raw["device"],
            "op": "gemm",
            "batch": 1,
            "m": pd.to_numeric(raw["m"]),
            "n": pd.to_numeric(raw["n"]),
            "k": pd.to_numeric(raw["k"]),
            "dtype": raw["dtype"],
            "layout": flags["a_transpose"] + flags["b_transpose"],
            "runtime_ms": pd.to_numeric(raw["time_ms"]).astype(float),
        }
    ).loc[keep]
    frame = frame.astype({c: "int64" for c in ("m", "n", "k")})
    identity = ["device", "m", "n", "k", "layout", "dtype"]
    dup = frame.duplicated(identity, keep="first")
    first = frame.groupby(identity)["line"].transform("first")
    for idx in frame.index[dup]:
        report.reject("duplicate configuration", f"{frame.at[idx, 'line']!s} repeats {first[idx]!s}")
    return frame.loc[~dup].drop(columns="line").reset_index(drop=True)
