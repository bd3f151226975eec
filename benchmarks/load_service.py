"""Load and soak: many concurrent clients sending a mix of GEMM, CPU and MLIR requests over loopback.

Starts uvicorn on 127.0.0.1 over a model directory holding ``gemm``, ``cpu`` and ``mlir`` models (MLIR
requests are left out of the mix when there is no ``mlir`` model), runs the mix for
``--seconds`` with ``--clients`` concurrent clients, and reports per route: requests, errors, throughput,
p50/p99 latency and failed requests; plus the server's RSS after warm-up, after the first minute and at
the end. With ``--reload-every S`` it also publishes a new version of the GEMM model (a copy of the
newest, under a new name) and calls ``POST /v1/admin/reload`` every S seconds, then checks that every
response named a published version. All traffic stays on loopback; the run is bounded in time and stops
by itself.

The server's RSS (its process and any children) is sampled every second into the report (``--json``),
a CSV (``--csv``, default next to the JSON) and a plot (``--png``, same). The plateau verdict: the end
RSS within 15% of the one-minute RSS, and the slope of a least-squares line through the last five minutes
(all samples after the first minute on shorter runs) in MiB per minute.

    python benchmarks/load_service.py --model-dir /tmp/models --seconds 60 --clients 64 [--reload-every 5]
    python benchmarks/load_service.py --model-dir /tmp/models --seconds 600 --clients 64 --reload-every 5 \
        --json reports/soak.json      # also reports/soak.csv and reports/soak.png
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
import threading
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


# The plateau verdict: end RSS within this fraction of the one-minute RSS; the slope is fit over this tail.
RSS_TOLERANCE = 0.15
FIRST_MINUTE_S = 60.0
SLOPE_WINDOW_S = 300.0


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def tree_rss_mib(pid: int) -> float:
    """RSS of a process plus its children (uvicorn's workers when ``--workers`` > 1)."""
    total = rss_mib(pid)
    try:
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        children = []
    for child in children:
        try:
            total += tree_rss_mib(int(child))
        except (OSError, ValueError):
            continue
    return total


class RssSampler:
    """Samples a process tree's RSS every ``interval`` seconds on a thread: (seconds since start, MiB)."""

    def __init__(self, pid: int, interval: float = 1.0) -> None:
        self.pid, self.interval = pid, interval
        self.samples: list[tuple[float, float]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)

    def _run(self) -> None:
        started = time.monotonic()
        tick = 0
        while not self._stop.is_set():
            try:
                self.samples.append((round(time.monotonic() - started, 3), round(tree_rss_mib(self.pid), 2)))
            except OSError:
                return  # the server is gone
            tick += 1
            self._stop.wait(max(0.0, started + tick * self.interval - time.monotonic()))

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()


def rss_verdict(samples: list[tuple[float, float]]) -> dict[str, Any]:
    """RSS after the first minute and at the end, their ratio, and the slope over the last five minutes."""
    if not samples:
        return {}
    t = np.array([s[0] for s in samples])
    rss = np.array([s[1] for s in samples])
    one_minute = float(rss[int(np.argmin(np.abs(t - FIRST_MINUTE_S)))])
    end = float(rss[-1])
    tail = t >= max(t[-1] - SLOPE_WINDOW_S, min(FIRST_MINUTE_S, t[-1] / 2))
    slope, intercept = np.polyfit(t[tail] / 60, rss[tail], 1) if tail.sum() >= 2 else (np.nan, np.nan)
    within = abs(end / one_minute - 1) <= RSS_TOLERANCE
    return {
        "rss_mib_after_1_min": round(one_minute, 1),
        "rss_mib_end": round(end, 1),
        "rss_mib_max": round(float(rss.max()), 1),
        "rss_end_over_1_min": round(end / one_minute, 4),
        "rss_end_within_15pct_of_1_min": bool(within),
        "rss_slope_mib_per_min": round(float(slope), 3),
        "rss_slope_from_s": float(t[tail][0]),
        "rss_slope_window_s": round(float(t[-1] - t[tail][0]), 1),
        "rss_slope_intercept_mib": float(intercept),
        "rss_samples": len(samples),
    }


def plot_rss(samples: list[tuple[float, float]], verdict: dict[str, Any], title: str, path: Path) -> None:
    import matplotlib  # noqa: PLC0415 - only when a plot is asked for

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    t = np.array([s[0] for s in samples]) / 60
    rss = np.array([s[1] for s in samples])
    fig, ax = plt.subplots(figsize=(9, 4.5))
    ax.plot(t, rss, lw=1, label="server RSS")
    one = verdict["rss_mib_after_1_min"]
    ax.axhspan(
        one * (1 - RSS_TOLERANCE), one * (1 + RSS_TOLERANCE), color="g", alpha=0.1, label="1-min RSS ±15%"
    )
    ax.axhline(one, color="g", lw=0.8, ls="--")
    tail = t >= verdict["rss_slope_from_s"] / 60
    slope, intercept = verdict["rss_slope_mib_per_min"], verdict["rss_slope_intercept_mib"]
    fit = intercept + slope * t[tail]
    ax.plot(
        t[tail],
        fit,
        color="r",
        lw=1.5,
        label=f"fit, last {verdict['rss_slope_window_s']:.0f} s: {slope:+.2f} MiB/min",
    )
    ax.set_xlabel("minutes since the timed run started")
    ax.set_ylabel("RSS (MiB)")
    ax.set_ylim(0, max(rss.max(), one * (1 + RSS_TOLERANCE)) * 1.1)
    ax.set_title(title, fontsize=9)
    ax.legend(loc="lower right")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


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
    reloads: list[float] = []  # seconds each publish + reload took
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
            # A fixed cadence: publish + reload take seconds under load, and sleeping the full interval
            # after each made "every 5 s" one reload per ~8.5 s (70 in 600 s on this 2-core machine).
            index = 0
            next_at = time.monotonic() + args.reload_every
            while next_at < deadline:
                await asyncio.sleep(max(0.0, next_at - time.monotonic()))
                next_at += args.reload_every
                index += 1
                started = time.perf_counter()
                published.add(await asyncio.to_thread(republish, args.model_dir, index))
                try:
                    r = await client.post("/v1/admin/reload", headers={"Authorization": f"Bearer {TOKEN}"})
                except httpx.HTTPError as exc:
                    errors["reload"].append(repr(exc))
                    continue
                reloads.append(time.perf_counter() - started)
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
    report["requests_total"] = sum(len(v) for v in latencies.values()) + sum(
        len(v) for k, v in errors.items() if k != "reload"
    )
    # A request fails when it raised (no response) or was answered other than 200.
    report["failed_requests"] = sum(len(v) for k, v in errors.items() if k != "reload")
    report["reloads"] = len(reloads)
    if reloads:
        report["reload_seconds_p50_max"] = [round(float(np.median(reloads)), 2), round(max(reloads), 2)]
    report["failed_reloads"] = len(errors.get("reload", []))
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
    parser.add_argument("--csv", type=Path, help="RSS samples (default: next to --json)")
    parser.add_argument("--png", type=Path, help="RSS plot (default: next to --json)")
    args = parser.parse_args()
    if args.json is not None:
        args.csv = args.csv or args.json.with_suffix(".csv")
        args.png = args.png or args.json.with_suffix(".png")
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
        rss_start = tree_rss_mib(proc.pid)
        load_start = os.getloadavg()
        with RssSampler(proc.pid) as sampler:
            report = asyncio.run(run(args, url, published, mlir))
        report["rss_mib_after_warmup"] = round(rss_start, 1)
        report |= rss_verdict(sampler.samples)
        report["rss_growth"] = round(report["rss_mib_end"] / rss_start - 1, 4)
        report["load_average_start"] = load_start
        report["load_average"] = os.getloadavg()
        report["settings"] = {
            "seconds": args.seconds,
            "clients": args.clients,
            "workers": args.workers,
            "reload_every": args.reload_every,
            "mlir": bool(mlir),
        }
    finally:
        proc.terminate()
        proc.wait(timeout=20)
        shutil.rmtree(work, ignore_errors=True)
    samples = sampler.samples
    log.info(json.dumps(report, indent=1))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({**report, "rss_mib_samples": samples}, indent=1))
    if args.csv:
        args.csv.write_text("seconds,rss_mib\n" + "".join(f"{t},{r}\n" for t, r in samples))
    if args.png and samples:
        title = (
            f"perfcost server RSS: {args.clients} clients, {args.seconds:.0f} s, reload every "
            f"{args.reload_every:g} s, {report['failed_requests']} failed requests; "
            f"end/1-min {report['rss_end_over_1_min']:.3f}, load {report['load_average'][0]:.2f}"
        )
        plot_rss(samples, report, title, args.png)
        log.info("wrote %s", args.png)


if __name__ == "__main__":
    main()
