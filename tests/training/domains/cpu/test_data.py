"""CPU loaders on the real files (through PERFCOST_DATA_MIRROR, which CI always sets)."""

from __future__ import annotations

import numpy as np
import pytest

from service.core.settings import Settings
from service.domains.cpu.features import SPEC_FIELDS
from training.core.report import LoadReport
from training.domains.cpu.data import (
    BENCHMARK,
    RUNTIME_PREFIX,
    SCORE,
    SUITES,
    load_ncpp,
    load_spec_cpu2017,
    load_spec_suite,
    load_uci_hardware,
)

ROWS = {"FP_rate": 5331, "FP_speed": 4306, "Int_rate": 5553, "Int_speed": 4313}
BENCHMARKS = {"FP_rate": 13, "FP_speed": 10, "Int_rate": 10, "Int_speed": 10}


@pytest.fixture(scope="module")
def spec():
    return load_spec_cpu2017(Settings())


def test_spec_suites_rows_and_columns(spec):
    assert set(spec.suites) == set(SUITES)
    assert spec.report.rejected == {}
    for suite, data in spec.suites.items():
        assert len(data.frame) == ROWS[suite]
        assert len(data.benchmarks) == BENCHMARKS[suite]
        assert all(c in data.frame for c in (*SPEC_FIELDS, "file", *data.benchmarks, SCORE))
        # Runtimes never reach the loaded table.
        assert not [c for c in data.frame.columns if c.startswith(RUNTIME_PREFIX)]
        # Every source ratio has its runtime twin, so the leakage guard knows both families.
        assert all(f"{RUNTIME_PREFIX}{b}" in data.source_columns for b in data.benchmarks)


def test_spec_targets_are_finite_and_score_is_the_geomean(spec):
    for data in spec.suites.values():
        targets = data.frame[[*data.benchmarks, SCORE]].to_numpy(dtype=float)
        assert np.isfinite(targets).all() and (targets > 0).all()
        geomean = np.exp(np.log(data.frame[data.benchmarks].to_numpy(dtype=float)).mean(axis=1))
        np.testing.assert_allclose(data.frame[SCORE], geomean)


def test_spec_malformed_rows_are_counted_with_line_numbers(spec, tmp_path):
    source = spec.suites["Int_speed"]
    header = ",".join(source.source_columns)
    good = source.frame.iloc[0]
    values = [str(good[c]) if c in good else "1.0" for c in source.source_columns]
    bad_ratio = list(values)
    bad_ratio[source.source_columns.index(source.benchmarks[0])] = "-3"
    no_model = list(values)
    no_model[source.source_columns.index("model_name")] = ""
    no_model[source.source_columns.index("file")] = "other.csv"
    path = tmp_path / "input_Int_speed.csv"
    path.write_text("\n".join([header, ",".join(values), ",".join(bad_ratio), ",".join(no_model)]) + "\n")
    report = LoadReport("spec-cpu2017")
    data = load_spec_suite("Int_speed", path, report)
    assert len(data.frame) == 1
    ratio_reason = f"{source.benchmarks[0]} missing, non-numeric or <= 0"
    assert report.rejected == {ratio_reason: 1, "model_name missing": 1}
    assert report.examples[ratio_reason][0].startswith("input_Int_speed.csv:3")
    assert report.examples["model_name missing"] == ["input_Int_speed.csv:4"]


def test_benchmark_pattern_matches_ratios_only():
    assert BENCHMARK.match("503.bwaves_r") and BENCHMARK.match("657.xz_s")
    assert not BENCHMARK.match("t_503.bwaves_r") and not BENCHMARK.match("threads_or_copies")


def test_uci_hardware():
    data = load_uci_hardware(Settings())
    assert len(data.frame) == 209
    assert data.report.rejected == {}
    assert {"myct", "mmin", "mmax", "cach", "chmin", "chmax", "prp", "erp"} <= set(data.frame.columns)
    assert (data.frame["prp"] > 0).all()


def test_ncpp():
    data = load_ncpp(Settings())
    assert {k: len(v.frame) for k, v in data.items()} == {"train_data.csv": 145, "test_data.csv": 135}
    for table in data.values():
        assert (table.frame["value"] > 0).all()
        assert table.frame[["workload", "test", "model_name", "cores_per_socket"]].notna().all().all()
        assert table.frame["nominal_mhz"].between(1000, 5000).all()
