"""Noise floor of AI Configurator's GEMM latencies: the same GEMM measured again by other framework versions.

A repeat group is one GPU, framework, gemm_dtype, kernel_source and shape (m, n, k) that two or more
versions of the framework measured (one campaign each). For every measurement in a group this reports

- the spread: |latency - group mean| / group mean, and
- the leave-one-version-out error: |latency - mean of the group's other versions| / latency, i.e. the MAPE
  of predicting one version's measurement by the others'. A model trained on some campaigns cannot be
  expected to do better than this on another campaign of the same GPU and framework.

Median and mean (and p90) per GPU and dtype, per GPU, framework and dtype, per framework, and overall
(also without the rows the default training set leaves out, see training.domains.gemm.aiconfigurator);
written as JSON. The data come through the registry (PERFCOST_DATA_MIRROR or the cache).

    python benchmarks/aiconfigurator_noise.py --output reports/aiconfigurator-noise.json
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from service.core.settings import Settings
from training.core.datasets import DatasetError, fetch, get_spec
from training.core.report import LoadReport
from training.domains.gemm.aiconfigurator import DEFAULT_EXCLUDED
from training.domains.gemm.aiconfigurator_campaigns import DATASET, load_aiconfigurator_campaigns

log = logging.getLogger("aiconfigurator_noise")

GROUP = ["device", "framework", "gemm_dtype", "kernel", "m", "n", "k"]


def repeat_errors(frame: pd.DataFrame, min_versions: int = 2) -> pd.DataFrame:
    """The measurements that belong to a repeat group of at least ``min_versions`` versions, with their
    group size, spread around the group mean and leave-one-version-out error."""
    group = frame.groupby(GROUP, observed=True, sort=False).ngroup().to_numpy()
    runtime = frame["runtime_ms"].to_numpy(dtype=float)
    counts = np.bincount(group)[group]
    sums = np.bincount(group, weights=runtime)[group]
    # One row per campaign and group (campaigns are deduplicated on load), so a group's size is its
    # number of versions; guard anyway against a version appearing twice.
    versions = (
        frame.assign(_g=group).groupby("_g")["framework_version"].nunique().to_numpy()[group]
        if len(frame)
        else counts
    )
    keep = (counts >= min_versions) & (versions == counts)
    mean = sums / counts
    with np.errstate(divide="ignore", invalid="ignore"):
        others = (sums - runtime) / (counts - 1)
    out = frame.loc[keep, ["device", "framework", "gemm_dtype", "framework_version"]].astype(str)
    out["group"] = group[keep]
    out["versions"] = counts[keep]
    out["spread"] = np.abs(runtime - mean)[keep] / mean[keep]
    out["loo_ape"] = np.abs(runtime - others)[keep] / runtime[keep]
    return out.reset_index(drop=True)


def summary(rows: pd.DataFrame) -> dict[str, Any]:
    return {
        "measurements": len(rows),
        "groups": int(rows["group"].nunique()),
        "versions": sorted(rows["framework_version"].unique().tolist()),
        "spread_median": float(rows["spread"].median()),
        "spread_mean": float(rows["spread"].mean()),
        "spread_p90": float(rows["spread"].quantile(0.9)),
        "loo_mape_median": float(rows["loo_ape"].median()),
        "loo_mape_mean": float(rows["loo_ape"].mean()),
        "loo_mape_p90": float(rows["loo_ape"].quantile(0.9)),
    }


def noise_report(errors: pd.DataFrame, min_versions: int) -> dict[str, Any]:
    pairs = pd.MultiIndex.from_frame(errors[["framework", "gemm_dtype"]])
    excluded = pairs.isin(list(DEFAULT_EXCLUDED))
    by_device_dtype: dict[str, dict[str, Any]] = {}
    for key, rows in errors.groupby(["device", "gemm_dtype"]):
        device, gemm_dtype = (str(part) for part in key)
        by_device_dtype.setdefault(device, {})[gemm_dtype] = summary(rows)
    cells = [
        {
            "device": str(key[0]),
            "framework": str(key[1]),
            "gemm_dtype": str(key[2]),
            **summary(rows),
        }
        for key, rows in errors.groupby(["device", "framework", "gemm_dtype"])
    ]
    return {
        "dataset": DATASET,
        "definition": {
            "group": "same device, framework, gemm_dtype, kernel_source and (m, n, k), measured by "
            f">= {min_versions} framework versions (one campaign each)",
            "spread": "|latency - group mean| / group mean",
            "loo_mape": "|latency - mean of the group's other versions| / latency",
        },
        "overall": summary(errors),
        "overall_without_default_excluded": {
            "excluded": [f"{fw} {d}" for fw, d in DEFAULT_EXCLUDED],
            **summary(errors.loc[~excluded]),
        },
        "by_framework": {str(fw): summary(rows) for fw, rows in errors.groupby("framework")},
        "by_device_dtype": by_device_dtype,
        "by_device_framework_dtype": cells,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--output", type=Path, default=Path("reports/aiconfigurator-noise.json"), help="JSON report to write"
    )
    parser.add_argument(
        "--min-versions", type=int, default=2, help="Versions a shape needs to count as repeated"
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.min_versions < 2:
        parser.error(f"--min-versions: must be at least 2, got {args.min_versions}")
    try:
        paths = fetch(get_spec(DATASET), Settings(), progressbar=False)
    except DatasetError as exc:
        log.error("%s", exc)
        return 1
    load_report = LoadReport(DATASET)
    frame = load_aiconfigurator_campaigns(paths, load_report)
    load_report.rows = len(frame)
    load_report.log()
    errors = repeat_errors(frame, args.min_versions)
    if errors.empty:
        log.error("no shape was measured by %d or more versions", args.min_versions)
        return 1
    report = noise_report(errors, args.min_versions)
    report["rows_loaded"] = len(frame)
    report["rejected"] = load_report.rejected
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(report, indent=1) + "\n")
    overall = report["overall"]
    log.info(
        "%d measurements in %d repeat groups: spread median %.2f%% mean %.2f%%; leave-one-version-out MAPE "
        "median %.2f%% mean %.2f%%",
        overall["measurements"],
        overall["groups"],
        100 * overall["spread_median"],
        100 * overall["spread_mean"],
        100 * overall["loo_mape_median"],
        100 * overall["loo_mape_mean"],
    )
    for device, dtypes in report["by_device_dtype"].items():
        for gemm_dtype, s in dtypes.items():
            log.info(
                "%-46s %-10s %8d  spread %6.2f%% / %6.2f%%  loo MAPE %6.2f%% / %6.2f%%  (median / mean)",
                device,
                gemm_dtype,
                s["measurements"],
                100 * s["spread_median"],
                100 * s["spread_mean"],
                100 * s["loo_mape_median"],
                100 * s["loo_mape_mean"],
            )
    log.info("wrote %s", args.output)
    return 0


if __name__ == "__main__":
    sys.exit(main())
