"""Model behaviour on real data: round trip through the registry, monotonic cost, honest intervals."""

from __future__ import annotations

import itertools
import json
from dataclasses import replace
from pathlib import Path

import lightgbm as lgb
import numpy as np
import pandas as pd
import pytest

from service.core.devices import DeviceCatalog
from service.core.model import TabularModel, list_versions
from service.core.settings import Settings
from service.core.targets import halfwidth
from service.domains.gemm import DOMAIN as GEMM
from service.domains.gemm import features
from service.domains.gemm import runtime as gemm
from service.domains.gemm.schemas import GemmInstance
from training.core.candidates import make_candidate
from training.core.models import CostRegressor
from training.core.publish import publish
from training.core.split_regressor import SplitRegressor
from training.domains.gemm.data import load_gemm
from training.domains.gemm.train import K_SPLIT, fit_gemm

RTX = "NVIDIA GeForce RTX 4070"


def load_latest(model_dir: Path) -> TabularModel:
    (path,) = list_versions(model_dir, "gemm")[-1:]
    return TabularModel(path, features.FEATURE_VERSION, features.FEATURE_COLUMNS, features.with_k).load()


def test_train_save_load_predict_round_trip_agrees(settings: Settings) -> None:
    """GPPerf's tiled kernel plus NeuSight rows with small k, so that runtime is split at k = 32 and the
    service's split (and cap at the split) is checked against the in-process one."""
    tiled = load_gemm("gpperf-rtx4070-tiled", settings)
    neusight = load_gemm("neusight-gemm", settings)
    small_k = neusight.frame.loc[neusight.frame["k"] < K_SPLIT].sample(300, random_state=0)
    frame = pd.concat([tiled.frame, neusight.frame.sample(1200, random_state=0), small_k], ignore_index=True)
    data = replace(tiled, frame=frame, devices=tiled.devices | neusight.devices)
    fit = fit_gemm(data.frame, data.devices)
    assert isinstance(fit.models["runtime_ms"][0], SplitRegressor) and fit.models["runtime_ms"][0].split_
    card = {
        "domain": "gemm",
        "feature_version": features.FEATURE_VERSION,
        "feature_columns": list(features.FEATURE_COLUMNS),
    }
    path = publish(settings.model_dir, "gemm", GEMM, card, fit.models)
    loaded = TabularModel(path, features.FEATURE_VERSION, features.FEATURE_COLUMNS, features.with_k).load()
    X = features.build_features(data.frame, data.devices)
    for target, (model, _) in fit.models.items():
        in_process = model.predict(X)
        from_disk = loaded.targets[target].predict(X.to_numpy(dtype=float), 0.9, np.ones(len(X), bool)).value
        if model.best_name_ == "random_forest":
            np.testing.assert_array_equal(from_disk, np.exp(in_process))
        else:
            # The service runs the ONNX export, whose float32 sums of 900 leaves stay within ~1e-5 on the
            # log scale (a moved branch would differ by far more).
            np.testing.assert_allclose(from_disk, np.exp(in_process), rtol=3e-5)
    on_disk = json.loads((path / "card.json").read_text())
    assert set(on_disk["files"]) == {p.name for p in path.iterdir() if p.name != "card.json"}
    assert on_disk["targets"]["runtime_ms"]["below"]["value"] == K_SPLIT


def test_served_model_adds_the_baseline_it_was_fit_relative_to(settings: Settings) -> None:
    """A target learned relative to ``log_baseline_ms`` is published with that baseline, and the service's
    prediction (which adds the baseline column back) equals the in-process one."""
    data = load_gemm("gpperf-rtx4070-tiled", settings)
    X = features.build_features(data.frame, data.devices)
    y = X["log_baseline_ms"].to_numpy() + 0.05 * X["log_m"].to_numpy()
    model = CostRegressor(candidates=("lightgbm",), n_splits=3, baseline="log_baseline_ms").fit(X, y)
    card = {"feature_version": features.FEATURE_VERSION, "feature_columns": list(features.FEATURE_COLUMNS)}
    path = publish(settings.model_dir, "gemm", GEMM, card, {"runtime_ms": (model, {})})
    loaded = TabularModel(path, features.FEATURE_VERSION, features.FEATURE_COLUMNS, features.with_k).load()
    published = json.loads((path / "card.json").read_text())["targets"]["runtime_ms"]
    assert published["baseline"] == "log_baseline_ms"
    served = loaded.targets["runtime_ms"].predict_log(X.to_numpy(dtype=float))
    np.testing.assert_allclose(served, model.predict(X), rtol=0, atol=1e-5)
    assert np.abs(served - y).max() < 0.05


def test_onnx_export_agrees_with_lightgbm_on_rows_with_missing_fields(
    trained_model_dir: Path, settings: Settings
) -> None:
    """NeuSight rows leave every kernel/tile field missing (NaN): the ONNX export the service runs sends
    them down the same branches as LightGBM's own predictor."""
    model = load_latest(trained_model_dir)
    spec = model.card["targets"]["runtime_ms"]
    assert spec["estimator"] == "lightgbm"
    booster = lgb.Booster(model_file=str(model.path / spec["file"]))
    data = load_gemm("neusight-gemm", settings)
    table = features.build_features(data.frame.sample(5000, random_state=1), data.devices)
    X = table.loc[:, booster.feature_name()].to_numpy(dtype=float)
    assert np.isnan(X).any(axis=0).sum() >= 10
    served = model.targets["runtime_ms"].predictor.predict(X)
    # LightGBM was fit on the float32 features its export compares (see training.core.candidates.tree_input);
    # the export sums leaves in float32 (a moved branch would differ by far more than this tolerance).
    np.testing.assert_allclose(served.ravel(), booster.predict(X.astype(np.float32)), rtol=1e-5, atol=1e-5)


def test_runtime_never_decreases_as_k_grows_across_the_split(trained_model_dir: Path) -> None:
    """The published runtime model is split at k = 32; from k = 2 on, through the split, the prediction
    never decreases on NeuSight's GPUs, for shapes whose small-k time is dominated by the write of C."""
    model = load_latest(trained_model_dir)
    assert model.targets["runtime_ms"].split is not None
    catalog = DeviceCatalog.default()
    ks = [2, 3, 4, 8, 16, 24, 31, 32, 33, 48, 64, 256, 4096]
    for device, m, n, batch in itertools.product(
        ("Tesla T4", "NVIDIA A100-PCIE-40GB"), (64, 1000, 8192), (64, 4096), (1, 16)
    ):
        instances = [GemmInstance(m=m, n=n, k=k, batch=batch, op="bmm", device=device) for k in ks]
        runtimes = [row["runtime_ms"]["value"] for row in gemm.predict(instances, 0.9, model, catalog)]
        assert all(b >= a for a, b in itertools.pairwise(runtimes)), (device, m, n, batch, runtimes)


def test_runtime_never_decreases_as_k_grows(trained_model_dir: Path) -> None:
    model = load_latest(trained_model_dir)
    catalog = DeviceCatalog.default()
    ks = [256, 512, 1024, 2048, 4096, 8192, 16384]
    for m, n, tile in itertools.product((512, 2048, 8192), (512, 4096), (8, 16, 32)):
        instances = [
            GemmInstance(
                m=m, n=n, k=k, device=RTX, tile_m=tile, tile_n=tile, tile_k=tile, kernel="gpperf_tiled_matmul"
            )
            for k in ks
        ]
        runtimes = [row["runtime_ms"]["value"] for row in gemm.predict(instances, 0.9, model, catalog)]
        assert all(b >= a for a, b in itertools.pairwise(runtimes)), (m, n, tile, runtimes)


def test_device_bound_targets_run_only_on_their_devices_rows(trained_model_dir: Path) -> None:
    """Power is predicted for the RTX 4070 rows only; those values equal a prediction of every row."""
    model = load_latest(trained_model_dir)
    instances = [
        GemmInstance(m=512, n=512, k=k, device=d) for d in (RTX, "NVIDIA H100 80GB HBM3") for k in (64, 4096)
    ]
    names, specs = gemm.resolve_devices(instances, DeviceCatalog.default(), gemm.model_devices(model))
    rows = {col: [getattr(i, col) for i in instances] for col in features.CONFIG_COLUMNS} | {"device": names}
    matrix = features.feature_matrix(rows, specs)
    power, seen = model.predict(matrix, 0.9, names, only_seen=("power_w",))["power_w"]
    everywhere, _ = model.predict(matrix, 0.9, names)["power_w"]
    assert seen.tolist() == [True, True, False, False]
    assert np.isnan(power.value[2:]).all() and np.isfinite(everywhere.value[2:]).all()
    np.testing.assert_array_equal(power.value[:2], everywhere.value[:2])


def test_higher_coverage_never_narrows_intervals(trained_model_dir: Path) -> None:
    target = load_latest(trained_model_dir).targets["runtime_ms"]
    rows = pd.DataFrame({"device": [RTX], "m": [1024], "n": [1024], "k": [1024]})
    X = features.build_features(rows, {RTX: DeviceCatalog.default().get(RTX)})
    matrix = X.to_numpy(dtype=float)
    widths = [target.predict(matrix, c, np.array([True])) for c in (0.5, 0.8, 0.9, 0.95, 0.99)]
    spans = [float(p.high[0] / p.low[0]) for p in widths]
    assert all(b >= a for a, b in itertools.pairwise(spans))


def test_unseen_device_intervals_are_wider_than_seen(settings: Settings) -> None:
    """Leave-one-device-out residuals are larger than K-fold ones on NeuSight's five GPUs."""
    data = load_gemm("neusight-gemm", settings)
    frame = data.frame.sample(6000, random_state=0)
    X = features.build_features(frame, data.devices)
    y = np.log(frame["runtime_ms"].to_numpy())
    model = CostRegressor(candidates=("lightgbm",), n_splits=3).fit(X, y, groups=frame["device"].to_numpy())
    assert set(model.calibration_) == {"seen", "unseen"}
    level = int(np.searchsorted(np.linspace(0, 1, 201), 0.9))
    assert model.calibration_["unseen"][level] > model.calibration_["seen"][level]


def test_intervals_on_subsampled_cv_cover_what_they_promise() -> None:
    """With more rows than CV uses, the deployed model calibrates on rows held out from its own fit: on
    fresh data, 90% intervals cover close to 90% (CV residuals of subsample models covered 99% on UCI)."""
    rng = np.random.default_rng(0)

    def draw(n: int) -> tuple[pd.DataFrame, np.ndarray]:
        X = pd.DataFrame(rng.uniform(0, 1, size=(n, 4)), columns=list("abcd"))
        return X, np.sin(6 * X["a"]) + X["b"] ** 2 + X["c"] + rng.normal(0, 0.05, n)

    X, y = draw(6000)
    model = CostRegressor(candidates=("lightgbm",), n_splits=3, max_cv_rows=300).fit(X, y)
    X_new, y_new = draw(4000)
    width = halfwidth(model.calibration_["seen"], 0.9)
    covered = np.mean(np.abs(model.predict(X_new) - y_new) <= width)
    assert 0.86 <= covered <= 0.94, covered


def test_large_data_deploys_a_fit_on_every_row() -> None:
    """Calibration rows are held out from a second fit only: the deployed model is the one fit on all rows."""
    rng = np.random.default_rng(1)
    X = pd.DataFrame(rng.uniform(0, 1, size=(3000, 3)), columns=list("abc"))
    y = X["a"] * 3 + np.sin(5 * X["b"]) + rng.normal(0, 0.05, 3000)
    model = CostRegressor(candidates=("lightgbm",), n_splits=3, max_cv_rows=300).fit(X, y)
    on_all_rows = make_candidate("lightgbm", len(X), 0).fit(X, y)
    np.testing.assert_array_equal(model.predict(X), on_all_rows.predict(X))


def test_only_the_chosen_candidate_runs_the_other_regime() -> None:
    """Leave-one-group-out CV calibrates the winner's intervals; the losing candidate never pays for it."""
    rng = np.random.default_rng(2)
    X = pd.DataFrame(rng.uniform(0, 1, size=(400, 3)), columns=list("abc"))
    y = X["a"] * 3 + rng.normal(0, 0.05, 400)
    model = CostRegressor(n_splits=3).fit(X, y, groups=np.arange(400) % 4)
    loser = next(name for name in model.cv_scores_ if name != model.best_name_)
    assert set(model.cv_scores_[model.best_name_]) == {"seen", "unseen"}
    assert set(model.cv_scores_[loser]) == {"seen"}
    assert set(model.calibration_) == {"seen", "unseen"}


def test_cv_learns_relative_to_a_baseline_only_where_that_helps() -> None:
    """Trees alone cannot predict above the largest target they saw; relative to a baseline column they
    can (runtime following the roofline past the measured sizes). CV takes that form when the target
    follows the baseline, and the plain one when the baseline is unrelated."""
    rng = np.random.default_rng(3)
    X = pd.DataFrame({"base": rng.uniform(0, 5, 600), "b": rng.uniform(0, 1, 600)})
    follows = X["base"] + 0.3 * X["b"] + rng.normal(0, 0.02, 600)
    beyond = pd.DataFrame({"base": [9.0, 12.0], "b": [0.5, 0.5]})
    relative = CostRegressor(candidates=("lightgbm",), n_splits=3, baseline="base").fit(X, follows)
    assert relative.baseline_ == "base" and set(relative.cv_scores_) == {"lightgbm", "lightgbm+base"}
    np.testing.assert_allclose(relative.predict(beyond), [9.15, 12.15], atol=0.1)
    plain = CostRegressor(candidates=("lightgbm",), n_splits=3).fit(X, follows)
    assert plain.baseline_ is None and plain.predict(beyond).max() < 5.5

    unrelated = np.sin(6 * X["b"]) + rng.normal(0, 0.02, 600)
    misled = CostRegressor(candidates=("lightgbm",), n_splits=3, baseline="base").fit(X, unrelated)
    assert misled.baseline_ is None
    with pytest.raises(ValueError, match="baseline names a column X does not have: 'nope'"):
        CostRegressor(baseline="nope").fit(X, follows)


def test_selection_rejects_too_few_rows() -> None:
    X = pd.DataFrame({"a": np.arange(5.0)})
    with pytest.raises(ValueError, match="at least 10 rows"):
        CostRegressor().fit(X, np.zeros(5))


def test_split_needs_rows_and_groups_on_both_sides() -> None:
    """A part with too few rows, or fewer than three groups where the whole has them (no held-out-group
    calibration), is not split off: one model fits every row."""
    rng = np.random.default_rng(4)
    n = 600
    X = pd.DataFrame({"k": rng.integers(1, 200, n).astype(float), "a": rng.uniform(0, 1, n)})
    y = np.log(X["k"]) + X["a"] + rng.normal(0, 0.02, n)
    groups = np.arange(n) % 4

    def split(X: pd.DataFrame, y: np.ndarray, groups: np.ndarray) -> SplitRegressor:
        return SplitRegressor("k", 32, lambda m, v: m, increasing=("k",), regimes=("seen",)).fit(X, y, groups)

    assert split(X, y, groups).split_
    few = (X["k"] >= 32) | (np.arange(n) < 20)
    assert not split(X[few], y[few], groups[few]).split_
    one_group_below = (X["k"] >= 32) | (groups == 0)
    assert not split(X[one_group_below], y[one_group_below], groups[one_group_below]).split_


@pytest.fixture(scope="module")
def cpu_runtime(mirror: Path) -> tuple[SplitRegressor, dict]:
    """Runtime fit on the bundled CPU measurements (the data the quick start serves)."""
    data = load_gemm("cpu-gemm-local", Settings(data_mirror=mirror))
    model = fit_gemm(data.frame, data.devices, regimes=("seen",)).models["runtime_ms"][0]
    assert isinstance(model, SplitRegressor)
    return model, data.devices


def _cpu_predict(model: SplitRegressor, devices: dict, rows: list[dict]) -> np.ndarray:
    (name,) = devices
    frame = pd.DataFrame(rows).assign(device=name)
    return np.exp(model.predict(features.build_features(frame, devices)))


def test_cpu_runtime_of_odd_sizes_follows_their_neighbours(cpu_runtime: tuple[SplitRegressor, dict]) -> None:
    """One constrained model over every k predicted 1537^3 (fp64, one thread) at 224-296 ms, against 145 ms
    for 1536^3 and 138.8 ms measured: the constraint, bent by the small-k rows, pushed odd sizes up."""
    model, devices = cpu_runtime
    for dtype, threads in itertools.product(("float64", "float32"), (1, 2)):
        rows = [dict(m=s, n=s, k=s, dtype=dtype, threads=threads) for s in (1536, 1537)]
        even, odd = _cpu_predict(model, devices, rows)
        assert 0.9 < odd / even < 1.15, (dtype, threads, even, odd)


def test_cpu_runtime_never_decreases_as_k_grows_from_two(cpu_runtime: tuple[SplitRegressor, dict]) -> None:
    """From k = 2 on, through the split at 32 (k = 1, the outer product, may cost more than k = 2)."""
    model, devices = cpu_runtime
    ks = [2, 3, 4, 6, 8, 12, 16, 24, 31, 32, 33, 40, 64, 128, 512, 2048]
    for m, n, dtype, threads, batch in itertools.product(
        (7, 300, 1537), (2, 900, 3000), ("float32", "float64"), (1, 2), (1, 8)
    ):
        rows = [dict(m=m, n=n, k=k, dtype=dtype, threads=threads, batch=batch) for k in ks]
        runtimes = _cpu_predict(model, devices, rows)
        assert np.all(np.diff(runtimes) >= 0), (m, n, dtype, threads, batch, runtimes.round(4).tolist())


def test_intervals_below_the_split_cover_the_capped_predictions(settings: Settings) -> None:
    """On GPUs the upper model at k = 32 runs below many small-k runtimes, so the cap lowers most small-k
    predictions; the lower part is calibrated on what is served (capped), and its 90% intervals cover
    held-out small-k rows (calibrated uncapped, they covered 57% on NeuSight's 80/20 split)."""
    data = load_gemm("neusight-gemm", settings)
    frame = data.frame.sample(9000, random_state=2)
    small = frame["k"].to_numpy() < K_SPLIT
    held = np.zeros(len(frame), dtype=bool)
    held[np.flatnonzero(small)[::3]] = True
    X = features.build_features(frame, data.devices)
    y = np.log(frame["runtime_ms"].to_numpy())
    model = SplitRegressor(
        "k", K_SPLIT, features.with_k, increasing=features.INCREASING_IN_K, regimes=("seen",), capped_from=2
    ).fit(X[~held], y[~held], frame["device"].to_numpy()[~held])
    assert model.split_ and model.lower_ is not None
    center = model.predict(X[held])
    width = model.halfwidths(X[held], "seen", 0.9)
    capped = center < model.lower_.predict(X[held]) - 1e-9
    covered = np.mean(np.abs(center - y[held]) <= width)
    assert capped.mean() > 0.2 and 0.84 <= covered <= 0.96, (capped.mean(), covered)


def test_rows_below_the_split_on_devices_the_lower_part_never_saw_get_unseen_intervals(
    trained_model_dir: Path,
) -> None:
    """The RTX 4070 rows all have k >= 512: below k = 32 an RTX request is new to the model that answers
    it, so its interval is the held-out-device one, though the device is known above the split."""
    model = load_latest(trained_model_dir)
    target = model.targets["runtime_ms"]
    assert target.split is not None and RTX in target.devices and RTX not in target.split.model.devices
    below = target.split.model
    instances = [GemmInstance(m=512, n=512, k=k, device=RTX) for k in (16, 64)]
    names, specs = gemm.resolve_devices(instances, DeviceCatalog.default(), gemm.model_devices(model))
    rows = {col: [getattr(i, col) for i in instances] for col in features.CONFIG_COLUMNS} | {"device": names}
    prediction, seen = model.predict(features.feature_matrix(rows, specs), 0.9, names)["runtime_ms"]
    spans = np.log(prediction.high / prediction.value)
    assert seen.tolist() == [True, True]
    unseen_below = below.halfwidths(0.9, np.array([False]))[0]
    # Few RTX rows in this fixture: it is a calibrated device above the split, with those intervals.
    seen_above = target.halfwidths(0.9, np.array([True]), None, target.calibrated([RTX]))[0]
    assert unseen_below > below.halfwidths(0.9, np.array([True]))[0]
    np.testing.assert_allclose(spans, [unseen_below, seen_above])
