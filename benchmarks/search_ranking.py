"""Does /v1/gemm/search rank configurations as measurements do? On GPPerf's RTX 4070 CUTLASS data (36
shapes, each measured with 28 kernel/tile configurations under 16 layout/alpha/beta variants), shapes are
held out five at a time (5-fold by shape, seed 0); for every held-out shape and variant the served model
searches the 28 configurations, and the measured runtime of its top-1 is compared with the measured best.

    PERFCOST_DATA_MIRROR=../shared/datasets python benchmarks/search_ranking.py
"""

from __future__ import annotations

import json
import logging
import tempfile
from pathlib import Path

import numpy as np
from sklearn.model_selection import GroupKFold

from service.core.devices import DeviceCatalog
from service.core.model import TabularModel
from service.core.settings import Settings
from service.domains.gemm import DOMAIN as GEMM
from service.domains.gemm import search as gemm_search
from service.domains.gemm.schemas import GemmSearchRequest
from training.core.publish import publish
from training.domains.gemm.data import load_gemm
from training.domains.gemm.train import fit_gemm, gemm_card

log = logging.getLogger("search_ranking")
CONFIG = ["kernel", "tile_m", "tile_n", "tile_k", "stages"]
VARIANT = ["layout", "alpha", "beta"]


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    data = load_gemm("gpperf-rtx4070", Settings())
    frame = data.frame
    shapes = frame[["m", "n", "k"]].astype(str).agg("x".join, axis=1).to_numpy()
    ratios, best = [], []
    catalog = DeviceCatalog(data.devices.values())
    for train_idx, test_idx in GroupKFold(5).split(frame, groups=shapes):
        train, test = frame.iloc[train_idx], frame.iloc[test_idx]
        fit = fit_gemm(train, data.devices)
        with tempfile.TemporaryDirectory() as tmp:
            path = publish(Path(tmp), "gemm", GEMM, gemm_card(train, data.devices, [], 0.0), fit.models)
            model = TabularModel(path, GEMM.feature_version, GEMM.columns, GEMM.at_split).load()
            for _, group in test.groupby(["m", "n", "k", *VARIANT], dropna=False):
                first = group.iloc[0]
                layer = {c: int(first[c]) for c in ("m", "n", "k")} | {
                    "op": first["op"],
                    "dtype": first["dtype"],
                }
                layer |= {c: first[c] for c in VARIANT if isinstance(first[c], str) or np.isfinite(first[c])}
                configs = [
                    {c: (v if isinstance(v, str) else int(v)) for c, v in row.items()}
                    for row in group[CONFIG].to_dict("records")
                ]
                request = GemmSearchRequest.model_validate(
                    {"workload": [layer], "devices": [first["device"]], "configurations": configs, "top": 1}
                )
                answer = gemm_search.search(request, model, catalog, max_rows=10_000)
                chosen = answer["ranked"][0]["configuration"]
                measured = group.set_index(CONFIG)["runtime_ms"]
                picked = float(measured.loc[tuple(chosen[c] for c in CONFIG)])
                ratios.append(picked / measured.min())
                best.append(picked == measured.min())
    ratios_arr = np.array(ratios)
    result = {
        "searches": len(ratios),
        "top1_within_5pct_of_measured_best": float(np.mean(ratios_arr <= 1.05)),
        "top1_is_measured_best": float(np.mean(best)),
        "median_top1_over_best": float(np.median(ratios_arr)),
        "p90_top1_over_best": float(np.quantile(ratios_arr, 0.9)),
    }
    log.info("%s", json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
