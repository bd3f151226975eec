"""AI Configurator's campaign files (ai-dynamo/aiconfigurator, Apache-2.0) read as rows of the GEMM table.

The dataset holds one parquet file per measurement campaign (a GPU, a serving framework and one of its
versions): ``<gpu>/gemm/<framework>/<version>/gemm_perf.parquet``. A row is one Linear op y = x W^T with
x [m, k] the activation and W [n, k] the weight (k is the reduction), timed alone: here ``op="linear"``,
``batch=1`` and m, n, k exactly as measured, ``runtime_ms`` the latency, ``power_w`` the mean board power
where the campaign logged it (energy = power x latency). ``framework``, ``framework_version``, ``kernel``
(the collector's ``kernel_source``) and ``quantize_activation`` (1.0 when the timed op also quantizes the
BF16 activation, see :data:`GEMM_DTYPES`) describe the configuration.

This module holds the file layout, what each collector's ``gemm_dtype`` means, and the reading and
validation of campaign files (:func:`read_campaign`, :func:`load_aiconfigurator_campaigns`: every
campaign, repeats across versions included). Which campaigns and rows make the default training set is
:mod:`training.domains.gemm.aiconfigurator`.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import pandas as pd
import pyarrow.parquet as pq

from training.core.datasets import DatasetError
from training.core.report import LoadReport

DATASET = "aiconfigurator-gemm"
# The Arc Pro B60's older driver (vLLM 0.12.0 campaign) names it by its PCI id; it is the same card that
# the vLLM 0.20.0 campaign names "Intel(R) Arc(TM) Pro B60 Graphics". Every other name is the catalog's.
DEVICE_ALIASES = {"Intel(R) Graphics [0xe211]": "Intel(R) Arc(TM) Pro B60 Graphics"}
# GPUs measured through the Intel XPU collector (collector/vllm/collect_gemm_xpu.py), not the CUDA one.
XPU_GPUS = frozenset({"b60"})


@dataclass(frozen=True)
class Quantization:
    """What a collector's ``gemm_dtype`` is in this project's terms."""

    dtype: str
    quantize_activation: float


# gemm_dtype → (dtype, does the timed op include quantizing the BF16 activation). Sources: ai-dynamo/
# aiconfigurator collector/{trtllm,vllm,sglang}/collect_gemm*.py and the framework code they call.
# - TRT-LLM (collect_gemm.py) times ``Linear.forward(x)`` on a BF16 x: FP8QDQLinearMethod.apply quantizes
#   it per tensor (dynamic: quantize_e4m3_per_tensor), FP8BlockScalesLinearMethod.apply 1x128 per token
#   group (fp8_quantize_1x128 before the block GEMM on Hopper/Ada/SM120; fp8_swap_ab_gemm takes the BF16
#   input on SM100), NVFP4LinearMethod.apply with fp4_quantize (tensorrt_llm/_torch/modules/linear.py).
# - TRT-LLM 1.0.0's int8_wo/int4_wo/sq (collect_gemm_trt.py, "trt_flow_*" kernels) are the TensorRT
#   profiler's time of the WeightOnlyQuantMatmul or SmoothQuantGemm plugin layer alone: no quantization.
# - vLLM (collect_gemm.py) times ``RowParallelLinear.forward(x)`` on a BF16 x: Fp8Config (static or dynamic
#   activation scheme) quantizes x before the scaled GEMM, block FP8 per token group, NVFP4
#   (CompressedTensors W4A4) with scaled_fp4_quant.
# - SGLang (collect_gemm.py) calls sgl_per_token_quant_fp8 (fp8), sglang_per_token_group_quant_fp8
#   (fp8_block) and flashinfer fp4_quantize (nvfp4) inside the timed gemm_op.
GEMM_DTYPES: dict[str, Quantization] = {
    "bfloat16": Quantization("bfloat16", 0.0),
    "fp8": Quantization("float8_e4m3fn", 1.0),
    # A pre-quantized FP8 activation: only the GEMM is timed (SGLang 0.5.12 on L40S: 1.9 us for the
    # smallest GEMM against 3.2 us for its fp8 rows with the quantize kernel, 1.7 us for BF16).
    "fp8_static": Quantization("float8_e4m3fn", 0.0),
    # 1x128 activation / 128x128 weight block scales.
    "fp8_block": Quantization("float8_block", 1.0),
    "nvfp4": Quantization("nvfp4", 1.0),
    "int8_wo": Quantization("int8_weight_only", 0.0),
    "int4_wo": Quantization("int4_weight_only", 0.0),
    # SmoothQuant W8A8.
    "sq": Quantization("int8", 0.0),
}
# (framework, gemm_dtype) where the collector's op differs from the name.
FRAMEWORK_DTYPES: dict[tuple[str, str], Quantization] = {
    # TRT-LLM's fp8_static still hands Linear a BF16 x, which FP8QDQLinearMethod.apply quantizes with the
    # static scale (static_quantize_e4m3_per_tensor): its rows match the same campaign's fp8 rows (ratio
    # median 1.000, 10-90% 0.96-1.04 on B200 1.2.0rc5, GB200 1.3.0rc10, L40S 1.3.0rc15).
    ("trtllm", "fp8_static"): Quantization("float8_e4m3fn", 1.0),
    # SGLang's "int8_wo" (collector for 0.5.5-0.5.6) quantizes the activation per token in PyTorch ops
    # (per_token_quant_int8) and runs sgl_kernel's int8_scaled_mm: INT8 W8A8, not weight-only.
    ("sglang", "int8_wo"): Quantization("int8", 1.0),
}
# (framework, gemm_dtype) on Intel XPU: vLLM's XPUFp8LinearMethod.apply runs fp8_gemm_w8a16 (FP8 weights,
# BF16 activation) unless VLLM_XPU_USE_W8A8_GEMM is set, which the collector (collect_gemm_xpu.py) does not.
XPU_DTYPES: dict[tuple[str, str], Quantization] = {("vllm", "fp8"): Quantization("float8_e4m3fn", 0.0)}

READ_COLUMNS = ("device", "op_name", "kernel_source", "gemm_dtype", "m", "n", "k", "latency")
STRING_COLUMNS = ("device", "op_name", "kernel_source", "gemm_dtype")
CATEGORICAL = ("gpu", "framework", "framework_version", "device", "op", "dtype", "gemm_dtype", "kernel")
OUTPUT_COLUMNS = (
    "gpu",
    "framework",
    "framework_version",
    "device",
    "op",
    "batch",
    "m",
    "n",
    "k",
    "dtype",
    "gemm_dtype",
    "kernel",
    "quantize_activation",
    "runtime_ms",
    "power_w",
    "energy_j",
)
_CAMPAIGN_FILE = re.compile(
    r"^(?P<gpu>[^/]+)/gemm/(?P<framework>[^/]+)/(?P<version>[^/]+)/gemm_perf\.parquet$"
)


class Campaign(NamedTuple):
    """One measurement campaign: a GPU (the dataset's folder name), a framework and its version."""

    gpu: str
    framework: str
    version: str

    @property
    def file(self) -> str:
        return f"{self.gpu}/gemm/{self.framework}/{self.version}/gemm_perf.parquet"

    @classmethod
    def from_file(cls, rel: str) -> Campaign | None:
        match = _CAMPAIGN_FILE.match(rel)
        return cls(match["gpu"], match["framework"], match["version"]) if match else None


def quantization(framework: str, gemm_dtype: str, gpu: str) -> Quantization | None:
    """The dtype and activation quantization of a collector's ``gemm_dtype``; None when it is unknown."""
    if gpu in XPU_GPUS and (framework, gemm_dtype) in XPU_DTYPES:
        return XPU_DTYPES[(framework, gemm_dtype)]
    return FRAMEWORK_DTYPES.get((framework, gemm_dtype), GEMM_DTYPES.get(gemm_dtype))


def _reject(report: LoadReport, reason: str, count: int, examples: Iterable[str]) -> None:
    """Count ``count`` rejected rows at once, with the first few places (LoadReport keeps five)."""
    if count <= 0:
        return
    report.rejected[reason] = report.rejected.get(reason, 0) + count
    shown = report.examples.setdefault(reason, [])
    for where in examples:
        if len(shown) >= 5:
            break
        shown.append(where)


def _reject_mask(report: LoadReport, reason: str, bad: np.ndarray, file: str) -> None:
    rows = np.flatnonzero(bad)
    _reject(report, reason, len(rows), (f"{file}: row {i}" for i in rows[:5]))


def _constant(value: str, n: int) -> pd.Categorical[str]:
    return pd.Categorical.from_codes(np.zeros(n, dtype=np.int8), categories=pd.Index([value]))


def _read_raw(file: str, path: Path) -> pd.DataFrame:
    """The columns the loader reads (and power where the file has it); a missing column names itself."""
    try:
        names = pq.read_schema(path).names
    except (OSError, ValueError) as exc:
        raise DatasetError(f"{DATASET}: {file} is not a readable parquet file: {exc}") from exc
    missing = [c for c in READ_COLUMNS if c not in names]
    if missing:
        raise DatasetError(f"{DATASET}: {file} lacks column(s) {', '.join(missing)}")
    columns = [*READ_COLUMNS, *(["power"] if "power" in names else [])]
    table: pd.DataFrame = pq.read_table(
        path, columns=columns, read_dictionary=list(STRING_COLUMNS)
    ).to_pandas()
    return table


def _drop_repeats(raw: pd.DataFrame, keep: np.ndarray, report: LoadReport, file: str) -> None:
    """Unmark (in ``keep``) the kept rows that repeat an earlier kept row's GEMM, rejecting them by reason."""
    identity = ["device", "kernel_source", "gemm_dtype", "m", "n", "k"]
    valid = raw.loc[keep, identity]
    repeat = valid.duplicated(keep="first").to_numpy()
    if not repeat.any():
        return
    positions = np.flatnonzero(keep)
    group = valid.groupby(identity, observed=True, dropna=False, sort=False).ngroup().to_numpy()
    first = pd.Series(positions).groupby(group).transform("first").to_numpy()
    _reject(
        report,
        "duplicate (framework, version, device, kernel, dtype, m, n, k) in a campaign",
        int(repeat.sum()),
        (
            f"{file}: row {p} repeats row {f}"
            for p, f in zip(positions[repeat][:5], first[repeat][:5], strict=True)
        ),
    )
    keep[positions[repeat]] = False


def _sizes_and_latency(
    raw: pd.DataFrame, keep: np.ndarray, report: LoadReport, file: str
) -> dict[str, np.ndarray]:
    """m, n, k and latency as floats; unmarks (in ``keep``) the rows where one is missing, not a number
    (sizes: not a whole one) or <= 0, rejecting them by reason."""
    numbers = {}
    for col in ("m", "n", "k", "latency"):
        values = pd.to_numeric(raw[col], errors="coerce").to_numpy(dtype=float)
        ok = np.isfinite(values) & (values > 0)
        if col != "latency":
            ok &= np.floor(values) == values
        what = "a number" if col == "latency" else "a whole number"
        _reject_mask(report, f"{col} missing, not {what} or <= 0", keep & ~ok, file)
        keep &= ok
        numbers[col] = values
    return numbers


def _known_dtypes(
    raw: pd.DataFrame, keep: np.ndarray, report: LoadReport, campaign: Campaign
) -> dict[Any, Quantization]:
    """The campaign's gemm_dtypes that :func:`quantization` knows, with what they are; unmarks (in
    ``keep``) the rows with another, rejecting them by value."""
    framework = campaign.framework.lower()
    gemm_dtypes = raw["gemm_dtype"].astype("category")
    mapping = {
        v: q
        for v in gemm_dtypes.cat.categories
        if (q := quantization(framework, str(v), campaign.gpu)) is not None
    }
    known = gemm_dtypes.isin(list(mapping)).to_numpy()
    labels = gemm_dtypes.astype(object).where(gemm_dtypes.notna(), "<missing>").to_numpy()
    for value in pd.unique(labels[keep & ~known]):
        _reject_mask(report, f"unknown gemm_dtype {value}", keep & ~known & (labels == value), campaign.file)
    keep &= known
    return mapping


def _power(raw: pd.DataFrame, keep: np.ndarray, report: LoadReport, file: str) -> np.ndarray:
    """Board power per row (NaN where not logged); unmarks (in ``keep``) the rows with a bad reading."""
    power = np.full(len(raw), np.nan)
    if "power" in raw:
        power = pd.to_numeric(raw["power"], errors="coerce").to_numpy(dtype=float)
    # A missing reading is no measurement (the row stays, without power); a present one must be real.
    bad = keep & ~np.isnan(power) & ~(np.isfinite(power) & (power > 0))
    _reject_mask(report, "power not a finite number > 0", bad, file)
    keep &= ~bad
    return power


def read_campaign(campaign: Campaign, path: Path, report: LoadReport) -> pd.DataFrame:
    """One campaign's valid rows in :data:`OUTPUT_COLUMNS` (strings categorical). Rows with missing or
    non-positive sizes or latency, another op than ``gemm``, an unknown dtype, non-positive power, or that
    repeat an earlier row's (device, kernel, dtype, m, n, k), are rejected by reason and row number."""
    file = campaign.file
    framework = campaign.framework.lower()
    raw = _read_raw(file, path)
    # Each check below unmarks the rows it rejects, in this order (the report counts a row once).
    keep = np.ones(len(raw), dtype=bool)
    numbers = _sizes_and_latency(raw, keep, report, file)
    bad = keep & (raw["op_name"].astype(object) != "gemm").to_numpy()
    _reject_mask(report, "op_name not gemm", bad, file)
    keep &= ~bad
    mapping = _known_dtypes(raw, keep, report, campaign)
    bad = keep & raw["device"].isna().to_numpy()
    _reject_mask(report, "device missing", bad, file)
    keep &= ~bad
    power = _power(raw, keep, report, file)
    _drop_repeats(raw, keep, report, file)
    rows = raw.loc[keep]
    n = len(rows)
    gemm_dtype = rows["gemm_dtype"].astype("category").cat.remove_unused_categories()
    runtime = numbers["latency"][keep]
    power_w = power[keep]
    return pd.DataFrame(
        {
            "gpu": _constant(campaign.gpu, n),
            "framework": _constant(framework, n),
            "framework_version": _constant(campaign.version, n),
            "device": pd.Categorical(rows["device"].astype(object).replace(DEVICE_ALIASES)),
            "op": _constant("linear", n),
            "batch": np.ones(n, dtype=np.int64),
            "m": numbers["m"][keep].astype(np.int64),
            "n": numbers["n"][keep].astype(np.int64),
            "k": numbers["k"][keep].astype(np.int64),
            "dtype": pd.Categorical(gemm_dtype.map({v: q.dtype for v, q in mapping.items()}).astype(object)),
            "gemm_dtype": pd.Categorical(gemm_dtype),
            "kernel": pd.Categorical(rows["kernel_source"].astype(object)),
            "quantize_activation": gemm_dtype.map(
                {v: q.quantize_activation for v, q in mapping.items()}
            ).to_numpy(dtype=float),
            "runtime_ms": runtime,
            "power_w": power_w,
            "energy_j": power_w * runtime / 1e3,
        }
    )


def concat_campaigns(frames: list[pd.DataFrame]) -> pd.DataFrame:
    """Campaign frames into one, their categorical columns united (no round trip through objects)."""
    if not frames:
        return pd.DataFrame(
            {c: pd.Series(dtype="category" if c in CATEGORICAL else float) for c in OUTPUT_COLUMNS}
        )
    data: dict[str, Any] = {}
    for col in OUTPUT_COLUMNS:
        if col in CATEGORICAL:
            parts = [pd.Categorical(f[col]) for f in frames]
            categories = pd.Index(sorted({str(v) for part in parts for v in part.categories}), dtype=object)
            codes = []
            for part in parts:
                # Code -1 (missing) takes the appended -1.
                lookup = np.append(categories.get_indexer(part.categories.astype(object)), -1)
                codes.append(lookup[part.codes])
            data[col] = pd.Categorical.from_codes(np.concatenate(codes), categories=categories)
        else:
            data[col] = np.concatenate([f[col].to_numpy() for f in frames])
    return pd.DataFrame(data)


def load_aiconfigurator_campaigns(
    paths: Mapping[str, Path],
    report: LoadReport,
    campaigns: Iterable[Campaign | tuple[str, str, str]] | None = None,
) -> pd.DataFrame:
    """Every valid row of the given campaigns (all of them by default), repeats across versions included:
    :data:`OUTPUT_COLUMNS`, strings as categoricals. For evaluation and noise studies; the training set is
    :func:`training.domains.gemm.aiconfigurator.load_aiconfigurator`."""
    files = campaign_files(paths)
    chosen = list(files) if campaigns is None else [Campaign(*c) for c in campaigns]
    unknown = [c.file for c in chosen if c not in files]
    if unknown:
        raise DatasetError(f"{DATASET}: no campaign file {', '.join(unknown)}")
    return concat_campaigns([read_campaign(c, files[c], report) for c in chosen])


def campaign_files(paths: Mapping[str, Path]) -> dict[Campaign, Path]:
    """The campaign files among a dataset's files (the ``systems/*.yaml`` spec sheets are not rows)."""
    found = {}
    for rel, path in sorted(paths.items()):
        campaign = Campaign.from_file(rel)
        if campaign is not None:
            found[campaign] = path
    return found


@dataclass
class CampaignInventory:
    rows: dict[str, int]  # gemm_dtype → rows in the file
    power: bool


def inventory(files: Mapping[Campaign, Path]) -> dict[Campaign, CampaignInventory]:
    """Rows per gemm_dtype and whether power was logged, per campaign (one column read per file)."""
    found = {}
    for campaign, path in files.items():
        names = pq.read_schema(path).names
        if "gemm_dtype" not in names:
            raise DatasetError(f"{DATASET}: {campaign.file} lacks column gemm_dtype")
        column = pq.read_table(path, columns=["gemm_dtype"], read_dictionary=["gemm_dtype"]).to_pandas()
        counts = column["gemm_dtype"].value_counts()
        found[campaign] = CampaignInventory(
            rows={str(v): int(c) for v, c in counts.items() if c > 0}, power="power" in names
        )
    return found
