"""The MLIR featurizer on hand-written linalg and on real IREE-imported ONNX MLIR, and the API's checks
of program text (422 for text that is not MLIR, 413 beyond 1 MiB) — no model needed for those."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from fastapi.testclient import TestClient

from service.core.settings import Settings
from service.domains.mlir import features as F

MATMUL = """
func.func @main(%a: tensor<64x32xf16>, %b: tensor<32x128xf16>) -> tensor<64x128xf32> {
  %cst = arith.constant 0.0 : f32
  %e = tensor.empty() : tensor<64x128xf32>
  %f = linalg.fill ins(%cst : f32) outs(%e : tensor<64x128xf32>) -> tensor<64x128xf32>
  %r = linalg.matmul ins(%a, %b : tensor<64x32xf16>, tensor<32x128xf16>)
         outs(%f : tensor<64x128xf32>) -> tensor<64x128xf32>
  return %r : tensor<64x128xf32>
}
"""

EXP_GENERIC = """
module {
  func.func @main(%x: tensor<16x1024xf32>) -> tensor<16x1024xf32> {
    %e = tensor.empty() : tensor<16x1024xf32>
    %y = linalg.generic {indexing_maps = [affine_map<(d0, d1) -> (d0, d1)>, affine_map<(d0, d1) -> (d0, d1)>],
                         iterator_types = ["parallel", "parallel"]}
        ins(%x : tensor<16x1024xf32>) outs(%e : tensor<16x1024xf32>) {
    ^bb0(%in: f32, %out: f32):
      %t = math.exp %in : f32
      %u = arith.addf %t, %in : f32
      linalg.yield %u : f32
    } -> tensor<16x1024xf32>
    %w = arith.constant dense<[[1.0, 2.0], [3.0, 4.0]]> : tensor<2x2xf32>
    return %y : tensor<16x1024xf32>
  }
}
"""

# Verbatim output of iree-import-onnx (iree-base-compiler 3.13.0) for an onnx MatMul + Add + Relu graph
# whose bias is an initializer: torch-dialect MLIR with the bias as a dense_resource blob.
ONNX_IMPORTED = """module {
  func.func @main(%arg0: !torch.vtensor<[4,16],f32>, %arg1: !torch.vtensor<[16,32],f32>) -> !torch.vtensor<[4,32],f32> attributes {torch.onnx_meta.ir_version = 14 : si64, torch.onnx_meta.opset_version = 17 : si64, torch.onnx_meta.producer_name = "", torch.onnx_meta.producer_version = ""} {
    %0 = torch.operator "onnx.Constant"() {torch.onnx.value = dense_resource<b> : tensor<32xf32>} : () -> !torch.vtensor<[32],f32>
    %none = torch.constant.none
    %1 = torch.operator "onnx.MatMul"(%arg0, %arg1) : (!torch.vtensor<[4,16],f32>, !torch.vtensor<[16,32],f32>) -> !torch.vtensor<[4,32],f32>
    %2 = torch.operator "onnx.Add"(%1, %0) : (!torch.vtensor<[4,32],f32>, !torch.vtensor<[32],f32>) -> !torch.vtensor<[4,32],f32>
    %3 = torch.operator "onnx.Relu"(%2) : (!torch.vtensor<[4,32],f32>) -> !torch.vtensor<[4,32],f32>
    return %3 : !torch.vtensor<[4,32],f32>
  }
}

{-#
  dialect_resources: {
    builtin: {
      b: "0x080000000000803F0000803F0000803F0000803F0000803F0000803F0000803F0000803F0000803F0000803F0000803F0000803F0000803F0000803F0000803F0000803F0000803F0000803F0000803F0000803F0000803F0000803F0000803F0000803F0000803F0000803F0000803F0000803F0000803F0000803F0000803F0000803F"
    }
  }
#-}
"""  # noqa: E501

DATASET = Path(__file__).resolve().parents[4] / "datasets" / "mlir-cpu-local"
# Figures of the order training fits on the bundled dataset.
BASELINE = F.RuntimeBaseline(floor_ms=1.3e-3, call_ms=0.06, flops_per_ms=2e7, bytes_per_ms=6e7)


def features(texts: list[str]) -> pd.DataFrame:
    return F.features_from_summaries([F.summarize(t) for t in texts], BASELINE)


def row(text: str) -> dict[str, float]:
    return dict(zip(F.FEATURE_COLUMNS, features([text]).iloc[0], strict=True))


def test_hand_written_linalg_matmul() -> None:
    s = F.summarize(MATMUL)
    assert s.ops["linalg.matmul"] == 1 and s.ops["linalg.fill"] == 1 and s.ops["func.return"] == 1
    assert s.dialects["linalg"] == 2 and s.dialects["arith"] == 1
    assert s.values["log_flops"] == pytest.approx(math.log(2 * 64 * 128 * 32))
    assert s.values["log_max_k"] == pytest.approx(math.log(32))
    # Bytes of the matmul: two f16 inputs and the f32 output, plus the fill's output.
    matmul_bytes = (64 * 32 + 32 * 128) * 2 + 64 * 128 * 4
    assert s.values["log_bytes"] == pytest.approx(math.log(matmul_bytes + 64 * 128 * 4))
    assert s.values["arg_count"] == 2
    assert s.values["ops_unknown"] == 0 and s.values["dialects_unknown"] == 0
    r = row(MATMUL)
    assert r["op_linalg_matmul"] == 1 and r["dialect_linalg"] == 2
    assert r["dtype_f16"] > 0 and r["dtype_f32"] > 0


CONV = """
func.func @main(%x: tensor<1x20x20x24xf32>, %w: tensor<3x3x24x40xf32>) -> tensor<1x18x18x40xf32> {
  %cst = arith.constant 0.0 : f32
  %e = tensor.empty() : tensor<1x18x18x40xf32>
  %f = linalg.fill ins(%cst : f32) outs(%e : tensor<1x18x18x40xf32>) -> tensor<1x18x18x40xf32>
  %r = linalg.conv_2d_nhwc_hwcf ins(%x, %w : tensor<1x20x20x24xf32>, tensor<3x3x24x40xf32>)
         outs(%f : tensor<1x18x18x40xf32>) -> tensor<1x18x18x40xf32>
  return %r : tensor<1x18x18x40xf32>
}
"""


def test_dominant_op_extents_and_their_divisibility() -> None:
    """The matmul, not the fill before it, is the dominant op: its output 64x128, its k of 32 and its first
    input's innermost extent (also 32); a convolution's reduction is its 3x3x24 window."""
    r = row(MATMUL)
    assert r["main_op_code"] == F.summarize("linalg.matmul").values["main_op_code"]
    assert (r["main_last_pow2"], r["main_last_div16"], r["main_last_div64"]) == (128, 16, 64)
    assert (r["main_second_pow2"], r["main_second_mod16"]) == (64, 0)
    assert r["main_third_pow2"] == -1  # a 2-D output has no third dimension
    assert (r["main_k_pow2"], r["main_k_div16"], r["main_input_last_div64"]) == (32, 16, 32)
    # A matmul doing less work than its fill writes bytes is still the dominant op (fills are fused).
    tiny = MATMUL.replace("64x", "1x").replace("x128", "x1").replace("32x", "2x").replace("x32", "x2")
    assert row(tiny)["main_k_log"] == pytest.approx(math.log(2))
    c = row(CONV)
    assert c["main_k_log"] == pytest.approx(math.log(3 * 3 * 24))
    # 216 = 8 x 27: largest power of two 8, largest divisors up to 16 and 64: 12 and 54; 216 mod 16 = 8.
    assert (c["main_k_pow2"], c["main_k_div16"], c["main_k_div64"], c["main_k_mod16"]) == (8, 12, 54, 8)
    assert (c["main_last_div16"], c["main_second_div16"], c["main_input_last_div16"]) == (10, 9, 12)


def test_generic_body_flops_and_dense_payload_is_stripped() -> None:
    s = F.summarize(EXP_GENERIC)
    # One exp (counted as 8 FLOPs: exp-like functions are several) and one add per element.
    assert s.values["log_elementwise_flops"] == pytest.approx(math.log(16 * 1024 * (2 + 7)))
    assert s.values["transcendental_ops"] == 1 and s.values["generic_parallel_ops"] == 1
    assert s.values["max_depth"] >= 3
    stripped, count = F.strip_constants(EXP_GENERIC)
    assert count == 1 and "3.0" not in stripped and "dense<C>" in stripped


def test_real_iree_imported_onnx() -> None:
    F.check_mlir(ONNX_IMPORTED)
    s = F.summarize(ONNX_IMPORTED)
    assert s.ops["onnx.MatMul"] == 1 and s.ops["onnx.Add"] == 1 and s.ops["onnx.Relu"] == 1
    assert s.dialects["onnx"] == 4 and s.values["torch_frontend"] == 1
    assert s.values["ops_unknown"] == 0
    # The resource section and the dense_resource handle are cut before tokenizing.
    stripped, blobs = F.strip_constants(ONNX_IMPORTED)
    assert blobs == 2 and "0x0800" not in stripped and "dialect_resources" not in stripped
    # MatMul 2*4*32*16, Add and Relu one FLOP per output element.
    assert s.values["log_flops"] == pytest.approx(math.log(2 * 4 * 32 * 16 + 2 * 4 * 32))
    assert s.values["log_max_k"] == pytest.approx(math.log(16))


def test_collected_onnx_programs_from_the_dataset() -> None:
    from training.collect.mlir.records import PROGRAMS, read_records

    path = DATASET / PROGRAMS
    if not path.is_file():
        pytest.fail(f"{path} is missing: the collected dataset is part of the repository")
    found = 0
    for record in read_records(path):
        if record["family"].startswith("onnx_") and record.get("mlir"):
            s = F.summarize(record["mlir"])
            assert s.values["torch_frontend"] == 1 and s.values["log_flops"] > 0
            assert any(op.startswith("onnx.") for op in s.ops)
            found += 1
            if found >= 6:
                break
    assert found >= 6


def _transpose(shape: str, out: str, perm: str) -> str:
    return f"""func.func @main(%a: tensor<{shape}xf32>) -> tensor<{out}xf32> {{
  %e = tensor.empty() : tensor<{out}xf32>
  %t = linalg.transpose ins(%a : tensor<{shape}xf32>) outs(%e : tensor<{out}xf32>) permutation = [{perm}]
  return %t : tensor<{out}xf32>
}}"""


def _max_over_first_axis(rows: int) -> str:
    maps = "[affine_map<(d0, d1) -> (d0, d1)>, affine_map<(d0, d1) -> (d1)>]"
    return f"""func.func @main(%a: tensor<{rows}x778xf32>) -> tensor<778xf32> {{
  %c = arith.constant 0xFF800000 : f32
  %e = tensor.empty() : tensor<778xf32>
  %f = linalg.fill ins(%c : f32) outs(%e : tensor<778xf32>) -> tensor<778xf32>
  %r = linalg.generic {{indexing_maps = {maps}, iterator_types = ["reduction", "parallel"]}}
      ins(%a : tensor<{rows}x778xf32>) outs(%f : tensor<778xf32>) {{
  ^bb0(%x: f32, %o: f32):
    %y = arith.maximumf %x, %o : f32
    linalg.yield %y : f32
  }} -> tensor<778xf32>
  return %r : tensor<778xf32>
}}"""


def test_work_that_compilers_fold_away_counts_as_none() -> None:
    """IREE emits no dispatch for a transpose that only moves unit dimensions or a reduction over unit
    axes (27 of the dataset's 28 zero-dispatch programs): they must not look like work."""
    for folded, real in [
        (_transpose("1x17", "17x1", "1, 0"), _transpose("3x17", "17x3", "1, 0")),
        (_transpose("8x1x9", "1x8x9", "1, 0, 2"), _transpose("8x2x9", "2x8x9", "1, 0, 2")),
        (_max_over_first_axis(1), _max_over_first_axis(4)),
    ]:
        none, some = F.summarize(folded).values, F.summarize(real).values
        assert none["work_ops"] == 0 and some["work_ops"] == 1, folded
        assert none["log_bytes"] < some["log_bytes"], folded
    assert F.summarize(_transpose("1x17", "17x1", "1, 0")).values["log_movement_bytes"] == 0
    assert F.summarize(_max_over_first_axis(1)).values["log_flops"] == 0


def test_unknown_ops_and_dialects_are_counted_not_fatal() -> None:
    text = """module {
  func.func @f(%a: tensor<8xf32>) -> tensor<8xf32> {
    %0 = mydialect.frobnicate %a {level = 3} : tensor<8xf32>
    %1 = "other.thing"(%0) : (tensor<8xf32>) -> tensor<8xf32>
    %2 = scf.execute_region -> tensor<8xf32> { scf.yield %1 : tensor<8xf32> }
    return %2 : tensor<8xf32>
  }
}"""
    s = F.summarize(text)
    assert s.ops["mydialect.frobnicate"] == 1 and s.ops["other.thing"] == 1 and s.ops["scf.yield"] == 1
    assert s.values["dialects_unknown"] == 2
    assert s.values["ops_unknown"] == 4  # frobnicate, thing, execute_region, yield
    one_line = F.summarize("module { func.func @main() { foo.bar } }")
    assert set(one_line.ops) == {"builtin.module", "func.func", "foo.bar"}


def test_feature_table_shape_determinism_and_finiteness() -> None:
    texts = [MATMUL, EXP_GENERIC, ONNX_IMPORTED, "module {}"]
    table = features(texts)
    assert list(table.columns) == list(F.FEATURE_COLUMNS)
    assert len(set(F.FEATURE_COLUMNS)) == len(F.FEATURE_COLUMNS)
    assert np.isfinite(table.to_numpy()).all()
    np.testing.assert_array_equal(table.to_numpy(), features(texts).to_numpy())
    ngrams = table[[c for c in table.columns if c.startswith("ngram_")]].to_numpy()
    assert np.allclose(ngrams[:3].sum(axis=1), 1.0)
    # LightGBM refuses JSON punctuation in feature names.
    assert not any(ch in c for c in F.FEATURE_COLUMNS for ch in ':,"[]{}')


def test_runtime_baseline_follows_the_work_and_is_the_floor_when_nothing_runs() -> None:
    small, large = MATMUL, MATMUL.replace("64x", "640x")
    folded = row(
        "func.func @main(%a: tensor<1x8xf32>) -> tensor<8x1xf32> {\n"
        "  %e = tensor.empty() : tensor<8x1xf32>\n"
        "  %t = linalg.transpose ins(%a : tensor<1x8xf32>) outs(%e : tensor<8x1xf32>) permutation = [1, 0]\n"
        "  return %t : tensor<8x1xf32>\n}"
    )
    assert folded["work_ops"] == 0
    assert folded[F.BASELINE_COLUMN] == pytest.approx(math.log(BASELINE.floor_ms))
    r_small, r_large = row(small), row(large)
    flops = math.exp(r_large["log_flops"])
    expected = BASELINE.floor_ms + BASELINE.call_ms + flops / BASELINE.flops_per_ms
    expected += math.exp(r_large["log_bytes"]) / BASELINE.bytes_per_ms
    assert r_large[F.BASELINE_COLUMN] == pytest.approx(math.log(expected))
    assert r_small[F.BASELINE_COLUMN] < r_large[F.BASELINE_COLUMN]


def test_runtime_baseline_card_round_trip_and_errors_name_the_field() -> None:
    card = {F.RuntimeBaseline.CARD_KEY: BASELINE.to_card()}
    assert F.RuntimeBaseline.from_card(card) == BASELINE
    with pytest.raises(ValueError, match="has no 'runtime_baseline'"):
        F.RuntimeBaseline.from_card({})
    for field, value, reason in [
        ("flops_per_ms", -1.0, "must be positive"),
        ("call_ms", float("nan"), "must be a finite number"),
        ("floor_ms", True, "must be a finite number"),
        ("bytes_per_ms", "fast", "must be a finite number"),
    ]:
        bad = {F.RuntimeBaseline.CARD_KEY: {**BASELINE.to_card(), field: value}}
        with pytest.raises(ValueError, match=f"runtime_baseline.{field} {reason}"):
            F.RuntimeBaseline.from_card(bad)
    missing = {F.RuntimeBaseline.CARD_KEY: {k: v for k, v in BASELINE.to_card().items() if k != "call_ms"}}
    with pytest.raises(ValueError, match="runtime_baseline.call_ms must be a finite number, got None"):
        F.RuntimeBaseline.from_card(missing)


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("", "empty"),
        ("   \n ", "empty"),
        ("hello world", "no 'module' or 'func.func'"),
        ("module {\n  func.func @f() {\n", "unbalanced '{'"),
        ("func.func @f() { return }}", "unbalanced '}'"),
        ("func.func @f(%a: tensor<2xf32> { return }", "unbalanced '('"),
    ],
)
def test_check_mlir_rejects_non_programs(text: str, reason: str) -> None:
    with pytest.raises(F.MlirTextError, match=reason.replace("(", r"\(").replace("{", r"\{")):
        F.check_mlir(text)


def test_check_mlir_ignores_braces_in_strings_and_blobs() -> None:
    F.check_mlir('func.func @f() attributes {note = "}{ ) ["} { return }')
    F.check_mlir(ONNX_IMPORTED)


@pytest.fixture
def client(tmp_path: Path):
    from service.app import create_app

    with TestClient(create_app(Settings(model_dir=tmp_path / "models"))) as c:
        yield c


@pytest.mark.parametrize(
    ("text", "reason"),
    [("", "empty"), ("not mlir at all", "module"), ("module {\n func.func @f() {\n", "unbalanced")],
)
def test_api_answers_422_for_text_that_is_not_mlir(client: TestClient, text: str, reason: str) -> None:
    r = client.post("/v1/mlir/predict", json={"instances": [{"mlir": MATMUL}, {"mlir": text}]})
    assert r.status_code == 422
    (detail,) = r.json()["detail"]
    assert detail["field"] == "instances.1.mlir" and reason in detail["reason"]


def test_program_size_limit_comes_from_settings(tmp_path: Path) -> None:
    from service.app import create_app

    with TestClient(create_app(Settings(model_dir=tmp_path, max_program_bytes=2048))) as c:
        r = c.post("/v1/mlir/predict", json={"instances": [{"mlir": MATMUL + "//" + "x" * 2048}]})
        assert r.status_code == 413 and "PERFCOST_MAX_PROGRAM_BYTES" in r.json()["detail"][0]["reason"]


def test_api_answers_413_beyond_one_mib_and_422_for_bad_fields(client: TestClient) -> None:
    big = MATMUL + "//" + "x" * (1 << 20)
    r = client.post("/v1/mlir/predict", json={"instances": [{"mlir": big}]})
    assert r.status_code == 413
    assert r.json()["detail"][0]["field"] == "instances.0.mlir"
    r = client.post("/v1/mlir/predict", json={"instances": [{"text": MATMUL}]})
    assert r.status_code == 422 and r.json()["detail"][0]["field"].startswith("instances.0")
    r = client.post("/v1/mlir/predict", json={"instances": [{"mlir": MATMUL}], "coverage": 1.5})
    assert r.status_code == 422 and r.json()["detail"][0]["field"] == "coverage"
    r = client.post("/v1/mlir/predict", json={"instances": []})
    assert r.status_code == 422 and r.json()["detail"][0]["field"] == "instances"
    body = '{"instances": [{"mlir": "module {}", "mlir": "module {}"}]}'
    r = client.post("/v1/mlir/predict", content=body, headers={"content-type": "application/json"})
    assert r.status_code == 422 and "duplicated key" in r.text
    # A valid program with no model loaded: 503, not a crash.
    r = client.post("/v1/mlir/predict", json={"instances": [{"mlir": MATMUL}]})
    assert r.status_code == 503 and r.json()["detail"][0]["field"] == "model"
