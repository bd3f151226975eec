"""POST /v1/gemm/search over real uvicorn: median latency of a 12-layer transformer workload (BERT-base
shapes, fp16, sequence 512, batch 4) over the whole device catalog, and of the same workload across a
space of CUTLASS-like tile configurations on one device.

    python benchmarks/bench_search.py --model-dir DIR [--repeats 20]
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import sys
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_service import free_port, start_server  # noqa: E402

log = logging.getLogger("bench_search")

TOKENS, HIDDEN, HEADS, FFN = 2048, 768, 12, 3072
# One encoder layer's GEMMs (QKV projection, scores, context, output projection, two FFN), 12 layers.
TRANSFORMER = [
    {"op": "linear", "m": TOKENS, "n": 3 * HIDDEN, "k": HIDDEN, "dtype": "float16", "count": 12},
    {"op": "bmm", "batch": 4 * HEADS, "m": 512, "n": 512, "k": 64, "dtype": "float16", "count": 12},
    {"op": "bmm", "batch": 4 * HEADS, "m": 512, "n": 64, "k": 512, "dtype": "float16", "count": 12},
    {"op": "linear", "m": TOKENS, "n": HIDDEN, "k": HIDDEN, "dtype": "float16", "count": 12},
    {"op": "linear", "m": TOKENS, "n": FFN, "k": HIDDEN, "dtype": "float16", "count": 12},
    {"op": "linear", "m": TOKENS, "n": HIDDEN, "k": FFN, "dtype": "float16", "count": 12},
]
TILES = [
    {"tile_m": m, "tile_n": n, "tile_k": k} for m in (64, 128, 256) for n in (64, 128, 256) for k in (32, 64)
]


def timed(client: httpx.Client, url: str, body: dict, repeats: int) -> tuple[list[float], dict]:
    answer = client.post(url, json=body).json()  # warm-up; also the answer shown
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        r = client.post(url, json=body)
        times.append((time.perf_counter() - started) * 1e3)
        r.raise_for_status()
    return times, answer


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model-dir", type=Path, required=True)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--device", default="NVIDIA A100-SXM4-40GB", help="device of the tile-space search")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    port = free_port()
    proc = start_server(args.model_dir, port)
    url = f"http://127.0.0.1:{port}/v1/gemm/search"
    try:
        with httpx.Client(timeout=60) as client:
            catalog, answer = timed(client, url, {"workload": TRANSFORMER}, args.repeats)
            tiles, _ = timed(
                client,
                url,
                {"workload": TRANSFORMER, "devices": [args.device], "configurations": TILES},
                args.repeats,
            )
    finally:
        proc.terminate()
        proc.wait(10)
    result = {
        "catalog_candidates": answer["candidates_considered"],
        "catalog_median_ms": statistics.median(catalog),
        "catalog_p90_ms": sorted(catalog)[int(0.9 * (len(catalog) - 1))],
        "tile_candidates": len(TILES),
        "tiles_median_ms": statistics.median(tiles),
        "top3": [(c["device"], round(c["time_ms"]["value"], 3)) for c in answer["ranked"][:3]],
    }
    log.info("%s", json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
