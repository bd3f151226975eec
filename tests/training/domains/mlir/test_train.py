"""An MLIR model trained on a sample of the collected dataset, published, loaded by the service and
asked through ``POST /v1/mlir/predict``: every target with an interval, OOD flags, the op summary, and
the limits on program text (the latency of a 10 KB program is measured by benchmarks/bench_service.py)."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from fastapi.testclient import TestClient
from scipy.stats import spearmanr

from service.app import create_app
from service.core.model import TabularModel
from service.core.settings import Settings
from service.domains.mlir import features as F
from training.domains.mlir.train import TARGET_OFFSETS, BaselineFit, ceilings


@pytest.fixture(scope="module")
def split(mlir_split: tuple[pd.DataFrame, pd.DataFrame]) -> tuple[pd.DataFrame, pd.DataFrame]:
    return mlir_split


@pytest.fixture(scope="module")
def model_dir(mlir_model_dir: Path) -> Path:
    return mlir_model_dir


@pytest.fixture(scope="module")
def client(model_dir: Path):
    with TestClient(create_app(Settings(model_dir=model_dir))) as c:
        yield c


def test_card_records_domain_features_and_training_profile(model_dir: Path) -> None:
    (version,) = (model_dir / "mlir").iterdir()
    model = TabularModel(version, F.FEATURE_VERSION, F.FEATURE_COLUMNS).load()
    assert model.card["domain"] == "mlir" and model.card["feature_version"] == F.FEATURE_VERSION
    assert set(model.targets) == set(TARGET_OFFSETS)
    profile = model.card["profile"]
    assert "linalg.matmul" in profile["ops"] and "onnx.MatMul" in profile["ops"]
    assert len(profile["families"]) == 15
    for target, spec in model.card["targets"].items():
        assert spec["offset"] == TARGET_OFFSETS[target] and set(spec["calibration"]) == {"seen", "unseen"}
    assert model.card["targets"]["vector_registers"]["ceiling"] == 32
    assert model.card["targets"]["utilization"]["ceiling"] == 1
    baseline = F.RuntimeBaseline.from_card(model.card)
    # The 210 sampled programs may hold none the compiler folds away, which is what tells the floor from
    # the cost of a call; their sum is the fastest dispatch, tens of microseconds here.
    assert 0.01 < baseline.floor_ms + baseline.call_ms < 0.2


def test_baseline_fit_recovers_the_figures_behind_the_runtimes(
    split: tuple[pd.DataFrame, pd.DataFrame],
) -> None:
    table = F.summary_table([F.summarize(t) for t in split[0]["mlir"]])
    truth = F.RuntimeBaseline(floor_ms=1e-3, call_ms=0.05, flops_per_ms=3e7, bytes_per_ms=5e6)
    noise = np.random.default_rng(0).lognormal(0.0, 0.05, len(table))
    fitted = BaselineFit().fit(table, np.exp(truth.log_ms(table)) * noise).baseline_
    for name, value in truth.to_card().items():
        assert getattr(fitted, name) == pytest.approx(value, rel=0.15), name
    with pytest.raises(ValueError, match="at least 30 needed"):
        BaselineFit().fit(table.head(20), np.ones(20))
    # Runtimes that owe nothing to bytes: the byte rate stops at its bound, and the card still loads.
    no_bytes = F.RuntimeBaseline(floor_ms=1e-3, call_ms=0.05, flops_per_ms=3e7, bytes_per_ms=1e300)
    fitted = BaselineFit().fit(table, np.exp(no_bytes.log_ms(table))).baseline_
    assert fitted.bytes_per_ms <= 1e15 and fitted.flops_per_ms == pytest.approx(3e7, rel=0.15)
    assert F.RuntimeBaseline.from_card(json.loads(json.dumps({"runtime_baseline": fitted.to_card()})))


def test_ceilings_follow_the_cpu_flags() -> None:
    assert ceilings({"cpu_flags": ["sse2", "avx", "avx2", "avx512f"]}) == {
        "utilization": 1.0,
        "vector_registers": 32.0,
    }
    assert ceilings({"cpu_flags": ["sse2", "avx", "avx2"]})["vector_registers"] == 16
    assert ceilings({}) == {"utilization": 1.0}


def _break_baseline(card: dict) -> None:
    card[F.RuntimeBaseline.CARD_KEY]["bytes_per_ms"] = 0


def _break_ceiling(card: dict) -> None:
    card["targets"]["vector_registers"]["ceiling"] = "32"


@pytest.mark.parametrize(
    ("damage", "reason"),
    [
        (_break_baseline, "runtime_baseline.bytes_per_ms must be positive"),
        (_break_ceiling, "targets.vector_registers.ceiling must be a finite number, got '32'"),
    ],
)
def test_a_card_with_unusable_figures_is_refused_and_the_previous_version_serves(
    model_dir: Path, tmp_path: Path, damage, reason: str
) -> None:
    (good,) = (model_dir / "mlir").iterdir()
    root = tmp_path / "models"
    shutil.copytree(model_dir, root)
    bad = root / "mlir" / (good.name + "z")
    shutil.copytree(good, bad)
    card = json.loads((bad / "card.json").read_text())
    damage(card)
    (bad / "card.json").write_text(json.dumps(card))
    with TestClient(create_app(Settings(model_dir=root))) as c:
        status = c.get("/v1/models").json()
        assert [m["version"] for m in status["models"] if m["name"] == "mlir"] == [good.name]
        (refusal,) = status["refused"]
        assert refusal["version"] == bad.name
        assert reason in refusal["reason"]


def test_predictions_through_the_api(client: TestClient, split: tuple[pd.DataFrame, pd.DataFrame]) -> None:
    test = split[1]
    r = client.post(
        "/v1/mlir/predict", json={"instances": [{"mlir": t} for t in test["mlir"]], "coverage": 0.9}
    )
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["model"] == "mlir" and body["device"] == "test CPU"
    rows = body["predictions"]
    assert len(rows) == len(test)
    for row in rows:
        for target in TARGET_OFFSETS:
            interval = row[target]
            assert 0 <= interval["low"] <= interval["value"] <= interval["high"], target
        # Never more registers than the CPU has, nor more than all of its threads busy.
        assert row["vector_registers"]["high"] <= 32 and row["utilization"]["high"] <= 1
        assert row["summary"]["ops"]["func.func"] == 1 and row["summary"]["estimated_bytes"] > 0
    predicted = np.array([row["runtime_ms"]["value"] for row in rows])
    # Trained on 300 programs only: a coarse check that the model ranks programs by cost.
    assert spearmanr(predicted, test["runtime_ms"]).statistic > 0.6
    instructions = np.array([row["instructions"]["value"] for row in rows])
    assert spearmanr(instructions, test["instructions"]).statistic > 0.6
    # Wider coverage, wider intervals.
    wide = client.post("/v1/mlir/predict", json={"instances": [{"mlir": test["mlir"][0]}], "coverage": 0.99})
    narrow = client.post("/v1/mlir/predict", json={"instances": [{"mlir": test["mlir"][0]}], "coverage": 0.5})
    w, n = wide.json()["predictions"][0]["runtime_ms"], narrow.json()["predictions"][0]["runtime_ms"]
    assert w["high"] - w["low"] > n["high"] - n["low"]


def test_unseen_ops_are_out_of_distribution_with_wider_intervals(
    client: TestClient, split: tuple[pd.DataFrame, pd.DataFrame]
) -> None:
    base = next(t for t, f in zip(split[1]["mlir"], split[1]["family"], strict=True) if f == "elementwise")
    odd = base.replace("    return", "    %zz = mydialect.frobnicate %a : tensor<1xf32>\n    return", 1)
    r = client.post("/v1/mlir/predict", json={"instances": [{"mlir": base}, {"mlir": odd}]})
    assert r.status_code == 200, r.text
    known, unknown = r.json()["predictions"]
    assert unknown["out_of_distribution"]
    assert any("mydialect.frobnicate" in reason for reason in unknown["ood_reasons"])
    assert unknown["summary"]["unknown_ops"] == ["mydialect.frobnicate"]
    if not known["out_of_distribution"]:
        k, u = known["runtime_ms"], unknown["runtime_ms"]
        # Interval widths on the log scale, up to the rounding of exp and log (1e-9 is far below any
        # difference between two calibrations).
        assert np.log(u["high"] / u["low"]) >= np.log(k["high"] / k["low"]) - 1e-9


MATMUL = (
    "func.func @main(%a: tensor<64x64xf32>, %b: tensor<64x64xf32>, %c: tensor<64x64xf32>)"
    " -> tensor<64x64xf32> {\n"
    "  %0 = linalg.matmul ins(%a, %b : tensor<64x64xf32>, tensor<64x64xf32>) outs(%c : tensor<64x64xf32>)"
    " -> tensor<64x64xf32>\n  return %0 : tensor<64x64xf32>\n}\n"
)


def test_a_program_simpler_than_the_training_programs_is_not_out_of_distribution_for_it(
    client: TestClient,
) -> None:
    """Two ops, no loops: fewer ops and a shallower nesting than any training program are no reason to
    doubt a prediction of seen ops; more ops or deeper nesting than any would be."""
    (row,) = client.post("/v1/mlir/predict", json={"instances": [{"mlir": MATMUL}]}).json()["predictions"]
    assert not any("op count" in r or "nesting depth" in r for r in row["ood_reasons"]), row["ood_reasons"]


def program_of(size: int, body: str) -> str:
    """A valid module of exactly ``size`` bytes: ``body`` inside a function, padded with a comment."""
    text = f"func.func @main() {{\n{body}\n  return\n}}\n// "
    assert len(text.encode()) <= size
    return text + "x" * (size - len(text.encode()))


def test_exactly_one_mib_is_answered_and_one_byte_more_is_413(client: TestClient) -> None:
    limit = 1 << 20
    matmul = (
        "  %r = linalg.matmul ins(%a, %b : tensor<8x8xf32>, tensor<8x8xf32>)"
        " outs(%c : tensor<8x8xf32>) -> tensor<8x8xf32>"
    )
    r = client.post("/v1/mlir/predict", json={"instances": [{"mlir": program_of(limit, matmul)}]})
    assert r.status_code == 200, r.text[:300]
    r = client.post("/v1/mlir/predict", json={"instances": [{"mlir": program_of(limit + 1, matmul)}]})
    assert r.status_code == 413
    assert r.json()["detail"][0]["field"] == "instances.0.mlir"


def test_a_million_tokens_within_the_limit_are_answered_in_bounded_time(client: TestClient) -> None:
    # "1," is two tokens in two bytes: about a million tokens in an attribute of an unknown op.
    body = '  "test.op"() {v = [' + "1," * 499_000 + "1]} : () -> ()"
    text = program_of(1 << 20, body)
    started = time.perf_counter()
    r = client.post("/v1/mlir/predict", json={"instances": [{"mlir": text}]})
    elapsed = time.perf_counter() - started
    assert r.status_code == 200, r.text[:300]
    row = r.json()["predictions"][0]
    assert row["out_of_distribution"] and any("test.op" in reason for reason in row["ood_reasons"])
    # A guard against super-linear tokenizing, not a speed target: linear work here takes about a second.
    assert elapsed < 30, f"{elapsed:.1f} s"
