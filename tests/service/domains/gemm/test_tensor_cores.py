"""Tensor-core dtypes end to end: per-dtype peaks price a GEMM, a device without a dtype's unit is priced
at the unit it falls back to and says so, and predictions and the search rank GPUs by their peaks.

The model is trained on a small sample of aiconfigurator-gemm (every GPU and dtype it has), so the GPUs
compared are mostly ones it never saw: what a capacity planner asks about."""

from __future__ import annotations

import itertools
from dataclasses import replace
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from service.app import create_app
from service.core.devices import DeviceCatalog
from service.core.settings import Settings
from service.domains.gemm.dtypes import dtype_peak

SIZE = 8192
# Peaks at least this far apart must rank the same way whatever the learned efficiencies say.
RATIO = 2.5
ROWS_PER_DEVICE_DTYPE = 40


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory, mirror: Path):
    from training.domains.gemm.data import load_gemm
    from training.domains.gemm.train import publish_gemm

    root = tmp_path_factory.mktemp("tensor-cores")
    settings = Settings(data_mirror=mirror, data_home=root / "cache", model_dir=root / "models")
    data = load_gemm("aiconfigurator-gemm", settings)
    sample = (
        data.frame.sample(frac=1.0, random_state=0).groupby(["device", "dtype"]).head(ROWS_PER_DEVICE_DTYPE)
    )
    publish_gemm([replace(data, frame=sample.reset_index(drop=True))], settings)
    with TestClient(create_app(Settings(model_dir=root / "models"))) as c:
        yield c


def own_unit_gpus(dtype: str) -> dict[str, float]:
    """Catalog GPUs with a unit of their own for ``dtype``, by name, with that unit's dense peak."""
    peaks = {d.name: dtype_peak(d, dtype) for d in DeviceCatalog.default() if d.kind == "gpu"}
    return {name: p.gflops for name, p in peaks.items() if p.fallback is None}


def predicted_ms(client: TestClient, dtype: str, names: list[str]) -> dict[str, float]:
    instances = [{"m": SIZE, "n": SIZE, "k": SIZE, "dtype": dtype, "device": name} for name in names]
    response = client.post("/v1/gemm/predict", json={"instances": instances})
    assert response.status_code == 200, response.text
    rows = response.json()["predictions"]
    return {name: row["runtime_ms"]["value"] for name, row in zip(names, rows, strict=True)}


def far_apart(peaks: dict[str, float]) -> list[tuple[str, str]]:
    """Pairs (faster, slower) whose peaks differ by RATIO or more."""
    return [(a, b) for a, b in itertools.permutations(peaks, 2) if peaks[a] >= RATIO * peaks[b]]


@pytest.mark.parametrize("dtype", ["bfloat16", "float8_e4m3fn"])
def test_large_gemm_time_is_ordered_by_the_dtype_peak(client: TestClient, dtype: str) -> None:
    peaks = own_unit_gpus(dtype)
    assert len(peaks) >= 8  # H100, B200, MI300X, L40S, L4, ... all list the unit
    times = predicted_ms(client, dtype, sorted(peaks))
    pairs = far_apart(peaks)
    assert pairs
    wrong = [(a, b, times[a], times[b]) for a, b in pairs if not times[a] < times[b]]
    assert not wrong


@pytest.mark.parametrize("dtype", ["bfloat16", "float8_e4m3fn"])
def test_search_ranks_gpus_by_the_dtype_peak(client: TestClient, dtype: str) -> None:
    peaks = own_unit_gpus(dtype)
    body = {
        "workload": [{"m": SIZE, "n": SIZE, "k": SIZE, "dtype": dtype}],
        "devices": sorted(peaks),
        "objective": "time",
        "top": len(peaks),
    }
    response = client.post("/v1/gemm/search", json=body)
    assert response.status_code == 200, response.text
    rank = {c["device"]: i for i, c in enumerate(response.json()["ranked"])}
    assert set(rank) == set(peaks)
    assert not [(a, b) for a, b in far_apart(peaks) if not rank[a] < rank[b]]


def test_the_h100_is_priced_at_its_tensor_core_peak(client: TestClient) -> None:
    instance = {"m": SIZE, "n": SIZE, "k": SIZE, "dtype": "bfloat16", "device": "NVIDIA H100 80GB HBM3"}
    row = client.post("/v1/gemm/predict", json={"instances": [instance]}).json()["predictions"][0]
    assert row["roofline"]["peak_unit"] == "bf16"
    assert row["roofline"]["peak_gflops"] == pytest.approx(989_400, rel=0.01)
    assert row["roofline"]["peak_fallback"] is None
    # 2 * 8192^3 flops at 989 TFLOP/s is 1.11 ms: never predicted faster, and not 5% of the peak either.
    assert 1.11 <= row["runtime_ms"]["value"] < 1.11 / 0.3


@pytest.mark.parametrize(
    ("device", "dtype", "unit"),
    [("Tesla V100-SXM2-16GB", "bfloat16", "fp32"), ("NVIDIA A100-SXM4-80GB", "float8_e4m3fn", "fp16")],
)
def test_a_dtype_without_its_unit_is_priced_at_the_fallback_and_flagged(
    client: TestClient, device: str, dtype: str, unit: str
) -> None:
    instance = {"m": 4096, "n": 4096, "k": 4096, "dtype": dtype, "device": device}
    row = client.post("/v1/gemm/predict", json={"instances": [instance]}).json()["predictions"][0]
    spec = DeviceCatalog.default().get(device)
    assert row["roofline"]["peak_unit"] == unit
    assert row["roofline"]["peak_gflops"] == spec.unit_gflops(unit)
    assert "falls back to" in row["roofline"]["peak_fallback"]
    assert row["out_of_distribution"] and row["roofline"]["peak_fallback"] in row["ood_reasons"]


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"dtype": "bfloat16", "quantize_activation": True}, "quantize_activation"),
        ({"dtype": "fp8"}, "dtype"),
        ({"dtype": "float8_e4m3fn", "quantize_activation": "yes"}, "quantize_activation"),
    ],
)
def test_bad_dtype_requests_are_refused_naming_the_field(
    client: TestClient, change: dict, field: str
) -> None:
    instance = {"m": 64, "n": 64, "k": 64, "device": "NVIDIA H100 80GB HBM3", **change}
    response = client.post("/v1/gemm/predict", json={"instances": [instance]})
    assert response.status_code == 422
    assert field in response.text


def test_quantizing_the_activation_costs_a_pass_of_its_own(client: TestClient) -> None:
    base = {"m": 16, "n": 4096, "k": 4096, "dtype": "float8_e4m3fn", "device": "NVIDIA H100 80GB HBM3"}
    instances = [base, {**base, "quantize_activation": True}]
    bare, quantized = client.post("/v1/gemm/predict", json={"instances": instances}).json()["predictions"]
    assert quantized["runtime_ms"]["value"] > bare["runtime_ms"]["value"]


def test_the_card_says_what_the_default_training_set_chose(client: TestClient) -> None:
    body = client.get("/v1/models/gemm").json()
    card = body.get("card", body)
    (entry,) = [d for d in card["datasets"] if d["name"] == "aiconfigurator-gemm"]
    selection = entry["selection"]
    assert selection["rule"] and selection["rows_by_device_dtype"]
    assert "NVIDIA B200" in selection["power_rows_by_device"]
