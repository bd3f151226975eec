"""Load and soak: many concurrent clients sending a mix of GEMM, CPU and MLIR requests over loopback.

Starts uvicorn on 127.0.0.1 over a model directory holding ``gemm``, ``cpu`` and ``mlir`` models (MLIR
requests are left out of the mix when there is no ``mlir`` model), runs the mix for
``--seconds`` with ``--clients`` concurrent clients, and reports per route: requests, errors, throughput,
p50/p99 latency; plus the server's RSS after warm-up and at the end. With ``--reload-every S`` it also
publishes a new version of the GEMM model (a copy of the newest, under a new name) and calls
``POST /v1/admin/reload`` every S seconds, then checks that every response named a published version.
All traffic stays on loopback; the run is bounded in time and stops by itself.

    python benchmarks/load_service.py --model-dir /tmp/models --seconds 60 --clients 64 [--reload-every 5]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import random
import shutil
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import httpx
import numpy as np

log = logging.getLogger("load")

TOKEN = "load-test-token"
GEMM = {"m": 1024, "n": 1024, "k": 1024, "device": "NVIDIA A100-PCIE-40GB"}
CPU = {
    "vendor": "Intel",
    "model_name": "Intel Xeon Platinum 8380",
    "nominal_mhz": 2300,
    "max_mhz": 3400,
    "cores_per_socket": 40,
    "sockets": 2,
}


def requests_mix(rng: random.Random, mlir: list[str]) -> tuple[str, str, dict]:
    """One request: 35% GEMM single, 15% GEMM batch of 100, 25% CPU single, 10% CPU batch of 20, and
    10% one ~10 KB MLIR program, 5% a batch of 5 programs (their share goes to GEMM without MLIR)."""
    choice = rng.random()
    if mlir and choice >= 0.85:
        if choice < 0.95:
            return "mlir single", "/v1/mlir/predict", {"instances": [{"mlir": mlir[0]}]}
        return "mlir batch5", "/v1/mlir/predict", {"instances": [{"mlir": t} for t in mlir[:5]]}
    if choice < 0.35 or choice >= 0.85:
        return (
            "gemm single",
            "/v1/gemm/predict",
            {"instances": [{**GEMM, "k": rng.choice((256, 1024, 4096))}]},
        )
    if choice < 0.5:
        batch = [{**GEMM, "m": rng.randint(16, 8192), "k": rng.randint(16, 8192)} for _ in range(100)]
        return "gemm batch100", "/v1/gemm/predict", {"instances": batch}
    if choice < 0.75:
        return "cpu single", "/v1/cpu/predict", {"instances": [CPU], "suite": "Int_rate"}
    return "cpu batch20", "/v1/cpu/predict", {"instances": [CPU] * 20, "suite": "FP_rate"}


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def republish(model_dir: Path, index: int) -> str:
    """A new GEMM version: the newest one copied under a later name, its card's version updated."""
    versions = sorted(p for p in (model_dir / "gemm").iterdir() if p.is_dir() and not p.name.startswith("."))
    name = f"{versions[-1].name.split('-load')[0]}-load{index:04d}"
    staging = model_dir / "gemm" / f".staging-{name}"
    shutil.copytree(versions[-1], staging)
    card = json.loads((staging / "card.json").read_text())
    card["version"] = name
    (staging / "card.json").write_text(json.dumps(card))
    os.rename(staging, model_dir / "gemm" / name)
    return name


async def run(args: argparse.Namespace, url: str, published: set[str], mlir: list[str]) -> dict:
    latencies: dict[str, list[float]] = defaultdict(list)
    errors: dict[str, list[str]] = defaultdict(list)
    versions_seen: set[str] = set()
    deadline = time.monotonic() + args.seconds
    limits = httpx.Limits(max_connections=args.clients, max_keepalive_connections=args.clients)
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=30) as client:

        async def worker(seed: int) -> None:
            rng = random.Random(seed)
            while time.monotonic() < deadline:
                route, path, body = requests_mix(rng, mlir)
                started = time.perf_counter()
                try:
                    r = await client.post(path, json=body)
                except httpx.HTTPError as exc:
                    errors[route].append(repr(exc))
                    continue
                latencies[route].append(time.perf_counter() - started)
                if r.status_code != 200:
                    errors[route].append(f"{r.status_code}: {r.text[:200]}")
                elif path.startswith("/v1/gemm"):  # the model that is republished and reloaded
                    versions_seen.add(r.json()["version"])

        async def reloader() -> None:
            index = 0
            while time.monotonic() < deadline - args.reload_every:
                await asyncio.sleep(args.reload_every)
                index += 1
                published.add(await asyncio.to_thread(republish, args.model_dir, index))
                r = await client.post("/v1/admin/reload", headers={"Authorization": f"Bearer {TOKEN}"})
                if r.status_code != 200:
                    errors["reload"].append(f"{r.status_code}: {r.text[:200]}")

        tasks = [worker(i) for i in range(args.clients)]
        if args.reload_every:
            tasks.append(reloader())
        await asyncio.gather(*tasks)

    report: dict[str, Any] = {}
    for route, values in sorted(latencies.items()):
        ms = np.array(values) * 1e3
        report[route] = {
            "requests": len(values),
            "errors": len(errors[route]),
            "per_second": round(len(values) / args.seconds, 1),
            "p50_ms": round(float(np.percentile(ms, 50)), 2),
            "p99_ms": round(float(np.percentile(ms, 99)), 2),
        }
    report["errors_total"] = sum(len(v) for v in errors.values())
    report["error_examples"] = {k: v[:3] for k, v in errors.items() if v}
    report["versions_seen"] = sorted(versions_seen)
    report["unpublished_versions_seen"] = sorted(versions_seen - published)
    return report


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--model-dir", type=Path, required=True, help="copied first; the original is untouched"
    )
    parser.add_argument("--seconds", type=float, default=60)
    parser.add_argument("--clients", type=int, default=64)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument(
        "--reload-every", type=float, default=0, help="seconds between publish + reload (0: off)"
    )
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)

    work = Path(f"/tmp/perfcost-load-{os.getpid()}")
    shutil.copytree(args.model_dir, work)
    args.model_dir = work
    published = {p.name for p in (work / "gemm").iterdir() if p.is_dir()}

    sys.path.insert(0, str(Path(__file__).parent))
    from bench_service import free_port, mlir_programs, start_server  # noqa: PLC0415 - sibling script

    os.environ["PERFCOST_ADMIN_TOKEN"] = TOKEN
    os.environ["PERFCOST_MAX_BATCH"] = "10000"
    # The first is a ~10 KB program; the others, smaller ones, fill the batches.
    mlir = mlir_programs(10_000, 2_000, 4_000, 6_000, 8_000) if (work / "mlir").is_dir() else []
    port = free_port()
    proc = start_server(work, port)
    url = f"http://127.0.0.1:{port}"
    try:
        warm = argparse.Namespace(**{**vars(args), "seconds": 3, "reload_every": 0})
        asyncio.run(run(warm, url, published, mlir))
        rss_start = rss_mib(proc.pid)
        report = asyncio.run(run(args, url, published, mlir))
        report["rss_mib_after_warmup"] = round(rss_start, 1)
        report["rss_mib_end"] = round(rss_mib(proc.pid), 1)
        report["rss_growth"] = round(report["rss_mib_end"] / rss_start - 1, 4)
        report["load_average"] = os.getloadavg()
    finally:
        proc.terminate()
        proc.wait(timeout=20)
        shutil.rmtree(work, ignore_errors=True)
    log.info(json.dumps(report, indent=1))
    if args.json:
        args.json.write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
