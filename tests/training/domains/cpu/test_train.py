"""A small CPU model fitted on real SPEC rows: publish, load as the service does, predict, OOD, behaviour."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from service.core.model import TabularModel
from service.core.settings import Settings
from service.domains.cpu import DOMAIN as CPU
from service.domains.cpu import features as cpu
from service.domains.cpu import profile as cpu_profile
from training.core.publish import publish
from training.domains.cpu.data import SpecData, load_spec_cpu2017
from training.domains.cpu.evaluate import score_from_ratios
from training.domains.cpu.train import cpu_card, fit_spec_suite, target_stem

SUITE = "Int_rate"
BENCH = "500.perlbench_r"


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    """perlbench and the suite score on 2,000 Int_rate results (LightGBM, 3 folds: seconds, not minutes)."""
    data = load_spec_cpu2017(Settings(), (SUITE,))
    frame = data.suites[SUITE].frame
    train = frame.sample(2000, random_state=0)
    test = frame.drop(train.index)
    models = fit_spec_suite(train, SUITE, [BENCH])
    fitted = {target_stem(name): pair for name, pair in models.items()}
    subset = SpecData(suites={SUITE: data.suites[SUITE]}, report=data.report, files=data.files)
    path = publish(tmp_path_factory.mktemp("models"), "cpu", CPU, cpu_card(subset, fitted, 0.0), fitted)
    return models, test, path


def test_card_has_what_the_service_needs(small):
    _, _, path = small
    card = json.loads((path / "card.json").read_text())
    assert card["domain"] == "cpu"
    assert card["feature_version"] == cpu.FEATURE_VERSION
    assert card["feature_columns"] == list(cpu.FEATURE_COLUMNS)
    assert all(len(f["sha256"]) == 64 for f in card["datasets"][0]["files"])
    keys = {f"{SUITE}/{BENCH}": f"{SUITE}__{BENCH}", f"{SUITE}/score": f"{SUITE}__score"}
    assert card["target_keys"] == keys
    for stem, spec in card["targets"].items():
        assert spec["file"].startswith(stem) and "/" not in spec["file"]
        assert set(spec["calibration"]) == {"seen", "unseen"}
    assert "Intel" in card["profile"]["categories"]["vendor"]
    assert card["profile"]["ranges"]["total_cores"][0] >= 1


def test_unseen_vendor_predicts_with_an_ood_flag(small):
    _, _, path = small
    model = TabularModel(path, cpu.FEATURE_VERSION, cpu.FEATURE_COLUMNS).load()
    request = [
        {
            "vendor": "Hygon",
            "model_name": "Hygon C86 7285",
            "nominal_mhz": 2000,
            "max_mhz": 3000,
            "cores_per_socket": 32,
            "sockets": 2,
            "threads_per_core": 2,
            "l3_cache_kb": 65536,
            "mem_channels": 16,
            "mem_data_rate": 2666,
            "threads_or_copies": 128,
            "compiler": "C/C++: Version 3.0.0 of HygonCC",
        }
    ]
    features, seen, reasons = cpu_profile.request_features(request, model.card["profile"])
    assert any("vendor 'Hygon'" in r for r in reasons[0])
    assert any("compiler_family 'HygonCC'" in r for r in reasons[0])
    assert not seen[0]
    # TabularModel's per-target "devices" are the CPU models trained on: it picks the unseen interval.
    out = model.predict(features, 0.9, [str(r["model_name"]) for r in request])
    for prediction, was_seen in out.values():
        assert np.isfinite(prediction.value).all() and (prediction.value > 0).all()
        assert prediction.low[0] < prediction.value[0] < prediction.high[0]
        assert not was_seen[0]


def test_more_cores_do_not_lower_the_rate_score(small):
    models, test, _ = small
    score, _ = models[f"{SUITE}/score"]
    base = test.head(300)
    doubled = base.copy()
    for col in ("cores_per_socket", "cpus", "threads_or_copies"):
        doubled[col] = doubled[col] * 2
    before = score.predict(cpu.build_features(base))
    after = score.predict(cpu.build_features(doubled))
    # A rate run with twice the cores and copies does more work per second on average.
    assert np.mean(after - before) > np.log(1.1)


def test_score_model_agrees_with_the_held_out_scores(small):
    models, test, _ = small
    score, _ = models[f"{SUITE}/score"]
    pred = np.exp(score.predict(cpu.build_features(test)))
    ape = np.abs(pred - test["score"].to_numpy()) / test["score"].to_numpy()
    assert np.median(ape) < 0.05


def test_suite_score_is_the_geomean_of_predicted_ratios():
    rows = []
    for column, preds in (("a", [2.0, 8.0]), ("b", [8.0, 2.0]), ("score", [5.0, 5.0])):
        for i, pred in enumerate(preds):
            rows.append(
                {
                    "target": f"S/{column}",
                    "suite": "S",
                    "column": column,
                    "model": "lightgbm",
                    "true": 4.0,
                    "pred": pred,
                    "low": pred / 1.5,
                    "high": pred * 1.5,
                    "row": i,
                }
            )
    out, direct = score_from_ratios(pd.DataFrame(rows))
    score = out.loc[out["column"] == "score"]
    np.testing.assert_allclose(score["pred"], [4.0, 4.0])
    np.testing.assert_allclose(score["high"] / score["pred"], [1.5, 1.5])
    assert direct["S"]["mape"] == pytest.approx(0.25)
