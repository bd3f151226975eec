"""AI Configurator's GEMMs: which campaigns and rows make the default training set.

Reading the campaign files (their layout, what each ``gemm_dtype`` is, row validation) is
:mod:`training.domains.gemm.aiconfigurator_campaigns`; this module chooses among them.

Several versions of a framework measured the same shapes on the same GPU: these repeats are the noise
floor (``benchmarks/aiconfigurator_noise.py``), not more GEMMs, so the default training set takes each
(GPU, framework, dtype) from one campaign only. ``load_aiconfigurator_campaigns`` gives every campaign.

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

import zlib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from packaging.version import InvalidVersion, Version

from training.core.datasets import DatasetError
from training.core.report import LoadReport
from training.domains.gemm.aiconfigurator_campaigns import (
    CATEGORICAL,
    DATASET,
    Campaign,
    CampaignInventory,
    campaign_files,
    concat_campaigns,
    inventory,
    read_campaign,
)

# Under training.core.models' "large data" threshold (100k rows), past which LightGBM grows 2,047-leaf trees
# meant for uci-sgemm's tile grid: at 150,000 rows `perfcost train gemm --dataset aiconfigurator-gemm` took
# 11.5 min on 2 cores (2.7 min of it exporting those trees); 3,000+ rows per (GPU, dtype) remain.
MAX_DEFAULT_ROWS = 96_000
SHAPE_SEED = 20_260_501
# (framework, gemm_dtype) kept out of the default training set, with the reason.
DEFAULT_EXCLUDED: dict[tuple[str, str], str] = {
    ("vllm", "fp8_block"): (
        "timed outside a CUDA graph (collector/vllm/collect_gemm.py: use_cuda_graph=gemm_type != "
        "'fp8_block'): 50-280 us of host dispatch on most campaigns"
    ),
}


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
    frame = concat_campaigns(frames)
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


def _campaign_rows(
    kept: pd.DataFrame, frame: pd.DataFrame, chosen: Mapping[tuple[str, str, str], Campaign]
) -> list[dict[str, Any]]:
    """Per chosen (GPU, framework, gemm_dtype): its campaign, whether power came with it, and the valid rows
    of the campaign (``frame``) against the rows the default set keeps (``kept``)."""
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
    return campaigns


def _quantization_rows(kept: pd.DataFrame) -> list[dict[str, Any]]:
    """What each (framework, gemm_dtype) of the kept rows became (dtype, quantize_activation), and where."""
    combos = kept.groupby(["framework", "gemm_dtype", "dtype", "quantize_activation"])["device"].unique()
    return [
        {
            "framework": str(fw),
            "gemm_dtype": str(gemm_dtype),
            "dtype": str(dtype),
            "quantize_activation": float(q),
            "devices": sorted(str(d) for d in devices),
        }
        for fw, gemm_dtype, dtype, q, devices in combos.reset_index().itertuples(index=False)
    ]


def _describe(
    kept: pd.DataFrame,
    frame: pd.DataFrame,
    chosen: Mapping[tuple[str, str, str], Campaign],
    files: Mapping[Campaign, Path],
    max_rows: int,
) -> dict[str, Any]:
    rows_by_device_dtype: dict[str, dict[str, int]] = {}
    for device, gemm_dtype, count in (
        kept.groupby(["device", "gemm_dtype"]).size().reset_index().itertuples(index=False)
    ):
        rows_by_device_dtype.setdefault(str(device), {})[str(gemm_dtype)] = int(count)
    power = kept.loc[kept["power_w"].notna()].groupby("device").size()
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
        "campaigns": _campaign_rows(kept, frame, chosen),
        "rows": len(kept),
        "rows_with_power": int(kept["power_w"].notna().sum()),
        "rows_by_device_dtype": rows_by_device_dtype,
        "power_rows_by_device": {str(d): int(c) for d, c in power.items()},
        "quantization": _quantization_rows(kept),
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
