"""The CPU feature module: leakage guard on the real columns, parsing, stateless categoricals, OOD."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from service.core.settings import Settings
from service.domains.cpu import features as cpu
from service.domains.cpu import profile as cpu_profile
from training.domains.cpu.data import BENCHMARK, RUNTIME_PREFIX, load_spec_cpu2017


@pytest.fixture(scope="module")
def spec():
    return load_spec_cpu2017(Settings())


def test_no_target_column_reaches_the_features(spec):
    for suite, data in spec.suites.items():
        targets = {c for c in data.source_columns if BENCHMARK.match(c) or c.startswith(RUNTIME_PREFIX)}
        assert len(targets) == 2 * len(data.benchmarks), suite
        assert not targets & set(cpu.SPEC_FIELDS)
        for feature in cpu.FEATURE_COLUMNS:
            assert not any(t in feature for t in targets), (suite, feature)
        # Scrambling every ratio and the score leaves every feature unchanged: none is read.
        frame = data.frame.head(300)
        scrambled = frame.copy()
        rng = np.random.default_rng(0)
        for col in [*data.benchmarks, "score"]:
            scrambled[col] = rng.permutation(scrambled[col].to_numpy())
        pd.testing.assert_frame_equal(cpu.build_features(frame), cpu.build_features(scrambled))


def test_build_features_columns_and_derived_values():
    row = {
        "vendor": "Intel",
        "model_name": "Xeon Platinum 8380",
        "nominal_mhz": 2300,
        "max_mhz": 3400,
        "cores_per_socket": 40,
        "sockets": 2,
        "threads_per_core": 2,
        "l3_cache_kb": 61440,
        "mem_channels": 16,
        "mem_data_rate": 3200,
        "threads_or_copies": 160,
    }
    features = cpu.build_features(cpu.specs_frame([row]))
    assert tuple(features.columns) == cpu.FEATURE_COLUMNS
    f = features.iloc[0]
    assert f["total_cores"] == 80 and f["total_threads"] == 160
    assert f["l3_per_core_kb"] == pytest.approx(1536)
    assert f["mem_bandwidth_gbps"] == pytest.approx(409.6)
    assert f["boost_ratio"] == pytest.approx(3400 / 2300)
    assert f["copies_per_thread"] == 1.0
    assert (f["sku_series"], f["sku_number"], f["cpu_generation"]) == (8, 380, 3)
    assert math.isnan(f["storage_gb"])  # not given: unknown, not an error


@pytest.mark.parametrize(
    ("name", "family", "tier", "series", "number"),
    [
        ("Xeon Platinum 8380", "Xeon", "Platinum", 8, 380),
        ("Xeon E5-2699 v4", "Xeon", "E5", 2, 699),
        ("EPYC 7742", "EPYC", "", 7, 742),
        ("Core i9-9900K", "Core", "i9", 9, 900),
        ("Intel(R) Xeon(R) Platinum 8487C", "Xeon", "Platinum", 8, 487),
    ],
)
def test_parse_model_name(name, family, tier, series, number):
    parsed = cpu.parse_model_name(name)
    assert (parsed["cpu_family"], parsed["cpu_tier"], parsed["sku_series"], parsed["sku_number"]) == (
        family,
        tier,
        series,
        number,
    )


def test_unparseable_names_do_not_fail():
    for name in ("", None, "Mystery Chip", "!!"):
        parsed = cpu.parse_model_name(name)
        assert math.isnan(parsed["sku_series"])


def test_category_codes_are_stable_and_total():
    assert cpu.category_code("Intel") == cpu.category_code("Intel")
    assert cpu.category_code("Intel") != cpu.category_code("AMD")
    assert np.isfinite(cpu.category_code("NeverSeenVendor"))
    assert math.isnan(cpu.category_code(None))


def test_specs_frame_names_the_bad_field():
    with pytest.raises(ValueError, match="cores_per_socket"):
        cpu.specs_frame([{"cores_per_socket": "many"}])
    with pytest.raises(ValueError, match="sockets"):
        cpu.specs_frame([{"sockets": -1}])
    with pytest.raises(ValueError, match="cores_per_sockets"):
        cpu.specs_frame([{"cores_per_sockets": 8}])
    with pytest.raises(ValueError, match="vendor"):
        cpu.specs_frame([{"vendor": 3}])


def test_ood_reasons_flag_new_categories_and_ranges(spec):
    frame = spec.suites["Int_speed"].frame
    profile = cpu_profile.domain_profile(frame)
    assert "Intel" in profile["categories"]["vendor"]
    inside = cpu_profile.ood_reasons(frame.head(50), profile)
    assert inside == [[] for _ in range(50)]
    request = cpu.specs_frame(
        [
            {"vendor": "Loongson", "model_name": "3A6000", "cores_per_socket": 4, "sockets": 1},
            {"vendor": "Intel", "model_name": "Xeon Gold 6248", "cores_per_socket": 512, "sockets": 2},
        ]
    )
    reasons = cpu_profile.ood_reasons(request, profile)
    assert any("vendor 'Loongson'" in r for r in reasons[0])
    assert any(r.startswith("total_cores 1024 outside") for r in reasons[1])
    assert list(cpu_profile.seen_model(request, profile)) == [False, True]
