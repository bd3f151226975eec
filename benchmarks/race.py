"""perfcost against MLServer: the same LightGBM model, the same client, rounds interleaved.

Both servers run on loopback during the race and serve the GEMM runtime model's LightGBM text file
(``runtime_ms.lgb.txt`` of the model version):

* MLServer (``mlserver_lightgbm.LightGBMModel``, its defaults) gets precomputed features, the float32 rows
  perfcost's feature module builds for the same instances (``service.domains.gemm.features.featurize``), as
  one FP32 tensor ``[N, n_features]`` via V2 REST ``POST /v2/models/<name>/infer``; it runs the trees, nothing
  else.
* perfcost (``python -m service``) gets the native ``POST /v1/gemm/predict`` with the GEMM fields and does
  its full work: device lookup, features, every target (runtime and power) with intervals, OOD checks,
  derived figures (utilization, energy, cost).

One async httpx client function drives both, at the same concurrency, over pre-encoded JSON bodies.
Scenarios: single-instance requests from 16 clients, 1,000-instance requests from 4. Every round runs each
scenario once on each server (the order rotates every round), each after a warm-up that is not timed;
the table gives medians over rounds of p50, p99 and throughput, and the medians of the per-round ratios
perfcost/MLServer. The floor: the bare onnxruntime session perfcost runs and the bare
``lightgbm.Booster.predict`` MLServer runs, in this process, on the same feature rows.

Before timing, MLServer's answer is checked against ``Booster.predict`` on the same features (bit-equal
expected), and perfcost's runtime against exp(max(raw + baseline, floor)) of the same raw predictions.

MLServer pins a fastapi that conflicts with this project's, so it lives in its own virtual environment:

    python3 -m venv /work/race-venv
    /work/race-venv/bin/pip install mlserver mlserver-lightgbm "uvloop<0.22"    # mlserver 1.7.1 here

(uvloop 0.22 broke MLServer 1.7.1's inference workers, "There is no current event loop in thread
'MainThread'": SeldonIO/MLServer#2286; without the pin its default parallel_workers=1 cannot start.)

Then, from the repository root in the project's environment:

    export PERFCOST_DATA_MIRROR=/work/shared/datasets    # only when --model-dir is not given
    python benchmarks/race.py --mlserver-bin /work/race-venv/bin/mlserver [--model-dir DIR]

Without ``--model-dir`` a GEMM model is published once into ``--build-dir`` the way the test suite's
``trained_model_dir`` fixture does (GPPerf's tiled RTX 4070 kernel plus a 3,000-row NeuSight sample, about
a minute) and reused by later runs. The race needs the runtime target to be LightGBM; when cross-validation
picked a random forest it says so and publishes a LightGBM-only model instead.

``--mlserver`` lists the MLServer variants to race, the first (its defaults) being the one the acceptance
figures compare against: ``default`` (parallel_workers=1: one inference worker process behind the HTTP
process), ``0`` (inference in the HTTP process), ``+omp1`` (``OMP_NUM_THREADS=1`` for MLServer only:
LightGBM's OpenMP threads otherwise spin on this 2-core machine, 4-10 ms of CPU per 1-row request).
``--clients-kind`` races with httpx and with a lean asyncio-streams client in turn: httpx costs about
2 ms of client CPU per request here, more than perfcost's server does, so it limits both servers.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import numpy as np

log = logging.getLogger("race")

REPO = Path(__file__).resolve().parents[1]
TARGET = "runtime_ms"
MLSERVER_MODEL = "gemm-runtime"
COVERAGE = 0.9
# A device the runtime and the power model were both trained on: perfcost predicts every target for it.
DEVICE = "NVIDIA GeForce RTX 4070"
JSON = {"content-type": "application/json"}
SINGLE = {"m": 1024, "n": 1024, "k": 1024, "dtype": "float32", "device": DEVICE}


@dataclass(frozen=True)
class Scenario:
    name: str
    rows: int
    clients: int
    requests_per_client: int


@dataclass
class Server:
    label: str
    url: str
    path: str
    proc: subprocess.Popen[bytes]
    log_file: Path
    bodies: dict[str, bytes] = field(default_factory=dict)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def load_average() -> list[float]:
    return [round(v, 2) for v in os.getloadavg()]


# ----------------------------------------------------------------------------------------------- model


@contextlib.contextmanager
def lightgbm_only() -> Iterator[None]:
    """CostRegressor (and so SplitRegressor's parts) with LightGBM as its only candidate."""
    from training.core.models import CostRegressor

    init = CostRegressor.__init__
    saved = init.__defaults__
    assert saved is not None
    init.__defaults__ = (("lightgbm",), *saved[1:])  # candidates is the first parameter
    try:
        yield
    finally:
        init.__defaults__ = saved


def publish_race_model(root: Path, only_lightgbm: bool) -> Path:
    """A GEMM model as tests/conftest.py's ``trained_model_dir`` publishes it; returns the model dir."""
    from dataclasses import replace

    from service.core.settings import Settings
    from training.domains.gemm.data import load_gemm
    from training.domains.gemm.train import publish_gemm

    mirror = os.environ.get("PERFCOST_DATA_MIRROR")
    if not mirror:
        raise SystemExit("building a model needs PERFCOST_DATA_MIRROR (or pass --model-dir)")
    model_dir = root / ("models-lightgbm" if only_lightgbm else "models")
    settings = Settings(data_mirror=Path(mirror), data_home=root / "cache", model_dir=model_dir)
    neusight = load_gemm("neusight-gemm", settings)
    sample = replace(neusight, frame=neusight.frame.sample(3000, random_state=0).reset_index(drop=True))
    started = time.perf_counter()
    with lightgbm_only() if only_lightgbm else contextlib.nullcontext():
        version = publish_gemm([load_gemm("gpperf-rtx4070-tiled", settings), sample], settings)
    log.info("published gemm %s to %s in %.0f s", version, model_dir, time.perf_counter() - started)
    return model_dir


def newest_card(model_dir: Path) -> tuple[Path, dict[str, Any]]:
    from service.core.model import CARD, list_versions

    versions = list_versions(model_dir, "gemm")
    if not versions:
        raise SystemExit(f"no published gemm model under {model_dir}")
    return versions[-1], json.loads((versions[-1] / CARD).read_text())


def runtime_is_lightgbm(card: dict[str, Any]) -> tuple[bool, str]:
    spec = card["targets"].get(TARGET)
    if spec is None:
        return False, f"the card has no {TARGET} target"
    if spec.get("estimator") != "lightgbm" or not str(spec.get("file", "")).endswith(".lgb.txt"):
        return False, f"{TARGET} is a {spec.get('estimator')} ({spec.get('file')}), not a LightGBM text model"
    return True, f"{TARGET}: lightgbm, {spec['file']}"


def race_model(args: argparse.Namespace) -> tuple[Path, Path, dict[str, Any]]:
    """(model dir, version folder, card) of a GEMM model whose runtime target is LightGBM."""
    if args.model_dir is not None:
        model_dir = args.model_dir
    else:
        model_dir = args.build_dir / "models"
        if not (model_dir / "gemm").is_dir():
            model_dir = publish_race_model(args.build_dir, only_lightgbm=False)
    version_dir, card = newest_card(model_dir)
    ok, why = runtime_is_lightgbm(card)
    log.info("model %s: %s", version_dir, why)
    if not ok:
        log.info("cross-validation did not pick LightGBM for %s: publishing a LightGBM-only model", TARGET)
        model_dir = args.build_dir / "models-lightgbm"
        if not (model_dir / "gemm").is_dir():
            model_dir = publish_race_model(args.build_dir, only_lightgbm=True)
        version_dir, card = newest_card(model_dir)
        ok, why = runtime_is_lightgbm(card)
        if not ok:
            raise SystemExit(f"{version_dir}: {why}")
        log.info("model %s: %s", version_dir, why)
    return model_dir, version_dir, card


# --------------------------------------------------------------------------------------------- requests


def batch_instances(n: int, card: dict[str, Any]) -> list[dict[str, Any]]:
    """``n`` GEMMs on the runtime target's devices, k at or above its split so that every row is predicted
    by the LightGBM model the race serves (below the split a card may name another estimator)."""
    spec = card["targets"][TARGET]
    below = spec.get("below")
    k_min = max(32, int(below["value"])) if below and below.get("column") == "k" else 32
    devices = list(spec["devices"])
    rng = np.random.default_rng(0)
    sizes = rng.integers(32, 8192, size=(n, 3))
    sizes[:, 2] = np.maximum(sizes[:, 2], k_min)
    return [
        {"m": int(m), "n": int(nn), "k": int(k), "dtype": "float32", "device": devices[i % len(devices)]}
        for i, (m, nn, k) in enumerate(sizes)
    ]


def feature_rows(instances: list[dict[str, Any]], model_dir: Path) -> tuple[np.ndarray, Any]:
    """perfcost's float64 feature matrix for the instances (its own device resolution), and the model."""
    from service.core.devices import DeviceCatalog
    from service.core.registry import ModelRegistry
    from service.domains import DOMAINS
    from service.domains.gemm import features as gemm_features
    from service.domains.gemm import runtime as gemm
    from service.domains.gemm.schemas import GemmInstance

    model = ModelRegistry(model_dir, DOMAINS).reload().get("gemm")
    if model is None:
        raise SystemExit(f"{model_dir}: the gemm model did not load")
    parsed = [GemmInstance(**inst) for inst in instances]
    names, specs = gemm.resolve_devices(parsed, DeviceCatalog.default(), gemm.model_devices(model))
    rows: dict[str, list[Any]] = {c: [getattr(i, c) for i in parsed] for c in gemm.CONFIG_FIELDS}
    rows["device"] = names
    return gemm_features.featurize(rows, specs).matrix, model


def v2_body(matrix32: np.ndarray) -> bytes:
    """A V2 inference request with one FP32 tensor. JSON has no NaN (MLServer parses with orjson, which
    refuses the token), so a missing feature travels as null, which numpy decodes back to NaN."""
    tensor = {
        "name": "features",
        "shape": list(matrix32.shape),
        "datatype": "FP32",
        "data": [None if np.isnan(v) else float(v) for v in matrix32.ravel().tolist()],
    }
    return json.dumps({"inputs": [tensor]}).encode()


def perfcost_body(instances: list[dict[str, Any]]) -> bytes:
    return json.dumps({"instances": instances, "coverage": COVERAGE}).encode()


# ----------------------------------------------------------------------------------------------- servers


def wait_ready(proc: subprocess.Popen[bytes], urls: list[str], log_file: Path, timeout: float = 120) -> None:
    deadline = time.time() + timeout
    pending = list(urls)
    while pending and time.time() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"server exited ({proc.returncode}); log:\n{log_file.read_text()[-3000:]}")
        try:
            if httpx.get(pending[0], timeout=1).status_code == 200:
                pending.pop(0)
                continue
        except httpx.TransportError:
            pass
        time.sleep(0.25)
    if pending:
        proc.terminate()
        raise SystemExit(
            f"{pending[0]} not ready after {timeout:.0f} s; log:\n{log_file.read_text()[-3000:]}"
        )


def start_perfcost(model_dir: Path, work: Path) -> Server:
    port = free_port()
    env = {**os.environ, "PERFCOST_MODEL_DIR": str(model_dir), "PERFCOST_PORT": str(port)}
    env["PERFCOST_HOST"] = "127.0.0.1"
    log_file = work / "perfcost.log"
    with log_file.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "service"], env=env, cwd=REPO, stdout=out, stderr=subprocess.STDOUT
        )
    url = f"http://127.0.0.1:{port}"
    wait_ready(proc, [f"{url}/readyz"], log_file)
    return Server("perfcost", url, "/v1/gemm/predict", proc, log_file)


@dataclass(frozen=True)
class Variant:
    """An MLServer configuration: ``parallel_workers`` (None: its default, 1) and, optionally, one OpenMP
    thread for LightGBM (``OMP_NUM_THREADS=1`` in MLServer's environment only)."""

    parallel_workers: int | None = None
    omp1: bool = False

    @classmethod
    def parse(cls, spec: str) -> Variant:
        parts = [p.strip() for p in spec.split("+") if p.strip()]
        workers = None if not parts or parts[0] in ("default", "omp1") else int(parts[0])
        return cls(workers, "omp1" in parts)

    @property
    def label(self) -> str:
        knobs = [] if self.parallel_workers is None else [f"pw={self.parallel_workers}"]
        knobs += ["omp=1"] if self.omp1 else []
        return "mlserver" + (f"[{','.join(knobs)}]" if knobs else "")


def start_mlserver(binary: str, lgb_file: Path, work: Path, variant: Variant) -> Server:
    """MLServer with its defaults, but for loopback-only ports (and the variant's settings)."""
    root = work / variant.label.replace("[", "-").replace("]", "").replace("=", "").replace(",", "-")
    (root / MLSERVER_MODEL).mkdir(parents=True)
    http, grpc, metrics = free_port(), free_port(), free_port()
    settings: dict[str, Any] = {
        "host": "127.0.0.1",
        "http_port": http,
        "grpc_port": grpc,
        "metrics_port": metrics,
    }
    if variant.parallel_workers is not None:
        settings["parallel_workers"] = variant.parallel_workers
    (root / "settings.json").write_text(json.dumps(settings))
    model_settings = {
        "name": MLSERVER_MODEL,
        "implementation": "mlserver_lightgbm.LightGBMModel",
        "parameters": {"uri": str(lgb_file)},
    }
    (root / MLSERVER_MODEL / "model-settings.json").write_text(json.dumps(model_settings))
    log_file = root / "mlserver.log"
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH", "OMP_NUM_THREADS")}
    if variant.omp1:
        env["OMP_NUM_THREADS"] = "1"
    with log_file.open("wb") as out:
        proc = subprocess.Popen(
            [binary, "start", str(root)], env=env, cwd=root, stdout=out, stderr=subprocess.STDOUT
        )
    url = f"http://127.0.0.1:{http}"
    wait_ready(proc, [f"{url}/v2/health/ready", f"{url}/v2/models/{MLSERVER_MODEL}/ready"], log_file)
    return Server(variant.label, url, f"/v2/models/{MLSERVER_MODEL}/infer", proc, log_file)


def stop(server: Server) -> None:
    if server.proc.poll() is None:
        server.proc.terminate()
        try:
            server.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.proc.kill()
            server.proc.wait()


def tree_cpu_seconds(root: int) -> float:
    """User + system CPU seconds of a process and its live descendants (MLServer's inference workers)."""
    tick = os.sysconf("SC_CLK_TCK")
    parent: dict[int, int] = {}
    cpu: dict[int, float] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        parent[int(entry.name)] = int(fields[1])
        cpu[int(entry.name)] = (int(fields[11]) + int(fields[12])) / tick
    total = 0.0
    for pid, seconds in cpu.items():
        p = pid
        while p > 1 and p != root:
            p = parent.get(p, 0)
        if p == root:
            total += seconds
    return total


# ------------------------------------------------------------------------------------------------ client


async def httpx_loops(
    server: Server, body: bytes, clients: int, per_client: int, warmup: int, timed: Any
) -> list[float]:
    """``clients`` concurrent loops of httpx POSTs of ``body``; ``timed`` brackets the timed part."""
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    latencies: list[float] = []
    async with httpx.AsyncClient(base_url=server.url, limits=limits, timeout=120) as client:

        async def post() -> float:
            started = time.perf_counter()
            r = await client.post(server.path, content=body, headers=JSON)
            elapsed = time.perf_counter() - started
            if r.status_code != 200:
                raise SystemExit(f"{server.label}: {r.status_code} {r.text[:300]}")
            return elapsed

        async def loop(n: int, out: list[float] | None) -> None:
            for _ in range(n):
                elapsed = await post()
                if out is not None:
                    out.append(elapsed)

        await asyncio.gather(*(loop(warmup, None) for _ in range(clients)))
        with timed:
            await asyncio.gather(*(loop(per_client, latencies) for _ in range(clients)))
    return latencies


async def raw_loops(
    server: Server, body: bytes, clients: int, per_client: int, warmup: int, timed: Any
) -> list[float]:
    """The same loops from a lean client: one keep-alive HTTP/1.1 connection per client over asyncio
    streams, the request bytes built once (as benchmarks/bench_service.py does). httpx spends about as much
    CPU per small request as a server, which on a 2-core machine lands in the measured latency."""
    host, port = server.url.removeprefix("http://").split(":")
    request = (
        f"POST {server.path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode() + body
    latencies: list[float] = []
    streams = [await asyncio.open_connection(host, int(port)) for _ in range(clients)]

    async def post(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> float:
        started = time.perf_counter()
        writer.write(request)
        head = await reader.readuntil(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        length = next(int(h.split(":", 1)[1]) for h in lines if h.lower().startswith("content-length:"))
        payload = await reader.readexactly(length)
        elapsed = time.perf_counter() - started
        if not lines[0].startswith("HTTP/1.1 200"):
            raise SystemExit(f"{server.label}: {lines[0]} {payload[:300]!r}")
        return elapsed

    async def loop(stream: tuple[Any, Any], n: int, out: list[float] | None) -> None:
        for _ in range(n):
            elapsed = await post(*stream)
            if out is not None:
                out.append(elapsed)

    try:
        await asyncio.gather(*(loop(s, warmup, None) for s in streams))
        with timed:
            await asyncio.gather(*(loop(s, per_client, latencies) for s in streams))
    finally:
        for _, writer in streams:
            writer.close()
    return latencies


class Timed:
    """Wall time, the client's CPU time and the server's (process tree) CPU time of a block."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.wall = self.client_cpu = self.server_cpu = 0.0

    def __enter__(self) -> Timed:
        self._wall, self._client = time.perf_counter(), time.process_time()
        self._server = tree_cpu_seconds(self.pid)
        return self

    def __exit__(self, *_: object) -> None:
        self.wall = time.perf_counter() - self._wall
        self.client_cpu = time.process_time() - self._client
        self.server_cpu = tree_cpu_seconds(self.pid) - self._server


CLIENTS = {"httpx": httpx_loops, "raw": raw_loops}


async def drive(
    server: Server, body: bytes, clients: int, per_client: int, warmup: int, kind: str = "httpx"
) -> dict[str, Any]:
    """One timed run: ``clients`` concurrent request loops, ``warmup`` untimed requests per client first."""
    timed = Timed(server.proc.pid)
    latencies = await CLIENTS[kind](server, body, clients, per_client, warmup, timed)
    ms = np.array(latencies) * 1e3
    return {
        "p50_ms": float(np.percentile(ms, 50)),
        "p99_ms": float(np.percentile(ms, 99)),
        "requests_per_s": len(latencies) / timed.wall,
        "requests": len(latencies),
        "wall_s": timed.wall,
        "server_cpu_ms_per_request": timed.server_cpu / len(latencies) * 1e3,
        "client_cpu_ms_per_request": timed.client_cpu / len(latencies) * 1e3,
    }


# ------------------------------------------------------------------------------------------ sanity, floor


def sanity(
    servers: list[Server],
    matrix: np.ndarray,
    instances: list[dict[str, Any]],
    card: dict[str, Any],
    booster: Any,
) -> dict[str, Any]:
    """MLServer's answer against Booster.predict on the same features; perfcost's runtime against the same
    raw predictions with the card's baseline and floor applied (perfcost runs the ONNX export)."""
    from service.domains.gemm.features import FEATURE_COLUMNS

    spec = card["targets"][TARGET]
    matrix32 = np.ascontiguousarray(matrix, dtype=np.float32)
    expected = booster.predict(matrix32)
    out: dict[str, Any] = {"rows": len(matrix)}
    body = v2_body(matrix32)
    perfcost_raw: np.ndarray | None = None
    for server in servers:
        if server.label == "perfcost":
            r = httpx.post(
                server.url + server.path, content=perfcost_body(instances), headers=JSON, timeout=120
            )
            r.raise_for_status()
            perfcost_raw = np.array([row[TARGET]["value"] for row in r.json()["predictions"]])
            continue
        r = httpx.post(server.url + server.path, content=body, headers=JSON, timeout=120)
        r.raise_for_status()
        got = np.asarray(r.json()["outputs"][0]["data"], dtype=float)
        out[server.label] = {
            "equal_to_booster": bool(np.array_equal(got, expected)),
            "max_abs_diff": float(np.max(np.abs(got - expected))),
        }
    assert perfcost_raw is not None
    log_value = expected
    if spec.get("baseline"):
        log_value = log_value + matrix[:, FEATURE_COLUMNS.index(spec["baseline"])]
    if spec.get("floor"):
        log_value = np.maximum(log_value, matrix[:, FEATURE_COLUMNS.index(spec["floor"])])
    rel = np.abs(perfcost_raw / np.exp(log_value) - 1)
    out["perfcost_runtime_vs_booster"] = {
        "max_rel_diff": float(rel.max()),
        "median_rel_diff": float(np.median(rel)),
        "rows_within_1e-5": int((rel <= 1e-5).sum()),
    }
    return out


def median_call_ms(fn: Any, calls: int) -> float:
    fn()  # warm
    times = []
    for _ in range(calls):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return statistics.median(times) * 1e3


def floors(model: Any, booster: Any, single: np.ndarray, batch: np.ndarray) -> dict[str, Any]:
    """Bare in-process calls on precomputed float32 rows: perfcost's onnxruntime session (one thread, as
    it serves) and MLServer's ``Booster.predict`` (its default threads, and one)."""
    session = model.targets[TARGET].predictor.session
    out: dict[str, Any] = {}
    for label, rows, calls in (("1_row", single, 2000), ("1000_rows", batch, 200)):
        x = np.ascontiguousarray(rows, dtype=np.float32)
        out[f"onnxruntime_{label}_ms"] = median_call_ms(partial(session.run, None, {"features": x}), calls)
        out[f"lightgbm_{label}_ms"] = median_call_ms(partial(booster.predict, x), calls)
        out[f"lightgbm_1thread_{label}_ms"] = median_call_ms(
            partial(booster.predict, x, num_threads=1), calls
        )
    out["load_average"] = load_average()
    return out


def perfcost_stages(model: Any, instances: list[dict[str, Any]], calls: int) -> dict[str, float]:
    """Where a perfcost request's server time goes, stage by stage in-process (median ms per call): parsing
    and validating the body, the domain's prediction (devices, features, every target, intervals, OOD),
    within it the feature rows and the tree calls, and serialising the answer."""
    from fastapi.responses import JSONResponse

    from service.core.devices import DeviceCatalog
    from service.domains.gemm import features as gemm_features
    from service.domains.gemm import runtime as gemm
    from service.domains.gemm.schemas import GemmPredictRequest

    catalog = DeviceCatalog.default()
    body = perfcost_body(instances)
    request = GemmPredictRequest.model_validate_json(body)
    parsed = request.instances
    rows_out = gemm.predict(parsed, COVERAGE, model, catalog)
    names, specs = gemm.resolve_devices(parsed, catalog, gemm.model_devices(model))
    rows: dict[str, list[Any]] = {c: [getattr(i, c) for i in parsed] for c in gemm.CONFIG_FIELDS}
    rows["device"] = names
    matrix = gemm_features.featurize(rows, specs).matrix
    out = {
        "parse_validate_ms": median_call_ms(partial(GemmPredictRequest.model_validate_json, body), calls),
        "domain_predict_ms": median_call_ms(partial(gemm.predict, parsed, COVERAGE, model, catalog), calls),
        "featurize_ms": median_call_ms(partial(gemm_features.featurize, rows, specs), calls),
        "model_predict_ms": median_call_ms(
            partial(model.predict, matrix, COVERAGE, names, only_seen=gemm.DEVICE_BOUND_TARGETS), calls
        ),
        "serialise_ms": median_call_ms(
            partial(JSONResponse, {"model": "gemm", "version": "v", "predictions": rows_out}), calls
        ),
    }
    for name, target in model.targets.items():
        x = np.ascontiguousarray(matrix, dtype=np.float32)
        predictor = target.predictor
        if hasattr(predictor, "session"):
            out[f"onnx_call_{name}_ms"] = median_call_ms(
                partial(predictor.session.run, None, {"features": x}), calls
            )
    return out


def profile_perfcost(model: Any, instances: list[dict[str, Any]], calls: int, top: int) -> str:
    """cProfile of the in-process request path (parse, predict, serialise), top functions by own time."""
    import cProfile
    import io
    import pstats

    from fastapi.responses import JSONResponse

    from service.core.devices import DeviceCatalog
    from service.domains.gemm import runtime as gemm
    from service.domains.gemm.schemas import GemmPredictRequest

    catalog = DeviceCatalog.default()
    body = perfcost_body(instances)

    def one() -> None:
        request = GemmPredictRequest.model_validate_json(body)
        rows = gemm.predict(request.instances, request.coverage, model, catalog)
        JSONResponse({"model": "gemm", "version": "v", "predictions": rows})

    one()
    profiler = cProfile.Profile()
    profiler.enable()
    for _ in range(calls):
        one()
    profiler.disable()
    text = io.StringIO()
    pstats.Stats(profiler, stream=text).sort_stats("tottime").print_stats(top)
    return text.getvalue()


# Where a module's own time is counted in the server profile, by the first match on its file path.
PROFILE_GROUPS = (
    ("uvicorn (HTTP parsing, protocol)", ("uvicorn", "httptools", "h11")),
    ("starlette / fastapi (routing, middleware, responses)", ("starlette", "fastapi")),
    ("pydantic (request validation)", ("pydantic",)),
    ("perfcost features", ("service/domains/gemm/features", "service/domains/gemm/physics")),
    ("perfcost domain (devices, OOD, intervals, rows)", ("service/domains",)),
    ("perfcost model runtime", ("service/core/model.py", "service/core/targets.py")),
    ("perfcost app, routers, batcher", ("service/",)),
    ("onnxruntime", ("onnxruntime",)),
    ("numpy", ("numpy",)),
    ("logging (access log)", ("logging",)),
    ("json", ("json",)),
    ("event loop + socket I/O (uvloop C code, under asyncio.run)", ("asyncio", "uvloop")),
    ("prometheus_client", ("prometheus_client",)),
)


def profile_groups(stats: Any) -> dict[str, float]:
    """Share of the profiled own time per group of modules (``PROFILE_GROUPS``), largest first."""
    totals: dict[str, float] = {}
    for (filename, _, name), (_, _, own, _, _) in stats.stats.items():
        group = next(
            (label for label, keys in PROFILE_GROUPS if any(k in filename for k in keys)),
            "other (builtins: " + name[:40] + ")" if filename == "~" else "other",
        )
        if group.startswith("other (builtins"):
            group = "builtins (C calls: sockets, select, ...)"
        totals[group] = totals.get(group, 0.0) + own
    whole = sum(totals.values()) or 1.0
    return {k: round(v / whole, 4) for k, v in sorted(totals.items(), key=lambda kv: -kv[1])}


# Runs ``python -m service`` with a CPU-time profiler of its main thread (the event loop, where one-instance
# requests run, their micro-batches included) switched on by SIGUSR1 and dumped to argv[1] by SIGUSR2.
PROFILED_SERVER = """
import cProfile, runpy, signal, sys, time
profiler = cProfile.Profile(time.thread_time)
out = sys.argv[1]
def dump(*_):
    profiler.disable()
    profiler.dump_stats(out)
signal.signal(signal.SIGUSR1, lambda *_: profiler.enable())
signal.signal(signal.SIGUSR2, dump)
sys.argv = ["service"]
runpy.run_module("service", run_name="__main__", alter_sys=True)
"""


def profile_server(
    model_dir: Path, work: Path, requests: int, clients: int, kind: str = "raw"
) -> dict[str, Any]:
    """perfcost's server process under cProfile (CPU time of its event-loop thread), driven by ``clients``
    clients of ``kind`` with ``requests`` single-instance requests in all after a warm-up; the profile's own
    time grouped by module, the mean micro-batch size (requests per model call), and the top functions.
    Time in uvloop's C code (socket reads and writes, epoll, httptools' C parser) is counted against
    ``asyncio.run``, its Python caller."""
    import io
    import pstats

    port = free_port()
    env = {**os.environ, "PERFCOST_MODEL_DIR": str(model_dir), "PERFCOST_PORT": str(port)}
    env["PERFCOST_HOST"] = "127.0.0.1"
    out_file, log_file = work / f"perfcost-{kind}.prof", work / f"perfcost-profiled-{kind}.log"
    with log_file.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-c", PROFILED_SERVER, str(out_file)],
            env=env,
            cwd=REPO,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(proc, [f"{url}/readyz"], log_file)
        server = Server("perfcost (cProfile)", url, "/v1/gemm/predict", proc, log_file)
        body = perfcost_body([SINGLE])
        asyncio.run(drive(server, body, clients, 10, 3, kind))  # warm-up, not profiled
        proc.send_signal(signal.SIGUSR1)
        time.sleep(0.5)
        run = asyncio.run(drive(server, body, clients, requests // clients, 0, kind))
        proc.send_signal(signal.SIGUSR2)
        deadline = time.time() + 30
        while not out_file.is_file() and time.time() < deadline:
            time.sleep(0.2)
        time.sleep(0.5)  # let the dump finish
    finally:
        stop(server if "server" in locals() else Server("", "", "", proc, log_file))
    if not out_file.is_file():
        return {"error": f"no profile written; log:\n{log_file.read_text()[-2000:]}"}
    text = io.StringIO()
    stats = pstats.Stats(str(out_file), stream=text)
    stats.sort_stats("tottime").print_stats(30)
    total = sum(own for _, _, own, _, _ in stats.stats.values())  # type: ignore[attr-defined]
    model_calls = sum(
        primitive
        for (filename, _, name), (primitive, *_) in stats.stats.items()  # type: ignore[attr-defined]
        if filename.endswith("service/core/batching.py") and name == "_run_chunk"
    )
    return {
        "client": kind,
        "requests": run["requests"],
        "mean_micro_batch": run["requests"] / model_calls if model_calls else None,
        "p50_ms_under_profiler": run["p50_ms"],
        "profiled_cpu_ms_per_request": total / run["requests"] * 1e3,
        "own_time_share_by_module": profile_groups(stats),
        "top_functions": text.getvalue(),
    }


# ------------------------------------------------------------------------------------------------- race

METRICS = ("p50_ms", "p99_ms", "requests_per_s", "server_cpu_ms_per_request", "client_cpu_ms_per_request")


def summarise(rounds: list[dict[str, dict[str, Any]]], labels: list[str], rows: int) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for label in labels:
        runs = [r[label] for r in rounds]
        out[label] = {key: statistics.median(run[key] for run in runs) for key in METRICS}
        out[label]["rows_per_s"] = out[label]["requests_per_s"] * rows
        out[label]["p50_ms_rounds"] = [round(run["p50_ms"], 3) for run in runs]
        out[label]["requests_per_s_rounds"] = [round(run["requests_per_s"], 1) for run in runs]
    for label in labels:
        if label == "perfcost":
            continue
        per_round = [(r["perfcost"], r[label]) for r in rounds]
        out[f"perfcost/{label}"] = {
            "p50": statistics.median(a["p50_ms"] / b["p50_ms"] for a, b in per_round),
            "p99": statistics.median(a["p99_ms"] / b["p99_ms"] for a, b in per_round),
            "throughput": statistics.median(a["requests_per_s"] / b["requests_per_s"] for a, b in per_round),
        }
    return out


def race(
    servers: list[Server], scenarios: list[Scenario], rounds: int, warmup: int, kind: str
) -> dict[str, Any]:
    """Every round runs the scenario on each server in turn (the order rotating by one each round)."""
    results: dict[str, Any] = {}
    for scenario in scenarios:
        log.info(
            "%s client, scenario %s: %d rows, %d clients",
            kind,
            scenario.name,
            scenario.rows,
            scenario.clients,
        )
        per_round: list[dict[str, dict[str, Any]]] = []
        loads = []
        for i in range(rounds):
            order = servers[i % len(servers) :] + servers[: i % len(servers)]
            this: dict[str, dict[str, Any]] = {}
            for server in order:
                body = server.bodies[scenario.name]
                run = asyncio.run(
                    drive(server, body, scenario.clients, scenario.requests_per_client, warmup, kind)
                )
                run["load_average"] = load_average()
                this[server.label] = run
                log.info(
                    "  round %d %-24s p50 %7.2f ms  p99 %7.2f ms  %7.1f req/s  server CPU %6.2f ms/req"
                    "  client CPU %6.2f ms/req  load %s",
                    i + 1,
                    server.label,
                    run["p50_ms"],
                    run["p99_ms"],
                    run["requests_per_s"],
                    run["server_cpu_ms_per_request"],
                    run["client_cpu_ms_per_request"],
                    run["load_average"],
                )
            per_round.append(this)
            loads.append(load_average())
        summary = summarise(per_round, [s.label for s in servers], scenario.rows)
        summary["scenario"] = {
            "client": kind,
            "rows_per_request": scenario.rows,
            "clients": scenario.clients,
            "timed_requests_per_round": scenario.clients * scenario.requests_per_client,
            "warmup_requests_per_client": warmup,
            "rounds": rounds,
        }
        summary["load_average_per_round"] = loads
        summary["rounds"] = per_round
        results[f"{scenario.name} {kind}"] = summary
    return results


def table(results: dict[str, Any], labels: list[str]) -> str:
    head = f"{'scenario':<26}{'server':<24}{'p50 ms':>9}{'p99 ms':>9}{'req/s':>9}{'rows/s':>10}"
    lines = [head + f"{'srv CPU ms/req':>16}{'cli CPU ms/req':>16}"]
    for name, summary in results.items():
        for label in labels:
            s = summary[label]
            lines.append(
                f"{name:<26}{label:<24}{s['p50_ms']:>9.2f}{s['p99_ms']:>9.2f}{s['requests_per_s']:>9.1f}"
                f"{s['rows_per_s']:>10.0f}{s['server_cpu_ms_per_request']:>16.2f}"
                f"{s['client_cpu_ms_per_request']:>16.2f}"
            )
        for label in labels:
            if label == "perfcost":
                continue
            r = summary[f"perfcost/{label}"]
            lines.append(
                f"{'':<26}{'perfcost/' + label:<24}{r['p50']:>9.3f}{r['p99']:>9.3f}{r['throughput']:>9.3f}"
                "   <- ratios p50, p99, throughput (medians of per-round ratios)"
            )
        lines.append(f"{'':<26}load average after each round: {summary['load_average_per_round']}")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--mlserver-bin", default=shutil.which("mlserver") or "mlserver")
    parser.add_argument("--model-dir", type=Path, help="a published model directory holding gemm/")
    parser.add_argument(
        "--build-dir",
        type=Path,
        default=Path(tempfile.gettempdir()) / "perfcost-race",
        help="where a model is published (and reused) without --model-dir",
    )
    parser.add_argument(
        "--mlserver",
        default="default,0,omp1,0+omp1",
        help="comma-separated MLServer variants: 'default' (its settings as shipped: parallel_workers=1), "
        "an integer (parallel_workers), '+omp1' added (OMP_NUM_THREADS=1 for LightGBM); the first is the "
        "one the acceptance figures compare against",
    )
    parser.add_argument(
        "--clients-kind", default="httpx,raw", help="client implementations to race with, in turn"
    )
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=3, help="untimed requests per client per round")
    parser.add_argument("--single-clients", type=int, default=16)
    parser.add_argument("--single-requests", type=int, default=50, help="timed requests per client")
    parser.add_argument("--batch-rows", type=int, default=1000)
    parser.add_argument("--batch-clients", type=int, default=4)
    parser.add_argument("--batch-requests", type=int, default=8, help="timed requests per client")
    parser.add_argument("--profile-calls", type=int, default=2000, help="in-process calls profiled")
    parser.add_argument(
        "--profile-server",
        type=int,
        default=8000,
        help="single-instance requests sent to a perfcost run under cProfile after the race (0: skip)",
    )
    parser.add_argument("--out", type=Path, default=REPO / "reports" / "race.json")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)
    if shutil.which(args.mlserver_bin) is None and not Path(args.mlserver_bin).is_file():
        raise SystemExit(f"no MLServer at {args.mlserver_bin!r}: see --help for its virtual environment")
    kinds = [k.strip() for k in args.clients_kind.split(",") if k.strip()]
    if unknown := set(kinds) - set(CLIENTS):
        raise SystemExit(f"unknown client kind(s) {sorted(unknown)}; choose from {sorted(CLIENTS)}")
    variants = [Variant.parse(v) for v in args.mlserver.split(",") if v.strip()]

    started_load = load_average()
    model_dir, version_dir, card = race_model(args)
    lgb_file = version_dir / card["targets"][TARGET]["file"]
    import lightgbm as lgb

    from service.domains.gemm.features import FEATURE_COLUMNS

    booster = lgb.Booster(model_file=str(lgb_file))
    if booster.num_feature() != len(FEATURE_COLUMNS):
        raise SystemExit(
            f"{lgb_file}: {booster.num_feature()} features, the feature module has {len(FEATURE_COLUMNS)}"
        )
    if booster.feature_name() != list(card["feature_columns"]):
        raise SystemExit(f"{lgb_file}: its feature names differ from the card's feature_columns")

    batch = batch_instances(args.batch_rows, card)
    single_name, batch_name = f"single@{args.single_clients}", f"batch{args.batch_rows}@{args.batch_clients}"
    scenarios = [
        Scenario(single_name, 1, args.single_clients, args.single_requests),
        Scenario(batch_name, args.batch_rows, args.batch_clients, args.batch_requests),
    ]
    single_matrix, model = feature_rows([SINGLE], model_dir)
    batch_matrix, _ = feature_rows(batch, model_dir)
    instances = {single_name: [SINGLE], batch_name: batch}
    matrices = {single_name: single_matrix, batch_name: batch_matrix}

    work = Path(tempfile.mkdtemp(prefix="perfcost-race-"))
    servers: list[Server] = []
    results: dict[str, Any] = {}
    try:
        servers.append(start_perfcost(model_dir, work))
        for variant in variants:
            servers.append(start_mlserver(args.mlserver_bin, lgb_file, work, variant))
        for server in servers:
            for scenario in scenarios:
                server.bodies[scenario.name] = (
                    perfcost_body(instances[scenario.name])
                    if server.label == "perfcost"
                    else v2_body(np.ascontiguousarray(matrices[scenario.name], dtype=np.float32))
                )
        check = sanity(servers, batch_matrix, batch, card, booster)
        log.info("sanity (%d rows): %s", len(batch), json.dumps(check))
        if not all(check[s.label]["equal_to_booster"] for s in servers if s.label != "perfcost"):
            raise SystemExit("MLServer's predictions differ from Booster.predict on the same features")
        for kind in kinds:
            results |= race(servers, scenarios, args.rounds, args.warmup, kind)
    finally:
        for server in servers:
            stop(server)
    floor = floors(model, booster, single_matrix, batch_matrix)
    stages = {
        single_name: perfcost_stages(model, [SINGLE], 500),
        "micro-batch of 16 singles": perfcost_stages(model, [SINGLE] * 16, 500),
        batch_name: perfcost_stages(model, batch, 20),
    }
    profile = profile_perfcost(model, [SINGLE], args.profile_calls, 25)
    server_profiles = {
        kind: profile_server(model_dir, work, args.profile_server, args.single_clients, kind)
        for kind in (kinds if args.profile_server else [])
    }
    labels = [s.label for s in servers]
    reference = labels[1]
    acceptance = {}
    for kind in kinds:
        single = results[f"{single_name} {kind}"]
        ratio = single[f"perfcost/{reference}"]
        best = min(labels[1:], key=lambda label: single[label]["p50_ms"])
        acceptance[kind] = {
            "against": reference,
            "single_p50_ratio": ratio["p50"],
            "single_p50_ratio_at_most_0.5": ratio["p50"] <= 0.5,
            "single_throughput_ratio": ratio["throughput"],
            "single_throughput_ratio_at_least_2": ratio["throughput"] >= 2,
            "fastest_mlserver": best,
            "against_fastest": single[f"perfcost/{best}"],
        }
    figures = {
        "model": str(version_dir),
        "runtime_estimator": card["targets"][TARGET]["estimator"],
        "lgb_file": str(lgb_file),
        "n_features": len(FEATURE_COLUMNS),
        "single_instance": SINGLE,
        "batch_instances": f"{args.batch_rows} GEMMs, m, n, k drawn in [32, 8192), float32, devices "
        + ", ".join(card["targets"][TARGET]["devices"]),
        "mlserver_bin": args.mlserver_bin,
        "mlserver_variants": {
            v.label: {"parallel_workers": v.parallel_workers, "omp1": v.omp1} for v in variants
        },
        "sanity": check,
        "scenarios": results,
        "floor": floor,
        "perfcost_stages_ms": stages,
        "perfcost_profile_top": profile,
        "perfcost_server_profile": server_profiles,
        "acceptance": acceptance,
        "load_average_start": started_load,
        "load_average_end": load_average(),
        "cpus": os.cpu_count(),
    }
    out = sys.stdout
    out.write(table(results, labels) + "\n")
    out.write("floor, in-process, median ms per call: " + json.dumps(floor) + "\n")
    out.write("perfcost stages, in-process, median ms per call: " + json.dumps(stages, indent=1) + "\n")
    out.write(f"perfcost in-process profile, {args.profile_calls} single-instance requests:\n{profile}\n")
    for kind, prof in server_profiles.items():
        if "error" in prof:
            out.write(f"perfcost server profile ({kind} client) failed: {prof['error']}\n")
            continue
        out.write(
            f"perfcost server under cProfile, {prof['requests']} single-instance requests from "
            f"{args.single_clients} {kind} clients: {prof['profiled_cpu_ms_per_request']:.2f} ms CPU per "
            f"request profiled, mean micro-batch {prof['mean_micro_batch']}, own time by module: "
            + json.dumps(prof["own_time_share_by_module"], indent=1)
            + "\n"
            + prof["top_functions"]
            + "\n"
        )
    out.write("acceptance: " + json.dumps(acceptance, indent=1) + "\n")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(figures, indent=1))
    log.info("wrote %s (load average %s)", args.out, load_average())
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
