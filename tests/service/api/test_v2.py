"""``/v2``: the Open Inference Protocol over the real GEMM model, through tritonclient (binary and JSON
tensors) and raw requests; every value exactly the native ``/v1`` route's, every error naming its tensor."""

from __future__ import annotations

import json
import math
import socket
import struct
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import tritonclient.http as triton
import uvicorn
from fastapi.testclient import TestClient
from tritonclient.utils import InferenceServerException

from service.app import create_app
from service.core.settings import Settings
from tests.conftest import CPU_SUITE
from tests.service.domains.mlir.test_features import MATMUL

RTX = "NVIDIA GeForce RTX 4070"
TILED = "gpperf_tiled_matmul"
INTERVALS = ("runtime_ms", "power_w", "energy_j", "utilization", "cost_usd", "co2_g")
# Every field set in every row, as binary tensors need; None in an FP64 column goes as NaN.
FULL: list[dict[str, Any]] = [
    {"m": 1024, "n": 1024, "k": 1024, "batch": 1, "op": "gemm", "device": RTX, "kernel": TILED,
     "tile_m": 16, "price_per_hour_usd": 1.2, "grid_gco2_per_kwh": 300.0},
    # A training device where power was not measured: power and energy are null.
    {"m": 512, "n": 256, "k": 2048, "batch": 4, "op": "bmm", "device": "Tesla T4", "kernel": TILED,
     "tile_m": 32, "price_per_hour_usd": None, "grid_gco2_per_kwh": 450.0},
    # A device the model never saw.
    {"m": 512, "n": 512, "k": 512, "batch": 1, "op": "gemm", "device": "nvidia l4", "kernel": TILED,
     "tile_m": 16, "price_per_hour_usd": 0.8, "grid_gco2_per_kwh": None},
    # Outside the training sizes.
    {"m": 3, "n": 5, "k": 7, "batch": 1, "op": "gemm", "device": RTX, "kernel": TILED,
     "tile_m": 16, "price_per_hour_usd": None, "grid_gco2_per_kwh": None},
]  # fmt: skip
OUTPUT_SUBSET = ("runtime_ms", "runtime_ms_low", "runtime_ms_high", "power_w", "power_w_low", "power_w_high",
                 "utilization", "utilization_low", "utilization_high", "energy_j", "energy_j_low",
                 "energy_j_high", "cost_usd", "cost_usd_low", "cost_usd_high", "co2_g", "co2_g_low",
                 "co2_g_high", "out_of_distribution", "ood_reasons")  # fmt: skip
DATATYPES = {"m": "INT64", "n": "INT64", "k": "INT64", "batch": "INT64", "tile_m": "INT64",
             "op": "BYTES", "device": "BYTES", "kernel": "BYTES",
             "price_per_hour_usd": "FP64", "grid_gco2_per_kwh": "FP64"}  # fmt: skip


@pytest.fixture
def gemm_settings(settings: Settings, trained_model_dir: Path) -> Settings:
    return settings.model_copy(update={"model_dir": trained_model_dir})


@pytest.fixture
def client(gemm_settings: Settings) -> Iterator[TestClient]:
    with TestClient(create_app(gemm_settings)) as c:
        yield c


@pytest.fixture
def server(gemm_settings: Settings) -> Iterator[str]:
    """A real uvicorn server on a free local port, in a background thread."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    config = uvicorn.Config(create_app(gemm_settings), host="127.0.0.1", port=port, log_level="warning")
    uv = uvicorn.Server(config)
    thread = threading.Thread(target=uv.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not uv.started:
        assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.05)
    yield f"127.0.0.1:{port}"
    uv.should_exit = True
    thread.join(timeout=30)


def native(client: TestClient, rows: list[dict[str, Any]], coverage: float = 0.9) -> dict[str, Any]:
    instances = [{k: v for k, v in row.items() if v is not None} for row in rows]
    r = client.post("/v1/gemm/predict", json={"instances": instances, "coverage": coverage})
    assert r.status_code == 200, r.text
    return r.json()


def assert_same(outputs: dict[str, Any], predictions: list[dict[str, Any]]) -> None:
    """Outputs equal the native rows exactly: NaN where the native value is null."""
    for target in INTERVALS:
        for suffix, part in (("", "value"), ("_low", "low"), ("_high", "high")):
            column = [float(v) for v in outputs[target + suffix]]
            assert len(column) == len(predictions)
            for got, row in zip(column, predictions, strict=True):
                interval = row.get(target)
                if interval is None:
                    assert math.isnan(got), (target, suffix, got)
                else:
                    assert got == interval[part], (target, suffix, got, interval[part])
    assert [bool(v) for v in outputs["out_of_distribution"]] == [
        r["out_of_distribution"] for r in predictions
    ]
    reasons = [v.decode() if isinstance(v, bytes) else v for v in outputs["ood_reasons"]]
    assert reasons == ["; ".join(r["ood_reasons"]) for r in predictions]


def triton_inputs(rows: list[dict[str, Any]], binary: bool) -> list[triton.InferInput]:
    inputs = []
    for name, datatype in DATATYPES.items():
        values = [row[name] for row in rows]
        if datatype == "BYTES":
            array = np.array([v.encode() for v in values], dtype=np.object_)
        elif datatype == "FP64":
            array = np.array([math.nan if v is None else v for v in values], dtype=np.float64)
        else:
            array = np.array(values, dtype=np.int64)
        tensor = triton.InferInput(name, [len(rows)], datatype)
        inputs.append(tensor.set_data_from_numpy(array, binary_data=binary))
    return inputs


def test_tritonclient_binary_and_json_tensors_equal_the_native_route(client: TestClient, server: str) -> None:
    expected = native(client, FULL, coverage=0.8)
    predictions = expected["predictions"]
    # The rows do what they are here for: a null power, a finite one, and an out-of-distribution row.
    assert predictions[1]["power_w"] is None and predictions[0]["power_w"] is not None
    assert predictions[2]["out_of_distribution"] and predictions[3]["out_of_distribution"]

    tc = triton.InferenceServerClient(url=server)
    assert tc.is_server_live() and tc.is_server_ready() and tc.is_model_ready("gemm")
    assert tc.is_model_ready("gemm", expected["version"]) and not tc.is_model_ready("gemm", "no-such")
    meta = tc.get_model_metadata("gemm")
    assert meta["versions"] == [expected["version"]]
    names = [o["name"] for o in meta["outputs"]]
    for binary in (True, False):
        wanted = [f"{t}{s}" for t in INTERVALS for s in ("", "_low", "_high")]
        wanted += ["out_of_distribution", "ood_reasons"]
        assert set(wanted) <= set(names)
        result = tc.infer(
            "gemm",
            triton_inputs(FULL, binary),
            model_version=expected["version"] if binary else "",
            outputs=[triton.InferRequestedOutput(n, binary_data=binary) for n in wanted],
            request_id=f"req-{binary}",
            parameters={"coverage": 0.8},
        )
        response = result.get_response()
        assert response["model_name"] == "gemm" and response["model_version"] == expected["version"]
        assert response["id"] == f"req-{binary}"
        assert [o["name"] for o in response["outputs"]] == wanted
        assert all(("data" in o) != binary for o in response["outputs"])
        assert_same({n: result.as_numpy(n) for n in wanted}, predictions)
    # No outputs named: all of them, as binary data (tritonclient asks so); JSON inputs, binary outputs.
    everything = tc.infer("gemm", triton_inputs(FULL, False), parameters={"coverage": 0.8})
    assert [o["name"] for o in everything.get_response()["outputs"]] == names
    assert_same({n: everything.as_numpy(n) for n in names}, predictions)
    colour = triton.InferInput("colour", [4], "INT64").set_data_from_numpy(np.zeros(4, dtype=np.int64))
    with pytest.raises(InferenceServerException, match="input 'colour'"):
        tc.infer("gemm", [*triton_inputs(FULL, True), colour])
    tc.close()


def infer(client: TestClient, body: dict[str, Any], path: str = "/v2/models/gemm/infer") -> httpx.Response:
    return client.post(path, content=json.dumps(body))


def tensor(name: str, data: list[Any], datatype: str | None = None, shape: list[int] | None = None) -> dict:
    return {
        "name": name,
        "datatype": datatype or DATATYPES[name],
        "shape": shape or [len(data)],
        "data": data,
    }


def test_json_tensors_with_nulls_defaults_and_n_by_1_shapes_equal_the_native_route(
    client: TestClient,
) -> None:
    rows = [{**row, "tile_m": None if i == 1 else row["tile_m"]} for i, row in enumerate(FULL)]
    inputs = [tensor(n, [row[n] for row in rows]) for n in DATATYPES if n not in ("batch", "op", "tile_m")]
    # [N, 1] with nested data; batch and op left out entirely (their defaults), tile_m null in row 1.
    inputs.append(tensor("tile_m", [[row["tile_m"]] for row in rows], shape=[len(rows), 1]))
    defaults = [{**row, "batch": None, "op": None} for row in rows]
    expected = native(client, defaults)
    r = infer(client, {"id": "abc", "inputs": inputs, "outputs": [{"name": n} for n in OUTPUT_SUBSET]})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["id"] == "abc" and body["model_version"] == expected["version"]
    outputs = {o["name"]: o for o in body["outputs"]}
    assert list(outputs) == list(OUTPUT_SUBSET)
    assert outputs["power_w"]["data"][1] is None  # JSON has no NaN: null where the native value is null
    assert all(o["shape"] == [len(rows)] for o in outputs.values())
    data = {n: [math.nan if v is None else v for v in o["data"]] for n, o in outputs.items()}
    assert_same(data, expected["predictions"])


def binary_body(header: dict[str, Any], *chunks: bytes) -> tuple[bytes, dict[str, str]]:
    text = json.dumps(header).encode()
    return text + b"".join(chunks), {"Inference-Header-Content-Length": str(len(text))}


def bytes_tensor(*values: str) -> bytes:
    return b"".join(struct.pack("<I", len(v.encode())) + v.encode() for v in values)


def test_raw_binary_request_and_response(client: TestClient) -> None:
    """The extension by hand: length-prefixed BYTES in, binary FP64 and BYTES out with the header."""
    ints = np.array([1024], dtype="<i8").tobytes()
    device = bytes_tensor(RTX)
    inputs = [
        {"name": n, "datatype": "INT64", "shape": [1], "parameters": {"binary_data_size": 8}} for n in "mnk"
    ]
    inputs.append(
        {"name": "device", "datatype": "BYTES", "shape": [1], "parameters": {"binary_data_size": len(device)}}
    )
    binary = {"binary_data": True}
    outputs = [
        {"name": "runtime_ms", "parameters": binary},
        {"name": "ood_reasons", "parameters": binary},
        {"name": "out_of_distribution"},
    ]
    body, headers = binary_body({"inputs": inputs, "outputs": outputs}, ints, ints, ints, device)
    r = client.post("/v2/models/gemm/infer", content=body, headers=headers)
    assert r.status_code == 200, r.text
    size = int(r.headers["Inference-Header-Content-Length"])
    head = json.loads(r.content[:size])
    runtime, reasons, flags = head["outputs"]
    assert runtime["parameters"] == {"binary_data_size": 8} and "data" not in runtime
    expected = native(client, [{"m": 1024, "n": 1024, "k": 1024, "device": RTX}])["predictions"][0]
    assert np.frombuffer(r.content[size : size + 8], "<f8")[0] == expected["runtime_ms"]["value"]
    raw = r.content[size + 8 :]
    assert len(raw) == reasons["parameters"]["binary_data_size"]
    assert (
        raw[4:].decode() == "; ".join(expected["ood_reasons"])
        and struct.unpack("<I", raw[:4])[0] == len(raw) - 4
    )
    assert flags["data"] == [expected["out_of_distribution"]]


def test_health_and_metadata(client: TestClient) -> None:
    assert client.get("/v2/health/live").json() == {"live": True}
    assert client.get("/v2/health/ready").status_code == client.get("/readyz").status_code == 200
    server = client.get("/v2").json()
    assert server["name"] == "perfcost" and "binary_tensor_data" in server["extensions"]
    version = client.get("/v1/models/gemm").json()["version"]
    meta = client.get("/v2/models/gemm").json()
    assert meta == client.get(f"/v2/models/gemm/versions/{version}").json()
    assert meta["name"] == "gemm" and meta["versions"] == [version] and meta["platform"]
    inputs = {t["name"]: t for t in meta["inputs"]}
    for name, datatype in DATATYPES.items():
        assert inputs[name]["datatype"] == datatype and inputs[name]["shape"] == [-1]
    assert inputs["m"]["parameters"]["required"] and inputs["batch"]["parameters"]["default"] == 1
    outputs = {t["name"]: t for t in meta["outputs"]}
    assert (
        outputs["power_w_high"]["datatype"] == "FP64"
        and "NaN" in outputs["power_w"]["parameters"]["description"]
    )
    assert (
        outputs["out_of_distribution"]["datatype"] == "BOOL" and outputs["ood_reasons"]["datatype"] == "BYTES"
    )
    assert meta["parameters"]["request_parameters"]["coverage"]["default"] == 0.9
    assert client.get("/v2/models/gemm/ready").json() == {"ready": True, "name": "gemm"}
    r = client.get("/v2/models/gemm/versions/0000/ready")
    assert r.status_code == 404 and "'0000'" in r.json()["error"] and version in r.json()["error"]
    r = client.get("/v2/models/resnet")
    assert r.status_code == 404 and "'resnet'" in r.json()["error"]


def test_not_loaded_is_503_with_the_reason_and_not_ready(settings: Settings) -> None:
    with TestClient(create_app(settings)) as c:
        assert c.get("/readyz").status_code == 503
        r = c.get("/v2/health/ready")
        assert (
            r.status_code == 503 and r.json()["ready"] is False and "no model is loaded" in r.json()["error"]
        )
        for r in (c.get("/v2/models/gemm/ready"), infer(c, {"inputs": [tensor("m", [8])]})):
            assert r.status_code == 503
            assert (
                "no 'gemm' model is loaded" in r.json()["error"] and r.json()["detail"][0]["field"] == "model"
            )


GOOD_INPUTS = [
    tensor("m", [64, 64]),
    tensor("n", [64, 64]),
    tensor("k", [64, 64]),
    tensor("device", [RTX, RTX]),
]


def replaced(name: str, new: dict[str, Any] | None) -> list[dict[str, Any]]:
    kept = [t for t in GOOD_INPUTS if t["name"] != name]
    return kept + ([new] if new is not None else [])


@pytest.mark.parametrize(
    ("body", "names"),
    [
        ({"inputs": replaced("m", tensor("m", [64.0, 64.0], "FP64"))}, ["input 'm'", "FP64", "INT64"]),
        ({"inputs": replaced("n", tensor("n", [64]))}, ["input 'n'", "1 rows"]),
        ({"inputs": replaced("k", tensor("k", [64], shape=[2]))}, ["input 'k'", "1 data elements", "[2]"]),
        (
            {"inputs": replaced("k", tensor("k", [64, 64, 64, 64], shape=[2, 2]))},
            ["input 'k'", "[N] or [N, 1]"],
        ),
        ({"inputs": [*GOOD_INPUTS, tensor("colour", [1, 2], "INT64")]}, ["input 'colour'", "m, n, k"]),
        ({"inputs": replaced("k", None)}, ["input 'k'", "required"]),
        ({"inputs": replaced("m", tensor("m", [64, 0]))}, ["input 'm' row 1", "greater than 0"]),
        ({"inputs": replaced("m", tensor("m", [64, "64"]))}, ["input 'm' row 1", "integer"]),
        ({"inputs": replaced("device", tensor("device", [RTX, "Quantum 9000"]))}, ["input 'device' row 1"]),
        ({"inputs": replaced("device", None)}, ["row 0", "device"]),
        ({"inputs": GOOD_INPUTS, "parameters": {"coverage": 1.5}}, ["parameter 'coverage'"]),
        ({"inputs": GOOD_INPUTS, "parameters": {"colour": 1}}, ["parameter 'colour'", "coverage"]),
        ({"inputs": GOOD_INPUTS, "outputs": [{"name": "speed"}]}, ["output 'speed'", "runtime_ms"]),
        ({"inputs": [{**GOOD_INPUTS[0], "shape": "two"}]}, ["input 'm'", "shape"]),
        ({"inputs": []}, ["inputs"]),
    ],
)
def test_bad_tensors_are_400_naming_the_tensor(
    client: TestClient, body: dict[str, Any], names: list[str]
) -> None:
    r = infer(client, body)
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    for name in names:
        assert name in error, error
    assert r.json()["detail"] and all(d["field"] and d["reason"] for d in r.json()["detail"])


@pytest.mark.parametrize(
    ("inputs", "chunks", "names"),
    [
        ([("m", "INT64", 16)], [b"\0" * 16], ["input 'm'", "16 bytes", "takes 8"]),
        ([("m", "INT64", 8)], [b"\0" * 4], ["input 'm'", "declares 8 bytes"]),
        ([("m", "INT64", 8)], [b"\0" * 12], ["4 bytes follow"]),
        ([("device", "BYTES", 6)], [struct.pack("<I", 9) + b"ab"], ["input 'device'", "element 0"]),
        ([("device", "BYTES", 5)], [struct.pack("<I", 1) + b"\xff"], ["input 'device' row 0", "UTF-8"]),
    ],
)
def test_bad_binary_data_is_400_naming_the_tensor(
    client: TestClient, inputs: list[tuple[str, str, int]], chunks: list[bytes], names: list[str]
) -> None:
    header = {"inputs": [{"name": n, "datatype": d, "shape": [1], "parameters": {"binary_data_size": s}}
                         for n, d, s in inputs]}  # fmt: skip
    binary = {n for n, _, _ in inputs}
    header["inputs"] += [
        {**t, "data": t["data"][:1], "shape": [1]} for t in GOOD_INPUTS if t["name"] not in binary
    ]
    body, headers = binary_body(header, *chunks)
    r = client.post("/v2/models/gemm/infer", content=body, headers=headers)
    assert r.status_code == 400, r.text
    for name in names:
        assert name in r.json()["error"], r.json()["error"]


def test_version_model_batch_and_header_errors(client: TestClient, gemm_settings: Settings) -> None:
    body = {"inputs": GOOD_INPUTS}
    version = client.get("/v1/models/gemm").json()["version"]
    assert infer(client, body, f"/v2/models/gemm/versions/{version}/infer").status_code == 200
    r = infer(client, body, "/v2/models/gemm/versions/1999/infer")
    assert r.status_code == 404 and "'1999'" in r.json()["error"] and version in r.json()["error"]
    r = infer(client, body, "/v2/models/bert/infer")
    assert r.status_code == 404 and "'bert'" in r.json()["error"]
    r = client.post("/v2/models/gemm/infer", content=b"{", headers={"Inference-Header-Content-Length": "99"})
    assert r.status_code == 400 and "Inference-Header-Content-Length" in r.json()["error"]
    assert client.post("/v2/models/gemm/infer", content=b"{nope").status_code == 400
    with TestClient(create_app(gemm_settings.model_copy(update={"max_batch": 1}))) as small:
        r = infer(small, body)
        assert r.status_code == 413 and "PERFCOST_MAX_BATCH" in r.json()["error"]


def test_cpu_and_mlir_come_from_the_same_generic_mapping(
    settings: Settings, cpu_model_dir: Path, mlir_model_dir: Path, tmp_path: Path
) -> None:
    root = tmp_path / "both"
    root.mkdir()
    for source in (cpu_model_dir, mlir_model_dir):
        for domain in source.iterdir():
            (root / domain.name).symlink_to(domain)
    with TestClient(create_app(settings.model_copy(update={"model_dir": root}))) as c:
        cpu_row = {"vendor": "AMD", "model_name": "EPYC 7742", "nominal_mhz": 2250.0, "cores_per_socket": 64,
                   "sockets": 2}  # fmt: skip
        expected = c.post("/v1/cpu/predict", json={"instances": [cpu_row], "suite": CPU_SUITE}).json()
        meta = c.get("/v2/models/cpu").json()
        datatypes = {t["name"]: t["datatype"] for t in meta["inputs"]}
        inputs = [tensor(k, [v], datatypes[k]) for k, v in cpu_row.items()]
        r = infer(c, {"inputs": inputs, "parameters": {"suite": CPU_SUITE}}, "/v2/models/cpu/infer")
        assert r.status_code == 200, r.text
        out = {o["name"]: o["data"][0] for o in r.json()["outputs"]}
        row = expected["predictions"][0]
        for bench, interval in [*row["benchmarks"].items(), ("score", row["score"])]:
            assert (out[bench], out[f"{bench}_low"], out[f"{bench}_high"]) == tuple(interval.values())
        r = infer(c, {"inputs": inputs}, "/v2/models/cpu/infer")
        assert r.status_code == 400 and "parameter 'suite'" in r.json()["error"]

        expected = c.post("/v1/mlir/predict", json={"instances": [{"mlir": MATMUL}]}).json()["predictions"][0]
        r = infer(c, {"inputs": [tensor("mlir", [MATMUL], "BYTES")]}, "/v2/models/mlir/infer")
        assert r.status_code == 200, r.text
        out = {o["name"]: o["data"][0] for o in r.json()["outputs"]}
        assert out["runtime_ms"] == expected["runtime_ms"]["value"]
        assert out["summary_max_depth"] == expected["summary"]["max_depth"]
        assert out["spills_high"] == expected["spills"]["high"]
        assert out["summary_estimated_flops"] == expected["summary"]["estimated_flops"]
        r = infer(c, {"inputs": [tensor("mlir", ["hello"], "BYTES")]}, "/v2/models/mlir/infer")
        assert r.status_code == 400 and "input 'mlir' row 0" in r.json()["error"]
