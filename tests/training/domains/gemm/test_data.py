"""Expectations on the real GEMM datasets, read through the registry from the mirror."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import openpyxl
import pandas as pd
import pytest

from service.core.devices import DeviceCatalog
from service.core.settings import Settings
from service.domains.gemm.dtypes import dtype_peak
from service.domains.gemm.features import (
    FEATURE_COLUMNS,
    LAYOUTS,
    build_features,
    feature_matrix,
    flops,
    with_k,
)
from training.core.datasets import DatasetError, fetch, get_spec
from training.core.report import LoadReport
from training.domains.gemm.data import COLUMNS, load_gemm
from training.domains.gemm.deepbench import load_deepbench
from training.domains.gemm.public import load_neusight


@pytest.fixture(scope="module")
def gemm_settings(mirror) -> Settings:
    return Settings(data_mirror=mirror)


def test_gpperf_parses_every_record(gemm_settings: Settings) -> None:
    data = load_gemm("gpperf-rtx4070", gemm_settings)
    frame = data.frame
    assert list(frame.columns) == list(COLUMNS)
    assert len(frame) == 16_128 and data.report.rejected == {}
    assert frame["power_w"].notna().sum() == 2_595
    # '[N/A]' power is missing, never zero; energy only exists beside a power reading.
    assert (frame["power_w"].dropna() > 0).all()
    assert frame.loc[frame["power_w"].isna(), "energy_j"].isna().all()
    assert (frame["runtime_ms"] > 0).all()
    assert set(frame["layout"]) == {"nn", "nt", "tn", "tt"}
    assert frame["kernel"].str.startswith("cutlass_simt_sgemm").all()
    assert frame[["tile_m", "tile_n", "tile_k", "stages"]].notna().all().all()
    # Energy is power × runtime as logged: the record format is read with the right offsets.
    with_power = frame.dropna(subset=["power_w"])
    ratio = with_power["energy_j"] / (with_power["power_w"] * with_power["runtime_ms"] / 1e3)
    assert ratio.between(0.5, 2.0).mean() > 0.95


def test_gpperf_tiled_joins_runtime_and_power(gemm_settings: Settings) -> None:
    frame = load_gemm("gpperf-rtx4070-tiled", gemm_settings).frame
    assert frame["runtime_ms"].notna().sum() == 141
    assert frame["power_w"].notna().sum() == 195
    assert len(frame) == 195


def test_uci_sgemm_target_is_mean_of_four_runs(gemm_settings: Settings) -> None:
    frame = load_gemm("uci-sgemm", gemm_settings).frame
    assert len(frame) == 241_600
    assert (frame[["m", "n", "k"]] == 2048).all().all()
    assert frame["runtime_ms"].between(13, 3400).all()
    assert frame["runtime_spread"].median() < 0.02
    assert set(frame["device"]) == {"NVIDIA GeForce GTX 680"}


def test_neusight_keeps_only_request_time_inputs(gemm_settings: Settings) -> None:
    data = load_gemm("neusight-gemm", gemm_settings)
    frame = data.frame
    assert len(frame) == 119_847
    assert frame["device"].nunique() == 5 and set(frame["op"]) == {"bmm", "linear"}
    # Kernel, grid and occupancy were observed at run time: none of them may become an input.
    assert frame["kernel"].isna().all() and frame["tile_m"].isna().all()
    assert set(data.devices) == set(frame["device"])


# cuBLAS SGEMM kernels name their output tile: ``volta_sgemm_128x64_nn``, ``ampere_sgemm_32x32_sliced1x4_tn``
# (sliced1x4 splits k across the warps of one block). The legacy ``sgemm_32x32x32_NN`` (P100 and P4, 0.4%
# of their bmm rows) names no output tile this way and is left out.
CUBLAS_TILE = r"_(\d+)x(\d+)_"


def grid_matches_output_tiles(raw: pd.DataFrame, rows: pd.DataFrame) -> pd.Series:
    """Per NeuSight row whose kernel names a tile: whether its recorded launch grid (x, y, z) is the
    output-tile grid of that tile over the row's (m, n) as ``rows`` gives them. x and y are ceil(size /
    tile) over the two output dimensions, the tile's first number on either one (cuBLAS is column-major,
    and which dimension a tile number covers depends on the kernel); z is the batch times a split-K factor.
    ``nn.Linear`` flattens its (B, M, N) input: one GEMM over B * M rows, no batch in z."""
    tile = raw["Kernel Name"].str.extract(CUBLAS_TILE).astype(float).to_numpy()
    first, second = tile[:, 0], tile[:, 1]
    linear = rows["op"].eq("linear").to_numpy()
    batch = rows["batch"].to_numpy()
    m = rows["m"].to_numpy() * np.where(linear, batch, 1)
    n = rows["n"].to_numpy()
    x, y, z = (raw[f"Grid {axis}"].to_numpy() for axis in "xyz")
    spans = ((x == np.ceil(n / first)) & (y == np.ceil(m / second))) | (
        (x == np.ceil(m / first)) & (y == np.ceil(n / second))
    )
    split_k = z % np.where(linear, 1, batch) == 0
    named = ~np.isnan(first)
    return pd.Series(spans & split_k, index=raw.index)[named]


def test_neusight_reduces_over_n_as_the_recorded_grid_shows(gemm_settings: Settings) -> None:
    """NeuSight's N is the reduction dimension (m = M, n = K, k = N): the launch grid cuBLAS recorded is
    the loaded output's tile grid on every GPU and op, which the old reading (n = N) is nowhere near."""
    matches, old = {}, []
    for rel, path in sorted(fetch(get_spec("neusight-gemm"), gemm_settings).items()):
        if not rel.startswith("train/"):
            continue
        report = LoadReport("neusight-gemm")
        rows = load_neusight({rel: path}, report)
        raw = pd.read_csv(path)
        assert report.rejected == {} and len(rows) == len(raw), rel
        assert (rows["k"].to_numpy() == raw["N"].to_numpy()).all(), rel
        ok = grid_matches_output_tiles(raw, rows)
        assert len(ok) >= 0.99 * len(raw), rel
        matches[rel] = ok.mean()
        old.append(grid_matches_output_tiles(raw, rows.assign(n=rows["k"])))
    assert len(matches) == 10 and min(matches.values()) >= 0.95, matches
    assert pd.concat(old).mean() < 0.5


def test_every_source_featurises_without_non_finite_core_features(gemm_settings: Settings) -> None:
    catalog = DeviceCatalog.default()
    for name in ("gpperf-rtx4070", "gpperf-rtx4070-tiled", "neusight-gemm"):
        data = load_gemm(name, gemm_settings, catalog)
        sample = data.frame.sample(min(len(data.frame), 2000), random_state=0)
        features = build_features(sample, data.devices)
        assert tuple(features.columns) == FEATURE_COLUMNS
        core = features[
            [
                "log_flops",
                "log_roofline_ms",
                "log_baseline_ms",
                "log_physics_ms",
                "log_reference_ms",
                "log_mn_ms",
                "output_intensity_over_ridge",
                "output_over_l2",
                "waves",
            ]
        ]
        assert np.isfinite(core.to_numpy()).all(), name


def test_numpy_runs_outer_products_on_a_slower_path(gemm_settings: Settings) -> None:
    """Why ``outer_product`` is a feature outside the k-monotone ones: in the bundled CPU measurements an
    outer product (k = 1) costs several times more per output element than k = 2 on large outputs."""
    data = load_gemm("cpu-gemm-local", gemm_settings)
    frame = data.frame.loc[data.frame["m"] * data.frame["n"] * data.frame["batch"] >= 500_000]
    per_output = frame["runtime_ms"] / (frame["m"] * frame["n"] * frame["batch"])
    outer = per_output.loc[frame["k"] == 1]
    k2 = per_output.loc[frame["k"] == 2]
    assert len(outer) >= 8 and len(k2) >= 8
    assert outer.median() > 3 * k2.median(), (outer.median(), k2.median())


def test_with_k_gives_the_features_of_the_same_rows_with_that_k(gemm_settings: Settings) -> None:
    """Split models evaluate rows at k = split from their feature matrix alone: the k-dependent columns
    recomputed there equal a fresh featurisation of the rows with that k, on every source."""
    catalog = DeviceCatalog.default()
    for name in ("cpu-gemm-local", "gpperf-rtx4070-tiled", "neusight-gemm"):
        data = load_gemm(name, gemm_settings, catalog)
        sample = data.frame.sample(min(len(data.frame), 2000), random_state=1)
        matrix = feature_matrix(sample, data.devices)
        for k in (1, 32, 3000):
            expected = feature_matrix(sample.assign(k=k), data.devices)
            np.testing.assert_array_equal(with_k(matrix, k), expected, err_msg=f"{name}, k={k}")
        assert not np.array_equal(with_k(matrix, 32), matrix)


DEEPBENCH_FP16 = {"Tesla V100-SXM2-16GB", "Tesla T4", "Tesla P100-PCIE-16GB"}


@pytest.fixture(scope="module")
def deepbench(gemm_settings: Settings):
    return load_gemm("deepbench", gemm_settings, DeviceCatalog.default())


def test_deepbench_reads_the_dense_gemm_block_of_every_gpu(deepbench) -> None:
    frame, report = deepbench.frame, deepbench.report
    assert report.rejected == {}, report.examples
    assert list(frame.columns) == list(COLUMNS)
    fp32 = frame.loc[frame["dtype"] == "float32"]
    per_device = fp32.groupby("device").size()
    assert len(per_device) == 8 and (per_device >= 150).all(), per_device
    catalog = DeviceCatalog.default()
    assert all(d in catalog for d in frame["device"].unique())
    assert set(deepbench.devices) == set(frame["device"])
    # Only the GEMM block: no convolution, RNN or all-reduce row comes along.
    assert set(frame["op"]) == {"gemm"} and (frame["batch"] == 1).all() and frame["kernel"].isna().all()
    assert set(frame["layout"]) <= set(LAYOUTS) and {"nn", "nt", "tn"} <= set(frame["layout"])
    assert set(frame.loc[frame["dtype"] == "float16", "device"]) == DEEPBENCH_FP16
    assert set(frame["dtype"]) == {"float32", "float16"} and (frame["runtime_ms"] > 0).all()
    # Shapes from real models: unlike neusight-gemm's, most are multiples of 8.
    aligned = ((frame[["m", "n", "k"]] % 8) == 0).all(axis=1)
    assert aligned.mean() > 0.5
    assert not frame.duplicated(["device", "m", "n", "k", "layout", "dtype"]).any()


def test_deepbench_never_runs_above_the_devices_peak(deepbench) -> None:
    frame = deepbench.frame
    specs = deepbench.devices
    achieved = 2.0 * frame["m"] * frame["n"] * frame["k"] / frame["runtime_ms"] / 1e6  # GFLOP/s
    pairs = zip(frame["device"], frame["dtype"], strict=True)
    peak = pd.Series([dtype_peak(specs[d], t).gflops for d, t in pairs])
    ratio = achieved / peak
    # GPU Boost runs a GeForce 1080 Ti above its rated 1582 MHz boost clock: its fastest SGEMM reaches
    # 12.1 TFLOP/s, 1.07x the datasheet's 11.34. Every other device stays within 5% of its datasheet peak.
    over = frame.loc[ratio > 1.05, ["device", "m", "n", "k", "dtype"]].assign(ratio=ratio)
    assert set(over["device"]) <= {"NVIDIA GeForce GTX 1080 Ti"}, over
    assert ratio.max() <= 1.10, over
    # The tensor-core FP16 rows run far above the FP32 rate: why V100 and T4 carry fp16_gflops.
    for device in ("Tesla V100-SXM2-16GB", "Tesla T4"):
        half = frame["device"].eq(device) & frame["dtype"].eq("float16")
        assert achieved[half].max() > 3 * specs[device].fp32_gflops, device
    # P100's pseudo-FP16 computes in FP32: its times match the FP32 sheet's.
    keys = ["device", "m", "n", "k", "layout"]
    p100 = frame.loc[frame["device"] == "Tesla P100-PCIE-16GB"]
    paired = p100.pivot_table(index=keys, columns="dtype", values="runtime_ms").dropna()
    assert len(paired) >= 150
    assert 0.9 < (paired["float16"] / paired["float32"]).median() < 1.1


def _workbook(path: Path, sheets: dict[str, list[list[object]]]) -> Path:
    book = openpyxl.Workbook()
    book.remove(book.active)
    for name, rows in sheets.items():
        sheet = book.create_sheet(name)
        for row in rows:
            sheet.append(row)
    book.save(path)
    return path


GEMM_HEADER = ["Dense Matrix Multiplication", None, "M", "N", "K", "A Transpose", "B Transpose", None,
               "Time (msec)", "TERAFLOPS"]  # fmt: skip
CONV_BLOCK = [
    [],
    ["Convolution"],
    [None, None, "W", "H", "C", "N", "K "],
    [None, "Vision", 224, 224, 3, 8, 64],
]


def test_deepbench_workbook_without_a_dense_block_names_the_file_and_sheet(tmp_path: Path) -> None:
    path = _workbook(
        tmp_path / "DeepBench_NV_V100.xlsx",
        {"Results FP32": [["Precision", "Float"], *CONV_BLOCK], "Specs": [["GPU Model", "NVIDIA V100"]]},
    )
    with pytest.raises(
        DatasetError,
        match=r"DeepBench_NV_V100\.xlsx, sheet 'Results FP32': no 'Dense Matrix Multiplication' block",
    ):
        load_deepbench({"DeepBench_NV_V100.xlsx": path}, LoadReport("deepbench"))


def test_deepbench_rejects_bad_and_repeated_rows_by_file_sheet_and_row(tmp_path: Path) -> None:
    rows: list[list[object]] = [
        ["Precision", "Float"],
        [],
        GEMM_HEADER,
        [None, "DeepSpeech", 1760, 16, 1760, "N", "N", None, 0.038, 2.6],
        [None, "DeepSpeech", 1760, 32, 1760, "N", "T", None, "N/A", None],
        [],
        [None, "DeepSpeech", 0, 32, 1760, "T", "N", None, 0.041, 4.8],
        [None, "DeepSpeech", 1760, 64, 1760, "X", "N", None, 0.056, 7.0],
        [None, "DeepSpeech", 1760, 16, 1760, "N", "N", None, 0.040, 2.5],
        ["note beside sizes", "DeepSpeech", 2048, 16, 2048, "T", "N", None, 0.042, 3.2],
        *CONV_BLOCK,
    ]
    half = [
        ["Precision", "16 bit inputs"],
        [],
        GEMM_HEADER,
        [None, None, 1760, 16, 1760, "T", "T", None, 0.01, 9],
    ]
    path = _workbook(
        tmp_path / "t4.xlsx", {"Results FP32": rows, "Results - FP16 ip, Mixed math": half, "Specs": []}
    )
    report = LoadReport("deepbench")
    frame = load_deepbench({"DeepBench_NV_T4.xlsx": path}, report)
    assert frame[["m", "n", "k", "dtype", "layout", "runtime_ms"]].to_dict("records") == [
        {"m": 1760, "n": 16, "k": 1760, "dtype": "float32", "layout": "nn", "runtime_ms": 0.038},
        {"m": 2048, "n": 16, "k": 2048, "dtype": "float32", "layout": "tn", "runtime_ms": 0.042},
        {"m": 1760, "n": 16, "k": 1760, "dtype": "float16", "layout": "tt", "runtime_ms": 0.01},
    ]
    assert set(frame["device"]) == {"Tesla T4"}
    sheet = "DeepBench_NV_T4.xlsx:Results FP32"
    assert report.examples == {
        "time_ms missing, non-numeric or <= 0": [f"{sheet}:5: 'N/A'"],
        "m missing, non-numeric or <= 0": [f"{sheet}:7: 0"],
        "a_transpose not N or T": [f"{sheet}:8: 'X'"],
        "duplicate configuration": [f"{sheet}:9 repeats {sheet}:4"],
    }, report.examples


def test_the_bundled_cpu_never_runs_above_its_peak(gemm_settings: Settings) -> None:
    """A peak below a measured rate puts the roofline floor above the measurements and clips predictions
    to it (the nominal-clock estimate, 166 GFLOP/s, was under the 214 measured)."""
    data = load_gemm("cpu-gemm-local", gemm_settings)
    frame = data.frame
    (spec,) = data.devices.values()
    achieved = flops(frame) / frame["runtime_ms"].to_numpy() / 1e6
    peak = np.array([dtype_peak(spec, t).gflops for t in frame["dtype"]])
    assert (achieved <= peak).all(), frame.loc[achieved > peak, ["m", "n", "k", "dtype", "threads"]]
    assert (achieved / peak).max() > 0.8  # and not so high that it prices nothing
