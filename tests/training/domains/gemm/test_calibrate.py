"""A device seen only in a few rows (the calibration sweep a user ran on a new GPU) is corrected by those
rows, gets the calibrated intervals, and the service applies exactly the correction training fit."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from service.core.model import TabularModel
from service.core.settings import Settings
from service.domains.gemm import DOMAIN as GEMM
from service.domains.gemm import features
from training.core.corrections import CALIBRATION_ROWS
from training.core.models import CostRegressor
from training.domains.gemm.train import GemmFit

NEW_GPU = "NVIDIA L40S"
ROWS_PER_DEVICE_DTYPE = 200


def test_a_group_seen_in_a_few_rows_is_corrected_by_them() -> None:
    """Three groups of 600 rows and one of 32 that runs 2x slower than the features say: the trees cannot
    tell the groups apart, the correction does."""
    rng = np.random.default_rng(0)
    groups = np.repeat(["a", "b", "c", "new"], [600, 600, 600, CALIBRATION_ROWS])
    x = rng.uniform(0, 4, len(groups))
    y = np.sin(x) + np.where(groups == "new", np.log(2.0), 0.0) + rng.normal(0, 0.02, len(groups))
    X = pd.DataFrame({"x": x})
    model = CostRegressor(
        candidates=("lightgbm",),
        regimes=("seen", "unseen", "calibrated"),
        select_by="seen",
        correct_on=("x",),
        n_jobs=1,
    ).fit(X, y, groups)
    assert list(model.corrections_) == ["new"]
    assert "calibrated" in model.calibration_
    probe = pd.DataFrame({"x": np.linspace(0.5, 3.5, 50)})
    corrected = model.predict(probe, np.full(50, "new"))
    plain = model.predict(probe, np.full(50, "a"))
    np.testing.assert_allclose(corrected - plain, np.log(2.0), atol=0.15)
    np.testing.assert_allclose(plain, np.sin(probe["x"]), atol=0.15)


@dataclass
class Calibrated:
    fit: GemmFit
    model: TabularModel
    test: pd.DataFrame
    features: pd.DataFrame


@pytest.fixture(scope="module")
def calibrated(tmp_path_factory: pytest.TempPathFactory, mirror: Path) -> Calibrated:
    from training.collect.gpu_sweep import calibration_sweep
    from training.core.publish import publish
    from training.domains.gemm.data import load_gemm
    from training.domains.gemm.evaluate import calibration_rows
    from training.domains.gemm.train import fit_gemm, gemm_card

    root = tmp_path_factory.mktemp("calibrated")
    data = load_gemm("aiconfigurator-gemm", Settings(data_mirror=mirror, data_home=root / "cache"))
    frame = data.frame.loc[data.frame["dtype"].isin(["bfloat16", "float8_e4m3fn"])]
    sample = (
        frame.sample(frac=1.0, random_state=0).groupby(["device", "dtype"]).head(ROWS_PER_DEVICE_DTYPE)
    ).reset_index(drop=True)
    held = sample.loc[sample["device"] == NEW_GPU]
    shots = calibration_rows(held, calibration_sweep(), CALIBRATION_ROWS)
    train = pd.concat([sample.loc[sample["device"] != NEW_GPU], held.loc[shots]], ignore_index=True)
    test = held.drop(shots).reset_index(drop=True)
    fit = fit_gemm(train, data.devices)
    path = publish(root / "models", "gemm", GEMM, gemm_card(train, data.devices, [], 0.0), fit.models)
    model = TabularModel(path, features.FEATURE_VERSION, features.FEATURE_COLUMNS, features.with_k).load()
    return Calibrated(fit, model, test, features.build_features(test, data.devices))


def test_the_service_applies_the_correction_training_fit(calibrated: Calibrated) -> None:
    target = calibrated.model.targets["runtime_ms"]
    assert NEW_GPU in target.corrections
    names = [NEW_GPU] * len(calibrated.test)
    matrix = calibrated.features.loc[:, list(features.FEATURE_COLUMNS)].to_numpy(dtype=float)
    served = target.predict_log(matrix, names)
    trained = calibrated.fit.models["runtime_ms"][0].predict(calibrated.features, np.array(names))
    np.testing.assert_allclose(served, trained, rtol=1e-6, atol=1e-6)


def test_the_correction_cuts_the_new_devices_error_and_widens_to_the_calibrated_interval(
    calibrated: Calibrated,
) -> None:
    target = calibrated.model.targets["runtime_ms"]
    matrix = calibrated.features.loc[:, list(features.FEATURE_COLUMNS)].to_numpy(dtype=float)
    measured = np.log(calibrated.test["runtime_ms"].to_numpy(dtype=float))
    names = [NEW_GPU] * len(matrix)
    corrected = np.abs(np.expm1(target.predict_log(matrix, names) - measured)).mean()
    plain = np.abs(np.expm1(target.predict_log(matrix) - measured)).mean()
    assert corrected < plain, (corrected, plain)
    seen = np.ones(len(matrix), dtype=bool)
    widths = target.halfwidths(0.9, seen, None, target.calibrated(names))
    assert "calibrated" in target.calibration
    assert np.all(widths >= target.halfwidths(0.9, seen)[0])
