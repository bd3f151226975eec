"""Latency of the prediction service over loopback HTTP, next to the bare model's in-process time.

Starts uvicorn on 127.0.0.1 over a published model directory, then:
1. single-instance ``POST /v1/gemm/predict`` with intervals on, from N concurrent clients → p50/p99,
   from a lean keep-alive client (asyncio streams) and, alternating with it, from httpx;
2. one 10,000-instance batch, end to end → seconds;
3. the same rows predicted in-process by the loaded model (features + trees, no HTTP) → the ratio;
4. when the directory holds an ``mlir`` model: one ~10 KB MLIR program (from the committed dataset), one
   client, sequential requests → p50/p99.

Each measurement is repeated ``--repeats`` times and the median reported. Traffic goes to loopback only.

    python benchmarks/bench_service.py --model-dir ~/.local/share/perfcost/models
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np

from service.core.settings import Settings

log = logging.getLogger("bench")

MLIR_DATASET = Path(__file__).resolve().parents[1] / "datasets" / "mlir-cpu-local"
INSTANCE = {"m": 1024, "n": 768, "k": 2048, "dtype": "float32", "device": "NVIDIA H100 80GB HBM3"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_server(model_dir: Path, port: int, workers: int = 1) -> subprocess.Popen[bytes]:
    env = {**os.environ, "PERFCOST_MODEL_DIR": str(model_dir)}
    cmd = [sys.executable, "-m", "uvicorn", "--factory", "service.app:app_from_env", "--host", "127.0.0.1"]
    # The keep-alive timeout perfcost serve uses (a shorter one drops requests; see Settings.keep_alive_s).
    keep_alive = str(Settings().keep_alive_s)
    cmd += ["--workers", str(workers), "--port", str(port), "--timeout-keep-alive", keep_alive]
    cmd += ["--log-level", "warning"]
    proc = subprocess.Popen(cmd, env=env)
    deadline = time.time() + 60
    while time.time() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=1).status_code == 200:
                return proc
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    proc.terminate()
    raise SystemExit(f"server on port {port} did not become ready (is there a model in {model_dir}?)")


async def concurrent_singles(url: str, clients: int, requests_per_client: int) -> list[float]:
    latencies: list[float] = []
    body = {"instances": [INSTANCE], "coverage": 0.9}
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=30) as client:

        async def worker() -> None:
            for _ in range(requests_per_client):
                started = time.perf_counter()
                r = await client.post("/v1/gemm/predict", json=body)
                latencies.append(time.perf_counter() - started)
                if r.status_code != 200:
                    raise SystemExit(f"request failed: {r.status_code} {r.text[:200]}")

        await asyncio.gather(*(worker() for _ in range(clients)))
    return latencies


async def concurrent_singles_raw(port: int, clients: int, requests_per_client: int) -> list[float]:
    """The same load from a lean client: one keep-alive HTTP/1.1 connection per client over asyncio
    streams, the request bytes encoded once. httpx spends about as much CPU per request as the server
    does (2.5 ms here), and on a 2-core machine that client time lands in the measured latency."""
    body = json.dumps({"instances": [INSTANCE], "coverage": 0.9}).encode()
    request = (
        b"POST /v1/gemm/predict HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        + f"Content-Length: {len(body)}\r\n\r\n".encode()
        + body
    )
    latencies: list[float] = []

    async def worker() -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            for _ in range(requests_per_client):
                started = time.perf_counter()
                writer.write(request)
                head = await reader.readuntil(b"\r\n\r\n")
                lines = head.decode("latin-1").split("\r\n")
                length = next(int(h[15:]) for h in lines if h.lower().startswith("content-length:"))
                payload = await reader.readexactly(length)
                latencies.append(time.perf_counter() - started)
                if not lines[0].startswith("HTTP/1.1 200"):
                    raise SystemExit(f"request failed: {lines[0]} {payload[:200]!r}")
        finally:
            writer.close()

    await asyncio.gather(*(worker() for _ in range(clients)))
    return latencies


def batch_rows(n: int) -> list[dict]:
    rng = np.random.default_rng(0)
    sizes = rng.integers(16, 8192, size=(n, 3))
    return [{"m": int(m), "n": int(nn), "k": int(k), "device": INSTANCE["device"]} for m, nn, k in sizes]


def mlir_programs(*sizes: int) -> list[str]:
    """For each size, the committed program closest to it in bytes, padded with a comment up to it."""
    from training.domains.mlir.data import load_mlir, measured

    texts = [str(t) for t in measured(load_mlir(MLIR_DATASET))["mlir"]]
    out = []
    for size in sizes:
        text = min(texts, key=lambda t: abs(len(t) - size))
        out.append(text + ("\n// " + "x" * (size - len(text) - 4) if len(text) + 4 < size else ""))
    return out


def sequential_mlir_ms(url: str, text: str, requests: int) -> list[float]:
    payload = {"instances": [{"mlir": text}]}
    times = []
    with httpx.Client(base_url=url, timeout=30) as client:
        for _ in range(requests):
            started = time.perf_counter()
            r = client.post("/v1/mlir/predict", json=payload)
            times.append((time.perf_counter() - started) * 1e3)
            if r.status_code != 200:
                raise SystemExit(f"MLIR request failed: {r.status_code} {r.text[:200]}")
    return times


def in_process_seconds(model_dir: Path, rows: list[dict], repeats: int) -> float:
    from service.core.devices import DeviceCatalog
    from service.core.registry import ModelRegistry
    from service.domains import DOMAINS
    from service.domains.gemm import runtime as gemm
    from service.domains.gemm.schemas import GemmInstance

    model = ModelRegistry(model_dir, DOMAINS).reload().get("gemm")
    if model is None:
        raise SystemExit(f"no gemm model in {model_dir}")
    catalog = DeviceCatalog.default()
    instances = [GemmInstance(**r) for r in rows]
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        gemm.predict(instances, 0.9, model, catalog)
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model-dir", type=Path, required=True)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--workers", type=int, default=1, help="uvicorn worker processes")
    parser.add_argument("--requests-per-client", type=int, default=100)
    parser.add_argument("--batch", type=int, default=10_000)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)

    port = free_port()
    proc = start_server(args.model_dir, port, args.workers)
    url = f"http://127.0.0.1:{port}"
    try:
        asyncio.run(concurrent_singles(url, args.clients, 10))  # warm-up
        p50s, p99s, httpx_p50s, httpx_p99s = [], [], [], []
        per_client = args.requests_per_client
        for _ in range(args.repeats):
            lat = np.array(asyncio.run(concurrent_singles_raw(port, args.clients, per_client))) * 1e3
            p50s.append(float(np.percentile(lat, 50)))
            p99s.append(float(np.percentile(lat, 99)))
            lat = np.array(asyncio.run(concurrent_singles(url, args.clients, per_client))) * 1e3
            httpx_p50s.append(float(np.percentile(lat, 50)))
            httpx_p99s.append(float(np.percentile(lat, 99)))
        rows = batch_rows(args.batch)
        batch_times = []
        with httpx.Client(base_url=url, timeout=60) as client:
            for _ in range(args.repeats):
                started = time.perf_counter()
                r = client.post("/v1/gemm/predict", json={"instances": rows, "coverage": 0.9})
                batch_times.append(time.perf_counter() - started)
                if r.status_code != 200:
                    raise SystemExit(f"batch failed: {r.status_code} {r.text[:200]}")
        mlir_p50s, mlir_p99s = [], []
        if (args.model_dir / "mlir").is_dir():
            (text,) = mlir_programs(10_000)
            sequential_mlir_ms(url, text, 10)  # warm-up
            for _ in range(args.repeats):
                lat = np.array(sequential_mlir_ms(url, text, 100))
                mlir_p50s.append(float(np.percentile(lat, 50)))
                mlir_p99s.append(float(np.percentile(lat, 99)))
    finally:
        proc.terminate()
        proc.wait(timeout=20)

    single_in_process = in_process_seconds(args.model_dir, [INSTANCE], 200) * 1e3
    batch_in_process = in_process_seconds(args.model_dir, rows, args.repeats)
    figures = {
        "clients": args.clients,
        "workers": args.workers,
        "single_p50_ms": statistics.median(p50s),
        "single_p99_ms": statistics.median(p99s),
        "single_p50_runs_ms": p50s,
        "single_httpx_client_p50_ms": statistics.median(httpx_p50s),
        "single_httpx_client_p99_ms": statistics.median(httpx_p99s),
        "single_in_process_ms": single_in_process,
        "single_http_over_in_process": statistics.median(p50s) / single_in_process,
        "batch_instances": args.batch,
        "batch_seconds": statistics.median(batch_times),
        "batch_runs_s": batch_times,
        "batch_in_process_seconds": batch_in_process,
        "batch_http_over_in_process": statistics.median(batch_times) / batch_in_process,
        "load_average": os.getloadavg(),
    }
    if mlir_p50s:
        figures |= {
            "mlir_10kb_p50_ms": statistics.median(mlir_p50s),
            "mlir_10kb_p99_ms": statistics.median(mlir_p99s),
            "mlir_10kb_p50_runs_ms": mlir_p50s,
        }
    for key, value in figures.items():
        log.info("%-30s %s", key, value)
    if args.json:
        args.json.write_text(json.dumps(figures, indent=1))


if __name__ == "__main__":
    main()
