"""AI Configurator's GEMM campaigns, read through the registry from the mirror, and the default set."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from service.core.settings import Settings
from training.core.datasets import DatasetError, fetch, get_spec, is_available
from training.core.report import LoadReport
from training.domains.gemm.aiconfigurator import (
    MAX_DEFAULT_ROWS,
    DefaultSet,
    default_training_set,
    load_aiconfigurator,
    water_fill,
)
from training.domains.gemm.aiconfigurator_campaigns import (
    DATASET,
    DEVICE_ALIASES,
    Campaign,
    load_aiconfigurator_campaigns,
)
from training.domains.gemm.data import LOADERS

GPUS = {
    "NVIDIA A100-SXM4-80GB",
    "NVIDIA H100 80GB HBM3",
    "NVIDIA L40S",
    "NVIDIA B200",
    "NVIDIA GB200",
    "NVIDIA RTX PRO 6000 Blackwell Server Edition",
    "Intel(R) Arc(TM) Pro B60 Graphics",
}
B60_OLD_DRIVER = "Intel(R) Graphics [0xe211]"


@pytest.fixture(scope="module")
def gemm_settings(mirror: Path) -> Settings:
    return Settings(data_mirror=mirror)


@pytest.fixture(scope="module")
def paths(gemm_settings: Settings) -> dict[str, Path]:
    return fetch(get_spec(DATASET), gemm_settings, progressbar=False)


@pytest.fixture(scope="module")
def default(paths: dict[str, Path]) -> tuple[DefaultSet, LoadReport]:
    report = LoadReport(DATASET)
    return default_training_set(paths, report), report


@pytest.fixture(scope="module")
def raw_pairs(paths: dict[str, Path]) -> set[tuple[str, str]]:
    """(device, gemm_dtype) of every row of every campaign file, the Arc Pro B60's old name mapped."""
    pairs = set()
    for rel, path in paths.items():
        if rel.endswith(".parquet"):
            table = pq.read_table(path, columns=["device", "gemm_dtype"]).to_pandas().drop_duplicates()
            pairs |= {(DEVICE_ALIASES.get(d, d), g) for d, g in table.itertuples(index=False)}
    return pairs


def test_registry_holds_every_campaign_and_spec_sheet(mirror: Path, gemm_settings: Settings) -> None:
    spec = get_spec(DATASET)
    manifest = json.loads((mirror / "manifest.json").read_text())[DATASET]
    assert {(f.file, f.sha256, f.bytes) for f in spec.files} == {
        (f["file"], f["sha256"], f["bytes"]) for f in manifest["files"]
    }
    names = {f.file for f in spec.files}
    assert sum(n.endswith("/gemm_perf.parquet") for n in names) == 52
    assert sum(n.startswith("systems/") for n in names) == 11
    assert "h100_sxm/gemm/trtllm/1.3.0rc20/gemm_perf.parquet" in names
    assert spec.license == "Apache-2.0" and is_available(spec, gemm_settings)
    assert LOADERS[DATASET] is load_aiconfigurator


def test_default_set_keeps_every_gpu_and_every_raw_gpu_dtype_pair(
    default: tuple[DefaultSet, LoadReport], raw_pairs: set[tuple[str, str]]
) -> None:
    frame = default[0].frame
    assert set(frame["device"]) == GPUS
    counts = frame.groupby(["device", "gemm_dtype"]).size()
    assert set(counts.index) == raw_pairs
    # Balanced: every (GPU, dtype) gets a few thousand rows, the total stays within the bound.
    assert counts.min() >= 3_000
    assert 0.9 * MAX_DEFAULT_ROWS <= len(frame) <= MAX_DEFAULT_ROWS
    description = default[0].description
    json.dumps(description)
    assert description["rows"] == len(frame)
    assert {(d, g): n for d, by in description["rows_by_device_dtype"].items() for g, n in by.items()} == {
        key: int(n) for key, n in counts.items()
    }
    # One campaign per (GPU, framework, dtype): repeats of a shape by other versions stay out.
    assert not frame.duplicated(["device", "framework", "gemm_dtype", "m", "n", "k"]).any()
    assert set(frame["framework"]) == {"trtllm", "vllm", "sglang"}
    assert frame["kernel"].notna().all() and frame["framework_version"].notna().all()


def test_rows_keep_the_parquet_sizes_and_latency(
    default: tuple[DefaultSet, LoadReport], paths: dict[str, Path]
) -> None:
    frame = default[0].frame
    assert set(frame["op"]) == {"linear"} and (frame["batch"] == 1).all()
    campaign = Campaign("h100_sxm", "trtllm", "1.3.0rc20")
    ours = frame.loc[(frame["gpu"] == campaign.gpu) & (frame["framework_version"] == campaign.version)]
    raw = pq.read_table(paths[campaign.file]).to_pandas()
    joined = ours.merge(
        raw,
        left_on=["gemm_dtype", "kernel", "m", "n", "k"],
        right_on=["gemm_dtype", "kernel_source", "m", "n", "k"],
        validate="one_to_one",
    )
    assert len(joined) == len(ours) > 1_000
    assert (joined["m"] != joined["n"]).mean() > 0.5  # m and n are not interchangeable here
    np.testing.assert_array_equal(joined["runtime_ms"], joined["latency"])


def test_the_b60s_old_driver_name_is_the_same_card(paths: dict[str, Path]) -> None:
    old = Campaign("b60", "vllm", "0.12.0")
    assert set(pq.read_table(paths[old.file], columns=["device"]).to_pandas()["device"]) == {B60_OLD_DRIVER}
    frame = load_aiconfigurator_campaigns(paths, LoadReport(DATASET), [old])
    assert set(frame["device"]) == {"Intel(R) Arc(TM) Pro B60 Graphics"}
    assert set(frame["framework_version"]) == {"0.12.0"} and len(frame) == 15_162


def test_power_rows_give_energy_on_b200_and_gb200(default: tuple[DefaultSet, LoadReport]) -> None:
    frame = default[0].frame
    power = frame.loc[frame["power_w"].notna()]
    assert set(power["device"]) == {"NVIDIA B200", "NVIDIA GB200"}
    assert power.groupby("device").size().min() >= 5_000
    assert (power["power_w"] > 0).all()
    np.testing.assert_allclose(power["energy_j"], power["power_w"] * power["runtime_ms"] / 1e3)
    assert frame.loc[frame["power_w"].isna(), "energy_j"].isna().all()


def test_dtype_and_activation_quantization(default: tuple[DefaultSet, LoadReport]) -> None:
    frame = default[0].frame
    quant = frame.groupby(["framework", "gemm_dtype", "dtype", "device"])["quantize_activation"].unique()
    assert all(len(v) == 1 for v in quant)
    q = {key: float(v[0]) for key, v in quant.items()}
    # FP8 per tensor: the activation's quantization is inside the timed op on every CUDA GPU ...
    fp8 = {key: v for key, v in q.items() if key[1] == "fp8"}
    assert {v for key, v in fp8.items() if key[3].startswith("NVIDIA")} == {1.0}
    assert all(key[2] == "float8_e4m3fn" for key in fp8)
    # ... but not on the Arc Pro B60, where vLLM runs FP8 weights against a BF16 activation (W8A16).
    assert fp8[("vllm", "fp8", "float8_e4m3fn", "Intel(R) Arc(TM) Pro B60 Graphics")] == 0.0
    # fp8_static: SGLang hands the GEMM an FP8 activation; TRT-LLM's Linear quantizes its BF16 one.
    assert q[("sglang", "fp8_static", "float8_e4m3fn", "NVIDIA L40S")] == 0.0
    assert q[("trtllm", "fp8_static", "float8_e4m3fn", "NVIDIA L40S")] == 1.0
    assert {v for key, v in q.items() if key[1] == "bfloat16"} == {0.0}
    assert {v for key, v in q.items() if key[1] in ("fp8_block", "nvfp4")} == {1.0}
    assert {key[2] for key in q if key[1] == "fp8_block"} == {"float8_block"}
    assert {(key[0], key[2], v) for key, v in q.items() if key[1] in ("int8_wo", "int4_wo", "sq")} == {
        ("trtllm", "int8_weight_only", 0.0),
        ("trtllm", "int4_weight_only", 0.0),
        ("trtllm", "int8", 0.0),
        ("sglang", "int8", 1.0),  # SGLang's "int8_wo" quantizes the activation and runs int8_scaled_mm
    }


def _write_campaign(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pandas(pd.DataFrame(rows), preserve_index=False), path)


def test_bad_rows_are_rejected_by_reason(tmp_path: Path) -> None:
    good = {
        "framework": "TRTLLM",
        "version": "9.9.9",
        "device": "NVIDIA H100 80GB HBM3",
        "op_name": "gemm",
        "kernel_source": "torch_flow",
        "gemm_dtype": "bfloat16",
        "m": 4,
        "n": 128,
        "k": 256,
        "latency": 0.01,
        "power": 300.0,
        "power_limit": 700.0,
    }
    rows = [
        good,
        {**good, "gemm_dtype": "fp8", "power": float("nan")},  # no reading: kept, without power
        {**good, "m": 8},
        dict(good),  # repeats row 0
        {**good, "m": 0},
        {**good, "latency": -1.0},
        {**good, "op_name": "attention"},
        {**good, "gemm_dtype": "mxfp4"},
        {**good, "m": 16, "power": -5.0},
    ]
    rel = "h100_sxm/gemm/trtllm/9.9.9/gemm_perf.parquet"
    _write_campaign(tmp_path / rel, rows)
    report = LoadReport(DATASET)
    frame = load_aiconfigurator_campaigns({rel: tmp_path / rel}, report)
    assert report.rejected == {
        "duplicate (framework, version, device, kernel, dtype, m, n, k) in a campaign": 1,
        "m missing, not a whole number or <= 0": 1,
        "latency missing, not a number or <= 0": 1,
        "op_name not gemm": 1,
        "unknown gemm_dtype mxfp4": 1,
        "power not a finite number > 0": 1,
    }
    assert report.examples["unknown gemm_dtype mxfp4"] == [f"{rel}: row 7"]
    assert report.examples[
        "duplicate (framework, version, device, kernel, dtype, m, n, k) in a campaign"
    ] == [f"{rel}: row 3 repeats row 0"]
    assert frame[["m", "gemm_dtype"]].astype(str).values.tolist() == [
        ["4", "bfloat16"],
        ["4", "fp8"],
        ["8", "bfloat16"],
    ]
    assert frame["power_w"].isna().tolist() == [False, True, False]
    assert set(frame["framework"]) == {"trtllm"} and set(frame["framework_version"]) == {"9.9.9"}
    # The default set of a single small campaign is all of its valid rows.
    assert len(load_aiconfigurator({rel: tmp_path / rel}, LoadReport(DATASET))) == 3


def test_a_campaign_without_a_needed_column_names_the_file(tmp_path: Path) -> None:
    rel = "l40s/gemm/vllm/0.1/gemm_perf.parquet"
    _write_campaign(tmp_path / rel, [{"device": "NVIDIA L40S", "m": 1, "n": 1, "k": 1, "latency": 1.0}])
    with pytest.raises(DatasetError, match=r"l40s/gemm/vllm/0.1/gemm_perf.parquet lacks column\(s\) op_name"):
        load_aiconfigurator_campaigns({rel: tmp_path / rel}, LoadReport(DATASET))


def test_water_fill_gives_small_keys_all_and_splits_the_rest_evenly() -> None:
    assert water_fill({"a": 10, "b": 100, "c": 100}, 150) == {"a": 10, "b": 70, "c": 70}
    assert water_fill({"a": 10, "b": 100}, 1_000) == {"a": 10, "b": 100}
    assert sum(water_fill({"a": 50, "b": 50, "c": 50}, 100).values()) == 100
