"""POST /v1/gemm/search: candidates priced on the whole workload by the predictions /v1/gemm/predict
serves, ranked by the objective, the rest excluded with the reason; bounded work per request."""

from __future__ import annotations

from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from service.app import create_app
from service.core.settings import Settings

GPUS = ["NVIDIA A100-PCIE-40GB", "Tesla T4", "Tesla V100-PCIE-32GB", "NVIDIA GeForce RTX 4070", "Tesla P4"]
WORKLOAD = [
    {"op": "linear", "m": 2048, "n": 3072, "k": 768, "count": 12},
    {"op": "bmm", "batch": 12, "m": 512, "n": 512, "k": 64, "count": 12},
]


@pytest.fixture(scope="module")
def client(trained_model_dir: Path):  # type: ignore[no-untyped-def]
    with TestClient(create_app(Settings(model_dir=trained_model_dir, max_search_rows=100))) as c:
        yield c


def search(client: TestClient, **body: object) -> dict:  # type: ignore[type-arg]
    r = client.post("/v1/gemm/search", json={"workload": WORKLOAD, "devices": GPUS, **body})
    assert r.status_code == 200, r.text
    return r.json()  # type: ignore[no-any-return]


def test_ranking_is_by_the_workloads_total_time_as_predict_serves_it(client: TestClient) -> None:
    answer = search(client)
    ranked = answer["ranked"]
    assert answer["candidates_considered"] == len(GPUS)
    assert len(ranked) + len(answer["excluded"]) == len(GPUS)
    times = [c["time_ms"]["value"] for c in ranked]
    assert times == sorted(times) and len(ranked) >= 2
    for candidate in ranked:
        instances = [
            {k: v for k, v in layer.items() if k != "count"} | {"device": candidate["device"]}
            for layer in WORKLOAD
        ]
        rows = client.post("/v1/gemm/predict", json={"instances": instances}).json()["predictions"]
        for bound in ("value", "low", "high"):
            expected = sum(
                r["runtime_ms"][bound] * layer["count"] for r, layer in zip(rows, WORKLOAD, strict=True)
            )
            assert candidate["time_ms"][bound] == pytest.approx(expected, rel=1e-12)


def test_energy_objective_excludes_devices_without_an_energy_model_saying_why(client: TestClient) -> None:
    answer = search(client, objective="energy")
    assert all(c["energy_j"] is not None for c in answer["ranked"])
    reasons = {e["device"]: e["reason"] for e in answer["excluded"]}
    assert "Tesla T4" in reasons and "needs energy_j" in reasons["Tesla T4"]


def test_a_power_limit_excludes_the_candidates_over_it(client: TestClient) -> None:
    answer = search(client, constraints={"max_power_w": 1.0})
    assert answer["ranked"] == []
    assert all("max_power_w" in e["reason"] for e in answer["excluded"])


def test_bounded_work_and_unknown_devices_are_client_errors_naming_the_field(client: TestClient) -> None:
    configs = [{"tile_m": 64 * (i + 1)} for i in range(20)]
    too_big = client.post(
        "/v1/gemm/search", json={"workload": WORKLOAD, "devices": GPUS, "configurations": configs}
    )
    assert too_big.status_code == 413
    assert "PERFCOST_MAX_SEARCH_ROWS" in too_big.json()["detail"][0]["reason"]
    unknown = client.post(
        "/v1/gemm/search", json={"workload": WORKLOAD, "devices": ["Tesla T4", "No Such GPU"]}
    )
    assert unknown.status_code == 404 and unknown.json()["detail"][0]["field"] == "devices.1"
    bad = client.post("/v1/gemm/search", json={"workload": [], "devices": GPUS})
    assert bad.status_code == 422 and bad.json()["detail"][0]["field"].startswith("workload")
