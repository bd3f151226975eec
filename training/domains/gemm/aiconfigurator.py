"""AI Configurator's per-GEMM latencies (ai-dynamo/aiconfigurator, Apache-2.0) as rows of the GEMM table.

The dataset holds one parquet file per measurement campaign (a GPU, a serving framework and one of its
versions): ``<gpu>/gemm/<framework>/<version>/gemm_perf.parquet``. A row is one Linear op y = x W^T with
x [m, k] the activation and W [n, k] the weight (k is the reduction), timed alone: here ``op="linear"``,
``batch=1`` and m, n, k exactly as measured, ``runtime_ms`` the latency, ``power_w`` the mean board power
where the campaign logged it (energy = power x latency). ``framework``, ``framework_version``, ``kernel``
(the collector's ``kernel_source``) and ``quantize_activation`` (1.0 when the timed op also quantizes the
BF16 activation, see :data:`GEMM_DTYPES`) describe the configuration.

Several versions of a framework measured the same shapes on the same GPU: these repeats are the noise
floor (``benchmarks/aiconfigurator_noise.py``), not more GEMMs, so the default training set takes each
(GPU, framework, dtype) from one campaign only. :func:`load_aiconfigurator_campaigns` gives every campaign.

Default training set (:func:`load_aiconfigurator`, described by :func:`describe_default_set`):

1. Campaign: for each (GPU, framework, gemm_dtype), the campaign that logged power if one has that dtype
   (so that power and energy can be learnt on B200 and GB200), else the newest framework version that has
   it (then the one with more rows). Every GPU and every dtype of the raw files is kept.
2. Left out: vLLM's ``fp8_block`` rows. Its collector times them outside a CUDA graph
   (``use_cuda_graph=gemm_type != "fp8_block"`` in collector/vllm/collect_gemm.py), so most campaigns
   carry 50-280 us of host dispatch on every GEMM (B200 vLLM 0.22.0: 146 us for the smallest one, TRT-LLM
   4 us); every GPU that has them has ``fp8_block`` from TRT-LLM or SGLang too.
3. Thinning to at most :data:`MAX_DEFAULT_ROWS` rows: the budget is split evenly over the (GPU, gemm_dtype)
   pairs by water-filling (a pair with fewer rows keeps them all and leaves the rest to the others), each
   pair's share the same way over its frameworks, and within one campaign and dtype the rows whose shape
   hash (splitmix64 of m, n, k, seeded with :data:`SHAPE_SEED` and the framework's CRC-32) is smallest are
   kept: a deterministic uniform sample of shapes, the same shapes across the GPUs and dtypes of one
   framework where their grids agree, other shapes for each framework.
"""

from __future__ import annotations

import re
import zlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
from packaging.version import InvalidVersion, Version

from training.core.datasets import DatasetError
from training.core.report import LoadReport

DATASET = "aiconfigurator-gemm"
# Under training.models' "large data" threshold (100k rows), past which LightGBM grows 2,047-leaf trees
# meant for uci-sgemm's tile grid: at 150,000 rows `perfcost train gemm --dataset aiconfigurator-gemm` took
# 11.5 min on 2 cores (2.7 min of it exporting those trees); 3,000+ rows per (GPU, dtype) remain.
MAX_DEFAULT_ROWS = 96_000
SHAPE_SEED = 20_260_501
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
# (framework, gemm_dtype) kept out of the default training set, with the reason.
DEFAULT_EXCLUDED: dict[tuple[str, str], str] = {
    ("vllm", "fp8_block"): (
        "timed outside a CUDA graph (collector/vllm/collect_gemm.py: use_cuda_graph=gemm_type != "
        "'fp8_block'): 50-280 us of host dispatch on most campaigns"
    ),
}

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


def read_campaign(campaign: Campaign, path: Path, report: LoadReport) -> pd.DataFrame:
    """One campaign's valid rows in :data:`OUTPUT_COLUMNS` (strings categorical). Rows with missing or
    non-positive sizes or latency, another op than ``gemm``, an unknown dtype, non-positive power, or that
    repeat an earlier row's (device, kernel, dtype, m, n, k), are rejected by reason and row number."""
    file = campaign.file
    framework = campaign.framework.lower()
    raw = _read_raw(file, path)
    keep = np.ones(len(raw), dtype=bool)
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
    bad = keep & (raw["op_name"].astype(object) != "gemm").to_numpy()
    _reject_mask(report, "op_name not gemm", bad, file)
    keep &= ~bad
    gemm_dtypes = raw["gemm_dtype"].astype("category")
    mapping = {
        v: q
        for v in gemm_dtypes.cat.categories
        if (q := quantization(framework, str(v), campaign.gpu)) is not None
    }
    known = gemm_dtypes.isin(list(mapping)).to_numpy()
    labels = gemm_dtypes.astype(object).where(gemm_dtypes.notna(), "<missing>").to_numpy()
    for value in pd.unique(labels[keep & ~known]):
        _reject_mask(report, f"unknown gemm_dtype {value}", keep & ~known & (labels == value), file)
    keep &= known
    bad = keep & raw["device"].isna().to_numpy()
    _reject_mask(report, "device missing", bad, file)
    keep &= ~bad
    power = np.full(len(raw), np.nan)
    if "power" in raw:
        power = pd.to_numeric(raw["power"], errors="coerce").to_numpy(dtype=float)
    # A missing reading is no measurement (the row stays, without power); a present one must be real.
    bad = keep & ~np.isnan(power) & ~(np.isfinite(power) & (power > 0))
    _reject_mask(report, "power not a finite number > 0", bad, file)
    keep &= ~bad
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


def _concat(frames: list[pd.DataFrame]) -> pd.DataFrame:
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
    :func:`load_aiconfigurator`."""
    files = campaign_files(paths)
    chosen = list(files) if campaigns is None else [Campaign(*c) for c in campaigns]
    unknown = [c.file for c in chosen if c not in files]
    if unknown:
        raise DatasetError(f"{DATASET}: no campaign file {', '.join(unknown)}")
    return _concat([read_campaign(c, files[c], report) for c in chosen])


def _version_key(version: str) -> tuple[int, Version]:
    try:
        return 1, Version(version)
    except InvalidVersion:
        return 0, Version("0")


def _splitmix64(x: np.ndarray) -> np.ndarray:
    with np.errstate(over="ignore"):
        x = x + np.uint64(0x9E3779B97F4A7C15)
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def shape_hash(
    m: np.ndarray, n: np.ndarray, k: np.ndarray, seed: int | np.ndarray = SHAPE_SEED
) -> np.ndarray:
    """A seeded 64-bit hash of each (m, n, k): the order in which the default set keeps shapes."""
    h = _splitmix64(np.asarray(k, dtype=np.uint64) ^ np.asarray(seed, dtype=np.uint64))
    h = _splitmix64(h ^ np.asarray(n, dtype=np.uint64))
    return _splitmix64(h ^ np.asarray(m, dtype=np.uint64))


def water_fill(sizes: Mapping[Any, int], budget: int) -> dict[Any, int]:
    """Split ``budget`` evenly over keys, none above its size; what a small key leaves goes to the rest
    (the remainder of the division to the first keys in sorted order)."""
    alloc: dict[Any, int] = {}
    remaining = dict(sizes)
    left = budget
    while remaining:
        level = left // len(remaining)
        small = {key: size for key, size in remaining.items() if size <= level}
        if not small:
            extra = left - level * len(remaining)
            for i, key in enumerate(sorted(remaining)):
                alloc[key] = level + (1 if i < extra else 0)
            break
        for key, size in small.items():
            alloc[key] = size
            left -= size
            del remaining[key]
    return alloc


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


def choose_campaigns(found: Mapping[Campaign, CampaignInventory]) -> dict[tuple[str, str, str], Campaign]:
    """(gpu, framework, gemm_dtype) → the campaign the default set takes it from (module docstring)."""
    candidates: dict[tuple[str, str, str], list[Campaign]] = {}
    for campaign, inv in found.items():
        for gemm_dtype in inv.rows:
            framework = campaign.framework.lower()
            if (framework, gemm_dtype) not in DEFAULT_EXCLUDED:
                candidates.setdefault((campaign.gpu, framework, gemm_dtype), []).append(campaign)
    return {
        key: max(
            options,
            key=lambda c: (found[c].power, _version_key(c.version), found[c].rows[key[2]], c.version),
        )
        for key, options in sorted(candidates.items())
    }


RULE = (
    "campaign per (GPU, framework, gemm_dtype): the one that logged power if any has that dtype, else the "
    "newest framework version that has it (then more rows)",
    *(f"left out: {fw} {d} ({why})" for (fw, d), why in DEFAULT_EXCLUDED.items()),
    "thinning: at most max_rows rows, split evenly over (GPU, gemm_dtype) pairs by water-filling, each "
    "pair's share over its frameworks the same way; within a campaign and dtype the rows with the "
    "smallest splitmix64 hash of (m, n, k), seeded with shape_seed ^ crc32(framework), are kept",
)


@dataclass
class DefaultSet:
    frame: pd.DataFrame
    description: dict[str, Any]


def default_training_set(
    paths: Mapping[str, Path], report: LoadReport, max_rows: int = MAX_DEFAULT_ROWS
) -> DefaultSet:
    """The default training set (module docstring) and a JSON-able description of what it holds."""
    files = campaign_files(paths)
    if not files:
        raise DatasetError(
            f"{DATASET}: no <gpu>/gemm/<framework>/<version>/gemm_perf.parquet among the files"
        )
    chosen = choose_campaigns(inventory(files))
    per_campaign: dict[Campaign, list[str]] = {}
    for (_, _, gemm_dtype), campaign in chosen.items():
        per_campaign.setdefault(campaign, []).append(gemm_dtype)
    frames = []
    for campaign in sorted(per_campaign):
        rows = read_campaign(campaign, files[campaign], report)
        frames.append(rows.loc[rows["gemm_dtype"].isin(per_campaign[campaign])])
    frame = _concat(frames)
    by_triple = frame.groupby(["gpu", "gemm_dtype", "framework"], observed=True)
    sizes: dict[tuple[str, str, str], int] = {
        (str(g), str(d), str(fw)): int(v)
        for g, d, fw, v in by_triple.size().reset_index().itertuples(index=False)
    }
    pair_sizes: dict[tuple[str, str], int] = {}
    for (gpu, gemm_dtype, _), size in sizes.items():
        pair_sizes[(gpu, gemm_dtype)] = pair_sizes.get((gpu, gemm_dtype), 0) + size
    quota: dict[tuple[str, str, str], int] = {}
    for (gpu, gemm_dtype), budget in water_fill(pair_sizes, max_rows).items():
        shares = {fw: size for (g, d, fw), size in sizes.items() if (g, d) == (gpu, gemm_dtype)}
        for fw, share in water_fill(shares, budget).items():
            quota[(gpu, gemm_dtype, fw)] = share
    # ngroup numbers the groups in sorted key order, the order of ``sizes``.
    group = by_triple.ngroup().to_numpy()
    row_quota = np.array([quota[key] for key in sizes], dtype=np.int64)[group]
    salt = frame["framework"].cat.rename_categories(lambda fw: zlib.crc32(fw.encode())).astype(np.uint64)
    hashes = shape_hash(
        frame["m"].to_numpy(), frame["n"].to_numpy(), frame["k"].to_numpy(), SHAPE_SEED ^ salt.to_numpy()
    )
    order = np.lexsort((hashes, group))
    sorted_group = group[order]
    starts = np.flatnonzero(np.r_[True, sorted_group[1:] != sorted_group[:-1]]) if len(order) else order
    rank = np.empty(len(order), dtype=np.int64)
    rank[order] = np.arange(len(order)) - np.repeat(starts, np.diff(np.r_[starts, len(order)]))
    kept = frame.loc[rank < row_quota].reset_index(drop=True)
    for col in CATEGORICAL:
        kept[col] = kept[col].astype(object)
    return DefaultSet(frame=kept, description=_describe(kept, frame, chosen, files, max_rows))


def _describe(
    kept: pd.DataFrame,
    frame: pd.DataFrame,
    chosen: Mapping[tuple[str, str, str], Campaign],
    files: Mapping[Campaign, Path],
    max_rows: int,
) -> dict[str, Any]:
    available = frame.groupby(["gpu", "framework", "framework_version", "gemm_dtype"], observed=True).size()
    taken = kept.groupby(["gpu", "framework", "framework_version", "gemm_dtype"]).size()
    devices = kept.groupby("gpu")["device"].first().to_dict()
    campaigns = []
    for (gpu, fw, gemm_dtype), c in sorted(chosen.items()):
        key = (gpu, c.framework, c.version, gemm_dtype)
        campaigns.append(
            {
                "gpu": gpu,
                "device": devices.get(gpu),
                "framework": fw,
                "version": c.version,
                "file": c.file,
                "gemm_dtype": gemm_dtype,
                "power": bool(
                    kept.loc[
                        (kept["gpu"] == gpu) & (kept["gemm_dtype"] == gemm_dtype) & (kept["framework"] == fw),
                        "power_w",
                    ]
                    .notna()
                    .any()
                ),
                "rows_valid": int(available.get(key, 0)),
                "rows_kept": int(taken.get(key, 0)),
            }
        )
    rows_by_device_dtype: dict[str, dict[str, int]] = {}
    for device, gemm_dtype, count in (
        kept.groupby(["device", "gemm_dtype"]).size().reset_index().itertuples(index=False)
    ):
        rows_by_device_dtype.setdefault(str(device), {})[str(gemm_dtype)] = int(count)
    power = kept.loc[kept["power_w"].notna()].groupby("device").size()
    combos = kept.groupby(["framework", "gemm_dtype", "dtype", "quantize_activation"])["device"].unique()
    quantization = [
        {
            "framework": str(fw),
            "gemm_dtype": str(gemm_dtype),
            "dtype": str(dtype),
            "quantize_activation": float(q),
            "devices": sorted(str(d) for d in devices),
        }
        for fw, gemm_dtype, dtype, q, devices in combos.reset_index().itertuples(index=False)
    ]
    return {
        "dataset": DATASET,
        "rule": list(RULE),
        "max_rows": max_rows,
        "shape_seed": SHAPE_SEED,
        "excluded": [
            {"framework": fw, "gemm_dtype": d, "reason": why} for (fw, d), why in DEFAULT_EXCLUDED.items()
        ],
        "campaigns_read": sorted({c.file for c in chosen.values()}),
        "campaign_files": len(files),
        "campaigns": campaigns,
        "rows": len(kept),
        "rows_with_power": int(kept["power_w"].notna().sum()),
        "rows_by_device_dtype": rows_by_device_dtype,
        "power_rows_by_device": {str(d): int(c) for d, c in power.items()},
        "quantization": quantization,
    }


def load_aiconfigurator(paths: dict[str, Path], report: LoadReport) -> pd.DataFrame:
    """The default training set of AI Configurator's GEMMs (module docstring), as a GEMM loader; what it
    chose goes into the report (and so into the model card)."""
    chosen = default_training_set(paths, report)
    report.selection = chosen.description
    return chosen.frame


def describe_default_set(paths: Mapping[str, Path], max_rows: int = MAX_DEFAULT_ROWS) -> dict[str, Any]:
    """What the default training set holds (campaigns, rule, rows per GPU x dtype), JSON-able: the model
    card's record of the choice."""
    return default_training_set(paths, LoadReport(DATASET), max_rows).description
