"""``perfcost score`` end to end: rows per second, peak memory, and equality with the API.

Writes a table of ``--rows`` random GEMM instances (four devices, one not trained on; a price on 30% of
rows) as Parquet, runs ``perfcost score`` on it as a user would (a subprocess, a 2-worker LocalCluster
unless told otherwise) while sampling the resident memory of its whole process tree every 0.2 s, then
predicts ``--sample`` of the rows through ``POST /v1/gemm/predict`` (the app in process) and checks that
every value, bound, reason and OOD flag is identical. Run it ``--repeats`` times; medians are printed.

    python benchmarks/bench_score.py --model-dir /tmp/models --rows 10000000 --repeats 3
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import math
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import psutil
import pyarrow.parquet as pq
from fastapi.testclient import TestClient

log = logging.getLogger("bench_score")
DEVICES = np.array(["NVIDIA A100-PCIE-40GB", "Tesla T4", "NVIDIA GeForce RTX 4070", "NVIDIA H100 80GB HBM3"])
INTERVALS = ("runtime_ms", "power_w", "energy_j", "utilization", "cost_usd", "co2_g")


def write_table(path: Path, rows: int, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame(
        {
            "m": rng.integers(16, 8192, rows),
            "n": rng.integers(16, 8192, rows),
            "k": rng.integers(16, 8192, rows),
            "batch": rng.integers(1, 4, rows),
            "op": rng.choice(["gemm", "bmm", "linear"], rows),
            "dtype": rng.choice(["float32", "float16"], rows),
            "device": DEVICES[rng.integers(0, len(DEVICES), rows)],
            "price_per_hour_usd": np.where(rng.random(rows) < 0.3, 1.25, np.nan),
        }
    )
    frame.to_parquet(path, row_group_size=250_000)


def tree_rss(pid: int) -> float:
    """Resident memory of a process and all its descendants, MiB."""
    try:
        root = psutil.Process(pid)
        procs = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return 0.0
    total = 0
    for proc in procs:
        with contextlib.suppress(psutil.NoSuchProcess):
            total += proc.memory_info().rss
    return total / 2**20


def run_score(table: Path, out: Path, model_dir: Path, extra: list[str]) -> dict[str, Any]:
    env = {**os.environ, "PERFCOST_MODEL_DIR": str(model_dir)}
    command = [
        str(Path(sys.executable).with_name("perfcost")),
        "score",
        str(table),
        str(out),
        "--overwrite",
        *extra,
    ]
    started = time.perf_counter()
    proc = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    peak = 0.0

    def sample() -> None:
        nonlocal peak
        while proc.poll() is None:
            peak = max(peak, tree_rss(proc.pid))
            time.sleep(0.2)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    _, stderr = proc.communicate()
    seconds = time.perf_counter() - started
    sampler.join()
    if proc.returncode != 0:
        raise SystemExit(f"perfcost score failed ({proc.returncode}):\n{stderr.decode()[-3000:]}")
    manifest = json.loads((out / "_perfcost_score.json").read_text())
    return {"seconds": seconds, "rows_per_s": manifest["rows"] / seconds, "peak_rss_mib": peak, **manifest}


def same(a: Any, b: Any) -> bool:
    return a == b or (isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b))


def compare_with_api(table: Path, out: Path, model_dir: Path, sample: int) -> int:
    """Rows of the sample whose scored values differ from the API's answer (0: identical)."""
    from service.app import create_app
    from service.core.settings import Settings

    given = pq.read_table(table).slice(0, sample).to_pandas()
    scored = pd.read_parquet(out, filters=[("row", "<", sample)]).set_index("row").loc[list(range(sample))]
    instances = [
        {k: v for k, v in rec.items() if not (isinstance(v, float) and math.isnan(v))}
        for rec in given.to_dict("records")
    ]
    with TestClient(create_app(Settings(model_dir=model_dir))) as client:
        response = client.post("/v1/gemm/predict", json={"instances": instances})
    response.raise_for_status()
    differing = 0
    for (_, row), answer in zip(scored.iterrows(), response.json()["predictions"], strict=True):
        ok = all(
            same(row[name], (answer.get(name) or {}).get("value", float("nan")))
            and same(row[f"{name}_low"], (answer.get(name) or {}).get("low", float("nan")))
            and same(row[f"{name}_high"], (answer.get(name) or {}).get("high", float("nan")))
            for name in INTERVALS
        )
        # The JSON of the API's object on every row ("{}" where it is empty); a null would be a difference.
        unavailable = row["unavailable"]
        ok &= isinstance(unavailable, str) and json.loads(unavailable) == answer["unavailable"]
        ok &= list(row["ood_reasons"]) == answer["ood_reasons"]
        ok &= bool(row["out_of_distribution"]) == answer["out_of_distribution"]
        differing += not ok
    return differing


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model-dir", type=Path, required=True)
    parser.add_argument("--rows", type=int, default=10_000_000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--sample", type=int, default=10_000)
    parser.add_argument("--work-dir", type=Path, default=Path(tempfile.gettempdir()) / "perfcost-bench-score")
    parser.add_argument("score_args", nargs="*", help="passed to perfcost score (after --)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    args.work_dir.mkdir(parents=True, exist_ok=True)
    table = args.work_dir / f"gemm-{args.rows}.parquet"
    if not table.exists():
        log.info("writing %d rows to %s", args.rows, table)
        write_table(table, args.rows)
    out = args.work_dir / "scored"
    runs = []
    for i in range(args.repeats):
        runs.append(run_score(table, out, args.model_dir, args.score_args))
        r = runs[-1]
        log.info(
            "run %d: %d rows in %.1f s = %.0f rows/s, peak RSS %.0f MiB (load %.2f)",
            i + 1,
            r["rows"],
            r["seconds"],
            r["rows_per_s"],
            r["peak_rss_mib"],
            os.getloadavg()[0],
        )
    differing = compare_with_api(table, out, args.model_dir, min(args.sample, args.rows))
    log.info(
        "median of %d runs: %.0f rows/s, peak RSS %.0f MiB; %d of %d sampled rows differ from the API",
        len(runs),
        statistics.median(r["rows_per_s"] for r in runs),
        statistics.median(r["peak_rss_mib"] for r in runs),
        differing,
        min(args.sample, args.rows),
    )
    shutil.rmtree(out, ignore_errors=True)


if __name__ == "__main__":
    main()
