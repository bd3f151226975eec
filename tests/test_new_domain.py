"""A new domain is a package per side and one registration: the toy domain, written only in
``tests/service/domains/toy`` and ``tests/training/domains/toy``, is trained, published and served through
``/v1`` and ``/v2`` with nothing edited elsewhere."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from service.app import create_app
from service.core.settings import Settings
from service.domains import DOMAINS
from tests.service.domains import toy
from tests.training.domains.toy import TRAINING


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    settings = Settings(model_dir=tmp_path_factory.mktemp("models"), train_missing=False)
    TRAINING.first_start(settings)
    domains = DOMAINS.with_domain(toy.DOMAIN)  # the one registration line
    with TestClient(create_app(settings, domains)) as test_client:
        yield test_client


def test_native_route_serves_the_toy_model(client: TestClient) -> None:
    answer = client.post("/v1/toy/predict", json={"instances": [{"n": 1e6}, {"n": 1e11}], "coverage": 0.8})
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["model"] == "toy" and body["version"]
    near, beyond = body["predictions"]
    assert near["runtime_ms"]["low"] <= near["runtime_ms"]["value"] <= near["runtime_ms"]["high"]
    assert near["runtime_ms"]["value"] == pytest.approx(3.0, rel=0.15)  # 1e6 iterations at 3 ns
    assert not near["out_of_distribution"] and beyond["out_of_distribution"]


def test_open_inference_protocol_serves_the_same_values(client: TestClient) -> None:
    native = client.post("/v1/toy/predict", json={"instances": [{"n": 5e4}, {"n": 2e7}]}).json()
    metadata = client.get("/v2/models/toy").json()
    assert [t["name"] for t in metadata["inputs"]] == ["n"]
    assert {"runtime_ms", "runtime_ms_low", "runtime_ms_high"} <= {t["name"] for t in metadata["outputs"]}
    infer = {"inputs": [{"name": "n", "shape": [2], "datatype": "FP64", "data": [5e4, 2e7]}]}
    answer = client.post("/v2/models/toy/infer", json=infer)
    assert answer.status_code == 200, answer.text
    outputs = {o["name"]: o["data"] for o in answer.json()["outputs"]}
    assert outputs["runtime_ms"] == [row["runtime_ms"]["value"] for row in native["predictions"]]
    assert outputs["runtime_ms_high"] == [row["runtime_ms"]["high"] for row in native["predictions"]]


def test_the_domain_s_refusals_name_the_field_in_both_dialects(client: TestClient) -> None:
    native = client.post("/v1/toy/predict", json={"instances": [{"n": 1.0}, {"n": 1e13}]})
    assert native.status_code == 422
    assert native.json()["detail"][0]["field"] == "instances.1.n"
    infer = {"inputs": [{"name": "n", "shape": [2], "datatype": "FP64", "data": [1.0, 1e13]}]}
    oip = client.post("/v2/models/toy/infer", json=infer)
    assert oip.status_code == 400
    assert oip.json()["detail"][0]["field"] == "inputs.n.1"


def test_the_registry_and_health_list_the_new_domain(client: TestClient) -> None:
    assert "toy" in [m["name"] for m in client.get("/v1/models").json()["models"]]
    assert client.get("/readyz").json()["domains"]["toy"].startswith("serving version")
    assert client.get("/v2/models/toy/ready").json() == {"name": "toy", "ready": True}


def test_the_card_writer_refuses_a_card_the_domain_would_refuse(tmp_path: Path) -> None:
    """The toy's card type requires ``largest_n``: a card without it is never published."""
    from tests.training.domains.toy import measurements
    from training.core.models import CostRegressor
    from training.core.publish import publish

    X, y = measurements(rows=120)
    model = CostRegressor(candidates=("lightgbm",), n_splits=2, regimes=("seen",), n_jobs=1).fit(X, y)
    with pytest.raises(ValueError, match="largest_n"):
        publish(tmp_path, "toy", toy.DOMAIN, {}, {"runtime_ms": (model, {"devices": [toy.DEVICE]})})
    assert not list((tmp_path / "toy").iterdir())


def test_a_domain_whose_request_lacks_instances_is_refused_when_built() -> None:
    """The routes read ``instances`` and ``coverage`` of every request: a domain without them fails when
    it is built, naming what is missing, not at its first request."""
    with pytest.raises(TypeError, match=r"'toy'.*ToyInstance lacks \['instances', 'coverage'\]"):
        dataclasses.replace(toy.DOMAIN, request=toy.ToyInstance)
