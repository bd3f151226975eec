"""The real app over a real published model: valid batches, every error class, OOD, reload, tampering."""

from __future__ import annotations

import gc
import json
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import weakref
from pathlib import Path

import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient

from service.app import create_app
from service.core.settings import Settings

RTX = "NVIDIA GeForce RTX 4070"
GOOD = {
    "m": 1024,
    "n": 1024,
    "k": 1024,
    "device": RTX,
    "tile_m": 16,
    "tile_n": 16,
    "tile_k": 16,
    "kernel": "gpperf_tiled_matmul",
}


@pytest.fixture
def model_dir(trained_model_dir: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "models"
    shutil.copytree(trained_model_dir, copy)
    return copy


def make_client(model_dir: Path, **overrides) -> TestClient:
    settings = Settings(model_dir=model_dir, **overrides)
    return TestClient(create_app(settings))


@pytest.fixture
def client(model_dir: Path):
    with make_client(model_dir) as c:
        yield c


def predict(client: TestClient, *instances: dict, **extra) -> httpx.Response:
    return client.post("/v1/gemm/predict", json={"instances": list(instances), **extra})


def test_valid_batch_has_model_version_and_intervals(client: TestClient) -> None:
    r = predict(
        client, GOOD, {**GOOD, "m": 2048, "price_per_hour_usd": 1.2, "grid_gco2_per_kwh": 300}, coverage=0.8
    )
    assert r.status_code == 200
    body = r.json()
    assert body["model"] == "gemm" and body["version"]
    first, second = body["predictions"]
    for row in (first, second):
        rt = row["runtime_ms"]
        assert 0 < rt["low"] <= rt["value"] <= rt["high"]
        assert row["power_w"]["value"] > 0  # power was measured on this device
        assert 0 < row["utilization"]["value"] < 1
    assert second["cost_usd"]["value"] == pytest.approx(second["runtime_ms"]["value"] / 3.6e6 * 1.2)
    assert "cost_usd" not in first


def test_wider_coverage_gives_wider_intervals(client: TestClient) -> None:
    narrow = predict(client, GOOD, coverage=0.5).json()["predictions"][0]["runtime_ms"]
    wide = predict(client, GOOD, coverage=0.95).json()["predictions"][0]["runtime_ms"]
    assert wide["low"] < narrow["low"] and wide["high"] > narrow["high"]
    assert wide["value"] == narrow["value"]


def test_unseen_device_gets_runtime_but_no_invented_power(client: TestClient) -> None:
    row = predict(client, {"m": 512, "n": 512, "k": 512, "device": "nvidia l4"}).json()["predictions"][0]
    assert row["runtime_ms"]["value"] > 0
    assert row["power_w"] is None
    assert "measured only on NVIDIA GeForce RTX 4070" in row["unavailable"]["power_w"]
    assert row["out_of_distribution"]
    assert any("NVIDIA L4" in reason for reason in row["ood_reasons"])


def test_device_seen_in_training_is_not_flagged(client: TestClient) -> None:
    row = predict(client, {"m": 512, "n": 512, "k": 512, "op": "bmm", "batch": 4, "device": "Tesla T4"})
    assert row.json()["predictions"][0]["ood_reasons"] == []


def test_single_device_model_gives_no_number_for_another_device(tmp_path: Path, mirror: Path) -> None:
    from training.domains.gemm.train import train_gemm_model

    settings = Settings(data_mirror=mirror, model_dir=tmp_path / "models")
    train_gemm_model(["gpperf-rtx4070-tiled"], settings)
    with make_client(settings.model_dir) as c:
        row = predict(c, {"m": 512, "n": 512, "k": 512, "device": "Tesla T4"}).json()["predictions"][0]
    assert row["runtime_ms"] is None and row["utilization"] is None
    assert "trained on 1 device(s) only" in row["unavailable"]["runtime_ms"]


def test_inline_device_spec(client: TestClient) -> None:
    spec = {
        "name": "My GPU",
        "memory_gb": 16,
        "memory_bandwidth_gbps": 800,
        "sm_count": 60,
        "cores_per_sm": 128,
        "clock_mhz": 1800,
        "fp32_gflops": 27000,
        "l2_cache_mb": 32,
    }
    r = predict(client, {"m": 256, "n": 256, "k": 256, "device_spec": spec})
    assert r.status_code == 200
    assert r.json()["predictions"][0]["out_of_distribution"]


def test_out_of_range_sizes_are_flagged(client: TestClient) -> None:
    row = predict(client, {**GOOD, "m": 3, "n": 5, "k": 7}).json()["predictions"][0]
    assert row["out_of_distribution"]
    assert any(reason.startswith("m=3 outside the training range") for reason in row["ood_reasons"])


@pytest.mark.parametrize(
    ("instance", "field"),
    [
        ({**GOOD, "m": 0}, "instances.0.m"),
        ({**GOOD, "n": -5}, "instances.0.n"),
        ({**GOOD, "k": 10**12}, "instances.0.k"),
        ({**GOOD, "m": "64"}, "instances.0.m"),
        ({**GOOD, "m": True}, "instances.0.m"),
        ({**GOOD, "m": 1.5}, "instances.0.m"),
        ({**GOOD, "op": "conv"}, "instances.0.op"),
        ({**GOOD, "dtype": "float128"}, "instances.0.dtype"),
        ({**GOOD, "colour": "red"}, "instances.0.colour"),
        ({"m": 1, "n": 1, "k": 1}, "instances.0"),
        ({**GOOD, "device_spec": {"name": "x"}}, "instances.0"),
    ],
)
def test_invalid_fields_are_422_naming_the_field(client: TestClient, instance: dict, field: str) -> None:
    r = predict(client, instance)
    assert r.status_code == 422
    fields = [d["field"] for d in r.json()["detail"]]
    assert any(f.startswith(field) for f in fields), fields
    assert all(d["reason"] for d in r.json()["detail"])


def test_integral_json_numbers_are_integers(client: TestClient) -> None:
    # 1024.0 is the JSON number 1024 (JSON Schema's integer too); the answer must not differ.
    as_int = predict(client, GOOD).json()["predictions"]
    as_float = predict(client, {**GOOD, "m": 1024.0, "tile_k": 16.0}).json()["predictions"]
    assert as_float == as_int


def test_nan_and_infinity_are_rejected(client: TestClient) -> None:
    for literal in ("NaN", "Infinity", "-Infinity"):
        body = f'{{"instances": [{{"m": 8, "n": 8, "k": 8, "device": "{RTX}", "beta": {literal}}}]}}'
        r = client.post("/v1/gemm/predict", content=body, headers={"content-type": "application/json"})
        assert r.status_code == 422, literal
        assert r.json()["detail"][0]["field"] == "instances.0.beta"
    r = predict(client, GOOD, coverage=1.5)
    assert r.status_code == 422 and r.json()["detail"][0]["field"] == "coverage"


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b'{"instances": [{"m": 8, "m": 9, "n": 8, "k": 8, "device": "Tesla T4"}]}', "duplicated key 'm'"),
        (b"[" * 100_000 + b"]" * 100_000, "nested too deeply"),
        (b'{"instances": [{"m": 8, "n": 8, "k": 8, "device": "\xff\xfe"}]}', "not UTF-8"),
        (b'{"instances": [', "JSON decode error"),
    ],
)
def test_malformed_json_is_422_naming_the_body(client: TestClient, body: bytes, reason: str) -> None:
    r = client.post("/v1/gemm/predict", content=body, headers={"content-type": "application/json"})
    assert r.status_code == 422
    detail = r.json()["detail"][0]
    assert detail["field"] == "body" and reason in detail["reason"]


def test_ten_mib_body_is_413(client: TestClient) -> None:
    r = client.post(
        "/v1/gemm/predict", content=b" " * (10 * 1024 * 1024), headers={"content-type": "application/json"}
    )
    assert r.status_code == 413


def test_empty_batch_is_422(client: TestClient) -> None:
    r = client.post("/v1/gemm/predict", json={"instances": []})
    assert r.status_code == 422 and r.json()["detail"][0]["field"] == "instances"


def test_unknown_device_is_404_saying_how_to_add_one(client: TestClient) -> None:
    r = predict(client, GOOD, {**GOOD, "device": "Quantum GPU 9000"})
    assert r.status_code == 404
    detail = r.json()["detail"][0]
    assert detail["field"] == "instances.1.device"
    assert "device_spec" in detail["reason"] and "PERFCOST_DEVICE_DIR" in detail["reason"]


def test_batch_over_the_limit_is_413(model_dir: Path) -> None:
    with make_client(model_dir, max_batch=3) as c:
        assert predict(c, *[GOOD] * 3).status_code == 200
        r = predict(c, *[GOOD] * 4)
        assert r.status_code == 413 and "limit of 3" in r.json()["detail"][0]["reason"]


def test_request_over_its_time_budget_is_503_naming_the_setting(model_dir: Path) -> None:
    # 8,000 rows take well over 50 ms to predict; a liveness probe takes well under it, even on a busy
    # machine (a 10 ms budget failed the probe with four jobs sharing two cores).
    rows = [{**GOOD, "m": 16 + i} for i in range(8000)]
    with make_client(model_dir, request_timeout_s=0.05) as c:
        r = predict(c, *rows)
        assert r.status_code == 503
        detail = r.json()["detail"][0]
        assert detail["field"] == "request" and "PERFCOST_REQUEST_TIMEOUT_S" in detail["reason"]
        assert c.get("/healthz").status_code == 200  # quick requests still fit the budget


def test_body_over_the_limit_is_413(model_dir: Path) -> None:
    with make_client(model_dir, max_body_bytes=2048) as c:
        r = predict(c, *[GOOD] * 50)
        assert r.status_code == 413 and r.json()["detail"][0]["field"] == "body"


def test_api_and_in_process_predictions_are_identical(client: TestClient, model_dir: Path) -> None:
    from service.core.devices import DeviceCatalog
    from service.core.registry import ModelRegistry
    from service.domains import DOMAINS
    from service.domains.gemm import runtime as gemm
    from service.domains.gemm.schemas import GemmInstance

    instances = [{**GOOD, "m": m, "k": k} for m in (64, 700, 4096) for k in (128, 2048)]
    api = predict(client, *instances).json()["predictions"]
    model = ModelRegistry(model_dir, DOMAINS).reload().get("gemm")
    assert model is not None
    local = gemm.predict([GemmInstance(**i) for i in instances], 0.9, model, DeviceCatalog.default())
    assert [r["runtime_ms"] for r in api] == [r["runtime_ms"] for r in local]
    assert [r["power_w"] for r in api] == [r["power_w"] for r in local]


def test_models_devices_health_and_metrics(client: TestClient) -> None:
    assert client.get("/healthz").json() == {"status": "alive"}
    ready = client.get("/readyz")
    assert ready.status_code == 200 and "gemm" in ready.json()["loaded"]
    models = client.get("/v1/models").json()["models"]
    card = models[0]
    assert card["name"] == "gemm" and card["datasets"][0]["files"][0]["sha256"]
    assert {"runtime_ms", "power_w"} <= set(card["targets"]) and card["libraries"]["lightgbm"]
    names = [d["name"] for d in client.get("/v1/devices").json()["devices"]]
    assert "NVIDIA H100 80GB HBM3" in names and RTX in names
    predict(client, GOOD)
    text = client.get("/metrics").text
    assert 'perfcost_requests_total{method="POST",route="/v1/gemm/predict",status="200"}' in text
    assert "perfcost_model_loaded{" in text


def test_model_card_by_name_and_unknown_or_traversing_names(client: TestClient) -> None:
    assert client.get("/v1/models/gemm").json()["name"] == "gemm"
    for name in ("nope", "..%2F..%2Fetc%2Fpasswd", "%2E%2E", "../../etc/passwd"):
        r = client.get(f"/v1/models/{name}")
        assert r.status_code == 404, name
        assert r.json()["detail"][0]["reason"], name
    r = client.get("/v1/models/%2E%2E")
    assert "no loaded model named '..'" in r.json()["detail"][0]["reason"]


def test_no_model_means_alive_but_not_ready(tmp_path: Path) -> None:
    with make_client(tmp_path / "empty") as c:
        assert c.get("/healthz").status_code == 200
        r = c.get("/readyz")
        assert r.status_code == 503 and "no model is loaded" in r.json()["reason"]
        assert predict(c, GOOD).status_code == 503


def _versions(model_dir: Path) -> list[Path]:
    return sorted(p for p in (model_dir / "gemm").iterdir() if p.is_dir())


def _republish_copy(model_dir: Path, suffix: str) -> Path:
    """A second, newer version: the published one copied under a later name with its card updated."""
    src = _versions(model_dir)[-1]
    dst = src.parent / (src.name + suffix)
    shutil.copytree(src, dst)
    card = json.loads((dst / "card.json").read_text())
    card["version"] = dst.name
    (dst / "card.json").write_text(json.dumps(card))
    return dst


def test_tampered_model_file_is_refused_and_previous_version_serves(model_dir: Path) -> None:
    good = _versions(model_dir)[-1].name
    bad = _republish_copy(model_dir, "-tampered")
    model_file = next(p for p in bad.iterdir() if p.name.startswith("runtime_ms"))
    model_file.write_bytes(model_file.read_bytes()[:-100] + b"x" * 100)
    with make_client(model_dir) as c:
        assert predict(c, GOOD).json()["version"] == good
        refused = c.get("/v1/models").json()["refused"]
        assert refused[0]["version"] == bad.name and "sha256" in refused[0]["reason"]
        assert c.get("/readyz").json()["refused"][0]["version"] == bad.name
        assert c.get(f"/v1/models/gemm/versions/{good}").json()["version"] == good
        r = c.get(f"/v1/models/gemm/versions/{bad.name}")
        assert r.status_code == 404 and "was refused" in r.json()["detail"][0]["reason"]
        for version in ("20000101T000000Z", "%2E%2E"):
            r = c.get(f"/v1/models/gemm/versions/{version}")
            assert r.status_code == 404 and r.json()["detail"][0]["field"] == "version", version
            assert "is not loaded" in r.json()["detail"][0]["reason"]
        r = c.get("/v1/models/gemm/versions/..%2F..%2Fetc%2Fpasswd")
        assert r.status_code == 404 and r.json()["detail"][0]["reason"]
        assert c.get(f"/v1/models/nope/versions/{good}").json()["detail"][0]["field"] == "name"


def test_feature_version_mismatch_is_refused(model_dir: Path) -> None:
    card_path = _versions(model_dir)[-1] / "card.json"
    card = json.loads(card_path.read_text())
    card["feature_version"] = "gemm-0"
    card_path.write_text(json.dumps(card))
    with make_client(model_dir) as c:
        r = c.get("/readyz")
        assert r.status_code == 503 and "gemm-0" in r.json()["refused"][0]["reason"]


def test_baseline_that_is_not_a_feature_column_is_refused(model_dir: Path) -> None:
    card_path = _versions(model_dir)[-1] / "card.json"
    card = json.loads(card_path.read_text())
    card["targets"]["runtime_ms"]["baseline"] = "log_roofline_seconds"
    card_path.write_text(json.dumps(card))
    with make_client(model_dir) as c:
        r = c.get("/readyz")
        reason = r.json()["refused"][0]["reason"]
        assert r.status_code == 503 and "'log_roofline_seconds' is not a feature column" in reason


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("column", "kk", "split on 'kk', not a feature column"),
        ("value", "32", "split value must be a finite number, got '32'"),
        ("capped_from", None, None),
    ],
)
def test_split_entries_that_do_not_make_sense_are_refused(
    model_dir: Path, field: str, value: object, message: str | None
) -> None:
    card_path = _versions(model_dir)[-1] / "card.json"
    card = json.loads(card_path.read_text())
    below = card["targets"]["runtime_ms"]["below"]
    assert below["column"] == "k" and below["value"] == 32 and below["capped_from"] == 2
    below[field] = value
    card_path.write_text(json.dumps(card))
    with make_client(model_dir) as c:
        r = c.get("/readyz")
        if message is None:  # no cap floor: every row below the split is capped, and the model loads
            assert r.status_code == 200
        else:
            assert r.status_code == 503 and message in r.json()["refused"][0]["reason"]


def test_a_target_entry_without_its_calibration_is_refused_naming_it(model_dir: Path) -> None:
    card_path = _versions(model_dir)[-1] / "card.json"
    card = json.loads(card_path.read_text())
    del card["targets"]["runtime_ms"]["below"]["calibration"]
    card_path.write_text(json.dumps(card))
    with make_client(model_dir) as c:
        r = c.get("/readyz")
        reason = r.json()["refused"][0]["reason"]
        assert r.status_code == 503 and "runtime_ms below the split lacks calibration" in reason


def test_reload_needs_the_token_and_swaps_without_failures(model_dir: Path) -> None:
    with make_client(model_dir) as c:
        assert c.post("/v1/admin/reload").status_code == 403  # disabled without a token
    with make_client(model_dir, admin_token="s3cret") as c:
        old = predict(c, GOOD).json()["version"]
        assert c.post("/v1/admin/reload", headers={"Authorization": "Bearer nope"}).status_code == 401
        new = _republish_copy(model_dir, "-next").name
        seen: set[str] = set()
        failures: list[int] = []
        stop = threading.Event()

        def hammer() -> None:
            while not stop.is_set():
                r = predict(c, GOOD, GOOD)
                if r.status_code != 200:
                    failures.append(r.status_code)
                else:
                    seen.add(r.json()["version"])

        threads = [threading.Thread(target=hammer) for _ in range(4)]
        for t in threads:
            t.start()
        time.sleep(0.3)
        for _ in range(3):
            assert c.post("/v1/admin/reload", headers={"Authorization": "Bearer s3cret"}).status_code == 200
        time.sleep(0.3)
        stop.set()
        for t in threads:
            t.join()
        assert failures == []
        assert seen <= {old, new} and new in seen
        assert predict(c, GOOD).json()["version"] == new


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_end_to_end_over_real_uvicorn(model_dir: Path, tmp_path: Path) -> None:
    port = _free_port()
    env = {"PERFCOST_MODEL_DIR": str(model_dir), "PATH": "/usr/bin:/bin"}
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "uvicorn",
            "--factory",
            "service.app:app_from_env",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
        ],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.time() + 60
        while time.time() < deadline:
            try:
                if httpx.get(f"{url}/readyz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.2)
        else:
            pytest.fail("uvicorn did not become ready in 60 s")
        r = httpx.post(f"{url}/v1/gemm/predict", json={"instances": [GOOD] * 3}, timeout=10)
        assert r.status_code == 200
        values = [p["runtime_ms"]["value"] for p in r.json()["predictions"]]
        assert np.allclose(values, values[0]) and values[0] > 0
        assert httpx.get(f"{url}/openapi.json", timeout=5).json()["paths"]["/v1/gemm/predict"]

        # SIGHUP picks up a newly published version.
        (old,) = (p for p in (model_dir / "gemm").iterdir() if p.is_dir())
        new = model_dir / "gemm" / f"{old.name}-hup"
        shutil.copytree(old, new)
        card = json.loads((new / "card.json").read_text())
        (new / "card.json").write_text(json.dumps({**card, "version": new.name}))
        proc.send_signal(signal.SIGHUP)
        deadline = time.time() + 20
        while httpx.get(f"{url}/v1/models/gemm", timeout=5).json()["version"] != new.name:
            assert time.time() < deadline, "SIGHUP did not load the new version in 20 s"
            time.sleep(0.2)
        r = httpx.post(f"{url}/v1/gemm/predict", json={"instances": [GOOD]}, timeout=10)
        assert r.json()["version"] == new.name
        assert proc.poll() is None
    finally:
        proc.terminate()
        proc.wait(timeout=20)


@pytest.mark.parametrize(
    ("headers", "body", "reason"),
    [
        ({"content-type": "text/plain"}, json.dumps({"instances": [GOOD]}), "Content-Type application/json"),
        ({}, json.dumps({"instances": [GOOD]}), "Content-Type application/json"),
        ({"content-type": "application/json"}, "", "the body is empty"),
        ({"content-type": "application/json"}, "[1, 2]", "valid dictionary"),
    ],
)
def test_a_body_that_is_not_a_json_object_is_422_saying_why(
    client: TestClient, headers: dict[str, str], body: str, reason: str
) -> None:
    r = client.post("/v1/gemm/predict", content=body, headers=headers)
    assert r.status_code == 422
    detail = r.json()["detail"][0]
    assert detail["field"] == "body" and reason in detail["reason"], detail


def test_json_media_types_with_parameters_or_suffixes_are_accepted(client: TestClient) -> None:
    body = json.dumps({"instances": [GOOD]})
    for content_type in ("application/json; charset=utf-8", "application/vnd.perfcost+json"):
        r = client.post("/v1/gemm/predict", content=body, headers={"content-type": content_type})
        assert r.status_code == 200, (content_type, r.text)


def test_openapi_documents_every_prediction_body_and_every_reference_resolves(client: TestClient) -> None:
    document = client.get("/openapi.json").json()
    schemas = document["components"]["schemas"]
    for path, model in (
        ("/v1/gemm/predict", "GemmPredictRequest"),
        ("/v1/cpu/predict", "CpuPredictRequest"),
        ("/v1/mlir/predict", "MlirPredictRequest"),
    ):
        body = document["paths"][path]["post"]["requestBody"]
        assert body["required"] is True
        assert body["content"]["application/json"]["schema"] == {"$ref": f"#/components/schemas/{model}"}
        assert "instances" in schemas[model]["properties"]
    assert schemas["GemmInstance"]["required"] == ["m", "n", "k"]
    refs = set(re.findall(r'"\$ref": "#/components/schemas/([^"]+)"', json.dumps(document)))
    assert refs and refs <= set(schemas), refs - set(schemas)


def test_opentelemetry_checks_run_per_request_only_when_enabled(
    model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from opentelemetry import trace

    calls = []
    real = trace.get_tracer_provider
    monkeypatch.setattr(trace, "get_tracer_provider", lambda: calls.append(1) or real())
    for enabled, expect_calls in ((False, False), (True, True)):
        calls.clear()
        app = create_app(Settings(model_dir=model_dir, opentelemetry=enabled))
        with TestClient(app) as c:
            assert c.get("/healthz").status_code == 200
        assert bool(calls) is expect_calls, enabled


def test_the_heap_is_frozen_after_loading_and_a_replaced_model_is_still_collected(model_dir: Path) -> None:
    with make_client(model_dir, admin_token="s3cret") as c:
        assert gc.get_freeze_count() > 0  # the loaded app is out of every later collection's way
        old = c.app.state.registry.snapshot.get("gemm")  # type: ignore[attr-defined]
        old.cache["cycle"] = old  # garbage only cyclic collection can free
        gone = weakref.ref(old)
        del old
        _republish_copy(model_dir, "-next")
        assert c.post("/v1/admin/reload", headers={"Authorization": "Bearer s3cret"}).status_code == 200
        assert gone() is None
