"""Expectations on the real GEMM datasets, read through the registry from the mirror."""

from __future__ import annotations

import numpy as np
import pytest

from service.devices import DeviceCatalog
from service.features.gemm import FEATURE_COLUMNS, build_features, feature_matrix, with_k
from service.settings import Settings
from training.data.gemm import COLUMNS, load_gemm


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


def test_every_source_featurises_without_non_finite_core_features(gemm_settings: Settings) -> None:
    catalog = DeviceCatalog.default()
    for name in ("gpperf-rtx4070", "gpperf-rtx4070-tiled", "neusight-gemm"):
        data = load_gemm(name, gemm_settings, catalog)
        sample = data.frame.sample(min(len(data.frame), 2000), random_state=0)
        features = build_features(sample, data.devices)
        assert tuple(features.columns) == FEATURE_COLUMNS
        core = features[["log_flops", "log_bytes", "log_roofline_ms", "log_baseline_ms", "waves"]]
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
