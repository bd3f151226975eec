"""``/v1/cpu``: the real app over a small real CPU model (two Int_rate benchmarks and the score)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient

from service.app import create_app
from service.core.model import TabularModel
from service.core.settings import Settings
from service.domains.cpu import features as cpu_features
from service.domains.cpu import runtime as domain
from service.domains.cpu.schemas import CpuInstance, CpuPredictRequest
from tests.conftest import CPU_BENCHMARKS as BENCHMARKS
from tests.conftest import CPU_SUITE as SUITE

GOOD: dict[str, Any] = {
    "vendor": "Intel",
    "model_name": "Xeon Platinum 8260L",
    "nominal_mhz": 2400,
    "max_mhz": 3900,
    "cpus": 96,
    "threads_per_core": 2,
    "cores_per_socket": 24,
    "sockets": 2,
    "numas": 4,
    "l1d_cache_kb": 32,
    "l1i_cache_kb": 32,
    "l2_cache_kb": 1024,
    "l3_cache_kb": 36608,
    "mem_kb": 394416876,
    "mem_channels": 24,
    "channel_kb": 16777216,
    "mem_data_rate": 2933,
    "storage_gb": 1200,
    "os_vid": 12.4,
    "threads_or_copies": 96,
    "hardware_vendor": "Huawei",
    "test_sponsor": "Huawei",
    "arch": "x86_64",
    "os_name": "SLES",
    "os": "SUSE Linux Enterprise Server 12 SP4 (x86_64)",
    "compiler": "C/C++: Version 19.0.1.144 of Intel C/C++",
    "parallel": "No",
    "file_system": "xfs",
}
MINIMAL: dict[str, Any] = {
    "vendor": "AMD",
    "model_name": "EPYC 7742",
    "nominal_mhz": 2250,
    "cores_per_socket": 64,
    "sockets": 2,
}
NEW_VENDOR: dict[str, Any] = {
    "vendor": "Hygon",
    "model_name": "Hygon C86 7285",
    "nominal_mhz": 2000,
    "max_mhz": 3000,
    "cores_per_socket": 32,
    "sockets": 2,
    "threads_per_core": 2,
    "l3_cache_kb": 65536,
    "mem_channels": 16,
    "mem_data_rate": 2666,
    "threads_or_copies": 128,
}


@pytest.fixture(scope="module")
def model_dir(cpu_model_dir: Path) -> Path:
    return cpu_model_dir


def make_client(model_dir: Path, **overrides) -> TestClient:
    return TestClient(create_app(Settings(model_dir=model_dir, **overrides)))


@pytest.fixture(scope="module")
def client(model_dir: Path):
    with make_client(model_dir) as c:
        yield c


def predict(client: TestClient, *instances: dict, **extra) -> httpx.Response:
    return client.post("/v1/cpu/predict", json={"instances": list(instances), "suite": SUITE, **extra})


def fields(response: httpx.Response) -> list[str]:
    return [d["field"] for d in response.json()["detail"]]


def test_valid_batch_has_model_version_and_ordered_intervals(client: TestClient) -> None:
    r = predict(client, GOOD, MINIMAL, coverage=0.8)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["model"] == "cpu" and body["version"] and body["suite"] == SUITE
    assert len(body["predictions"]) == 2
    for row in body["predictions"]:
        assert tuple(row["benchmarks"]) == BENCHMARKS
        for interval in [*row["benchmarks"].values(), row["score"]]:
            assert 0 < interval["low"] < interval["value"] < interval["high"]
        assert row["unavailable"] == {}
    first = body["predictions"][0]
    assert first["seen_in_training"] and not first["out_of_distribution"], first["ood_reasons"]
    # A real 8260L system scores ~250-300 on Int_rate; the model should be in that range roughly.
    assert 100 < first["score"]["value"] < 500


def test_suite_score_is_the_geometric_mean_of_the_benchmarks(client: TestClient) -> None:
    for row in predict(client, GOOD, MINIMAL, NEW_VENDOR).json()["predictions"]:
        values = [b["value"] for b in row["benchmarks"].values()]
        assert row["score"]["value"] == pytest.approx(math.exp(np.mean(np.log(values))), rel=1e-12)
        # The interval is symmetric on the log scale around the geometric mean.
        score = row["score"]
        assert math.log(score["high"] / score["value"]) == pytest.approx(
            math.log(score["value"] / score["low"])
        )


def test_wider_coverage_and_unseen_cpu_give_wider_intervals(client: TestClient) -> None:
    narrow = predict(client, GOOD, coverage=0.5).json()["predictions"][0]["score"]
    wide = predict(client, GOOD, coverage=0.95).json()["predictions"][0]["score"]
    assert wide["value"] == narrow["value"]
    assert wide["low"] < narrow["low"] and wide["high"] > narrow["high"]
    unseen = predict(client, {**GOOD, "model_name": "Xeon Platinum 8999"}).json()["predictions"][0]
    seen = predict(client, GOOD).json()["predictions"][0]
    assert not unseen["seen_in_training"]
    assert unseen["score"]["high"] / unseen["score"]["value"] > seen["score"]["high"] / seen["score"]["value"]


def test_unseen_vendor_predicts_with_an_ood_flag(client: TestClient) -> None:
    r = predict(client, NEW_VENDOR, GOOD)
    assert r.status_code == 200, r.text
    new, known = r.json()["predictions"]
    assert new["out_of_distribution"] and any("vendor 'Hygon'" in reason for reason in new["ood_reasons"])
    assert all(v["value"] > 0 for v in new["benchmarks"].values()) and new["score"]["value"] > 0
    assert not known["out_of_distribution"]


def test_benchmarks_lists_the_suites_of_the_loaded_model(client: TestClient) -> None:
    r = client.get("/v1/cpu/benchmarks")
    assert r.status_code == 200
    body = r.json()
    assert body["model"] == "cpu" and body["version"]
    assert body["suites"] == {SUITE: list(BENCHMARKS)}
    assert body["score_method"] == "geomean_of_ratios"


def test_api_prediction_equals_in_process(client: TestClient, model_dir: Path) -> None:
    payload = {"instances": [GOOD, MINIMAL, NEW_VENDOR], "suite": SUITE, "coverage": 0.7}
    api = client.post("/v1/cpu/predict", json=payload).json()
    (version,) = (model_dir / "cpu").iterdir()
    model = TabularModel(version, cpu_features.FEATURE_VERSION, cpu_features.FEATURE_COLUMNS).load()
    request = CpuPredictRequest.model_validate(payload)
    assert api["predictions"] == domain.predict(request.instances, 0.7, SUITE, model)
    assert api["version"] == model.version


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"cores_per_socket": float("nan")}, "instances.0.cores_per_socket"),
        ({"nominal_mhz": float("inf")}, "instances.0.nominal_mhz"),
        ({"sockets": "2"}, "instances.0.sockets"),
        ({"sockets": True}, "instances.0.sockets"),
        ({"cpus": 96.5}, "instances.0.cpus"),
        ({"cores_per_socket": 0}, "instances.0.cores_per_socket"),
        ({"max_mhz": -1}, "instances.0.max_mhz"),
        ({"l3_cache_kb": 1e15}, "instances.0.l3_cache_kb"),
        ({"vendor": 7}, "instances.0.vendor"),
        ({"vendor": ""}, "instances.0.vendor"),
        ({"model_name": "x" * 201}, "instances.0.model_name"),
        ({"frequency": 3000}, "instances.0.frequency"),
        ({"score": 250.0}, "instances.0.score"),
    ],
)
def test_invalid_fields_are_422_naming_the_field(client: TestClient, change: dict, field: str) -> None:
    # NaN/inf are sent as the bare JSON tokens Python's json writes.
    r = client.post(
        "/v1/cpu/predict",
        content=json.dumps({"instances": [{**GOOD, **change}], "suite": SUITE}),
        headers={"content-type": "application/json"},
    )
    assert r.status_code == 422, r.text
    assert field in fields(r)


def test_missing_required_field_and_bad_request_fields(client: TestClient) -> None:
    no_cores = {k: v for k, v in GOOD.items() if k != "cores_per_socket"}
    assert "instances.0.cores_per_socket" in fields(predict(client, no_cores))
    assert "coverage" in fields(predict(client, GOOD, coverage=1.0))
    assert "coverage" in fields(predict(client, GOOD, coverage=True))
    assert "extra" in fields(predict(client, GOOD, extra=1))
    assert "instances" in fields(predict(client))
    r = client.post("/v1/cpu/predict", json={"instances": [GOOD]})
    assert r.status_code == 422 and "suite" in fields(r)
    dup = b'{"suite": "Int_rate", "suite": "FP_rate", "instances": []}'
    r = client.post("/v1/cpu/predict", content=dup, headers={"content-type": "application/json"})
    assert r.status_code == 422 and fields(r) == ["body"]


def test_unknown_suite_is_422_listing_the_valid_ones(client: TestClient) -> None:
    r = client.post("/v1/cpu/predict", json={"instances": [GOOD], "suite": "FP_rate"})
    assert r.status_code == 422
    (detail,) = r.json()["detail"]
    assert detail["field"] == "suite" and "Int_rate" in detail["reason"] and "FP_rate" in detail["reason"]


def test_feature_module_refusal_names_the_field() -> None:
    # The schema already rejects these; the domain still maps the feature module's own ValueError.
    bad = CpuInstance.model_construct(**{**MINIMAL, "sockets": -2})
    with pytest.raises(domain.InvalidSpecError) as err:
        domain.check_instances([CpuInstance.model_validate(MINIMAL), bad])
    assert err.value.field == "instances.1.sockets"
    assert domain._invalid(ValueError("row 4: unknown CPU field(s) foo, bar; known: x")).field == (
        "instances.4.foo"
    )


def test_batch_over_the_limit_is_413(model_dir: Path) -> None:
    with make_client(model_dir, max_batch=2) as c:
        r = predict(c, GOOD, GOOD, GOOD)
        assert r.status_code == 413 and fields(r) == ["instances"]
        assert predict(c, GOOD, GOOD).status_code == 200


def test_no_cpu_model_is_503(tmp_path: Path) -> None:
    with make_client(tmp_path / "empty") as c:
        r = predict(c, GOOD)
        assert r.status_code == 503 and fields(r) == ["model"]
        r = c.get("/v1/cpu/benchmarks")
        assert r.status_code == 503 and fields(r) == ["model"]


def test_large_batch_runs_outside_the_micro_batcher(client: TestClient) -> None:
    rows = [{**GOOD, "cores_per_socket": 8 + i % 40} for i in range(100)]
    body = predict(client, *rows).json()
    assert len(body["predictions"]) == 100
    single = predict(client, rows[7]).json()["predictions"][0]
    assert body["predictions"][7] == single
