"""GEMM physics frame: bounded efficiency, the roofline floor, size-extrapolation flags and intervals,
evaluation that scores what the service serves, and few-shot calibration of a new device."""

from __future__ import annotations

import itertools
import json
import logging
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from service.core.devices import DeviceCatalog
from service.core.model import TabularModel, list_versions
from service.core.settings import Settings
from service.domains.gemm import DOMAIN as GEMM
from service.domains.gemm import features
from service.domains.gemm import runtime as gemm
from service.domains.gemm.schemas import GemmInstance
from training.cli import app
from training.core.datasets import DatasetError
from training.core.publish import publish
from training.domains.gemm import evaluate
from training.domains.gemm.data import load_gemm
from training.domains.gemm.evaluate import extrapolation_split, gemm_instances, served_predictions
from training.domains.gemm.train import fit_gemm, gemm_card, gemm_log_target, publish_gemm

DEVICES = ("Tesla T4", "NVIDIA A100-PCIE-40GB", "NVIDIA H100 80GB HBM3", "NVIDIA L4", "Tesla P4")


def load_latest(model_dir: Path) -> TabularModel:
    (path,) = list_versions(model_dir, "gemm")[-1:]
    return TabularModel(path, features.FEATURE_VERSION, features.FEATURE_COLUMNS, features.with_k).load()


def test_efficiency_stays_in_0_1_and_runtime_never_below_the_roofline(trained_model_dir: Path) -> None:
    """Over devices seen and unseen and shapes from tiny to far beyond the training data, the served
    runtime (and its interval's low end) is never below the roofline time, so utilization <= 1."""
    model = load_latest(trained_model_dir)
    catalog = DeviceCatalog.default()
    sizes = (1, 7, 64, 1000, 4096, 65536)
    instances = [
        GemmInstance(m=m, n=n, k=k, batch=b, op=op, device=d)
        for d, m, n, k, b, op in itertools.product(
            DEVICES, sizes, sizes, (1, 33, 4096, 65536), (1, 8), ("bmm",)
        )
    ]
    rows = {c: [getattr(i, c) for i in instances] for c in features.CONFIG_COLUMNS}
    rows["device"] = [i.device for i in instances]
    matrix = features.feature_matrix(rows, {d: catalog.get(d) for d in DEVICES})
    roofline = np.exp(matrix[:, features.FEATURE_COLUMNS.index("log_roofline_ms")])
    served = gemm.predict(instances, 0.9, model, catalog)
    value = np.array([r["runtime_ms"]["value"] for r in served])
    low = np.array([r["runtime_ms"]["low"] for r in served])
    assert np.all(value >= roofline * (1 - 1e-9)) and np.all(low >= roofline * (1 - 1e-9))
    efficiency = roofline / value
    assert np.all((efficiency > 0) & (efficiency <= 1 + 1e-9))
    utilization = np.array([r["utilization"][key] for r in served for key in ("value", "low", "high")])
    assert np.all((utilization > 0) & (utilization <= 1 + 1e-9)), utilization.max()


def test_physics_time_never_decreases_in_k_and_covers_the_roofline_compute_time() -> None:
    catalog = DeviceCatalog.default()
    ks = [1, 2, 3, 31, 32, 100, 4096, 100_000]
    for device, m, n, b in itertools.product(DEVICES, (1, 100, 4096), (3, 1024), (1, 16)):
        rows = {
            "m": [m] * len(ks),
            "n": [n] * len(ks),
            "k": ks,
            "batch": [b] * len(ks),
            "device": [device] * len(ks),
        }
        matrix = features.feature_matrix(rows, {device: catalog.get(device)})
        physics = matrix[:, features.FEATURE_COLUMNS.index("log_physics_ms")]
        compute = matrix[:, features.FEATURE_COLUMNS.index("log_t_compute_ms")]
        roofline = matrix[:, features.FEATURE_COLUMNS.index("log_roofline_ms")]
        assert np.all(np.diff(physics) >= 0), (device, m, n, b)
        assert np.all(physics >= compute - 1e-12)
        assert np.all(physics >= roofline - 1e-12)


def test_a_decode_gemm_is_priced_with_split_k() -> None:
    """One row against a 65536-deep reduction fills 6 of an A100's 108 SMs with 128-wide tiles: libraries
    split k, and so does the physics time (aiconfigurator measured 0.065 ms; whole-k tiles made it 0.39)."""
    device = "NVIDIA A100-SXM4-80GB"
    rows = {"m": [1], "n": [768], "k": [65536], "dtype": ["bfloat16"], "device": [device]}
    matrix = features.feature_matrix(rows, {device: DeviceCatalog.default().get(device)})
    physics = np.exp(matrix[0, features.FEATURE_COLUMNS.index("log_physics_ms")])
    roofline = np.exp(matrix[0, features.FEATURE_COLUMNS.index("log_roofline_ms")])
    assert roofline <= physics <= 0.065


def test_the_models_trees_see_no_absolute_figure_of_the_device(trained_model_dir: Path) -> None:
    """Runtime, power and energy are learned as ratios to the device's physics; the trees read only the
    dimensionless inputs, so a GPU never seen is priced by its own spec sheet, not by its nearest peer."""
    absolute = [
        c for c in features.MODEL_INPUTS if c.startswith("dev_") or c in ("peak_gflops", "tdp_per_gflop")
    ]
    assert absolute == []
    model = load_latest(trained_model_dir)
    for target in model.targets.values():
        read = [features.FEATURE_COLUMNS[j] for j in target.inputs] if target.inputs is not None else []
        assert read == list(features.MODEL_INPUTS)


def test_a_gemm_larger_than_its_device_was_trained_on_is_flagged_and_widened(trained_model_dir: Path) -> None:
    model = load_latest(trained_model_dir)
    largest = model.card["profile"]["device_max_flops"]["Tesla T4"]
    side = int(np.ceil((largest / 2) ** (1 / 3))) * 2
    inside, beyond = gemm.predict(
        [
            GemmInstance(m=256, n=256, k=256, device="Tesla T4"),
            GemmInstance(m=side, n=side, k=side, device="Tesla T4"),
        ],
        0.9,
        model,
        DeviceCatalog.default(),
    )
    assert not any("extrapolating" in r for r in inside["ood_reasons"])
    assert beyond["out_of_distribution"] and any("extrapolating in size" in r for r in beyond["ood_reasons"])
    target = model.targets["runtime_ms"]
    assert "extrapolate" in target.calibration
    spans = [r["runtime_ms"]["high"] / r["runtime_ms"]["value"] for r in (inside, beyond)]
    assert spans[1] >= spans[0]


def test_extrapolation_split_tests_each_devices_largest_gemms(settings: Settings) -> None:
    frame = load_gemm("neusight-gemm", settings).frame.sample(5000, random_state=0)
    train, test = extrapolation_split(frame)
    assert len(train) + len(test) == len(frame) and set(test["device"]) == set(frame["device"])
    flops_train = pd.Series(features.flops(train), index=train.index).groupby(train["device"]).max()
    flops_test = pd.Series(features.flops(test), index=test.index).groupby(test["device"]).min()
    assert (flops_test > flops_train).all()
    assert 0.15 < len(test) / len(frame) < 0.25


def test_evaluation_scores_exactly_what_the_service_returns(settings: Settings) -> None:
    """The evaluation's held-out values and intervals equal those of the published model asked through
    the service's domain with the same rows as requests, on a held-out device and a seen one."""
    data = load_gemm("neusight-gemm", settings)
    frame = data.frame.sample(2500, random_state=1)
    train = frame.loc[frame["device"] != "Tesla T4"].iloc[:1500]
    test = pd.concat([frame.loc[frame["device"] == "Tesla T4"].head(40), frame.drop(train.index).head(40)])
    fit = fit_gemm(train, data.devices)
    scored = served_predictions(fit, train, test, data.devices)
    trained = {d: data.devices[d] for d in sorted(train["device"].unique())}
    version = publish(settings.model_dir, "gemm", GEMM, gemm_card(train, trained, [], 0.0), fit.models)
    model = TabularModel(version, features.FEATURE_VERSION, features.FEATURE_COLUMNS, features.with_k).load()
    requests = [json.loads(i.model_dump_json(exclude_none=True)) for i in gemm_instances(test)]
    served = gemm.predict(
        [GemmInstance.model_validate(r) for r in requests], 0.9, model, DeviceCatalog(data.devices.values())
    )
    runtime = scored.loc[scored["target"] == "runtime_ms"]
    assert len(runtime) == len(test)
    for key, column in (("value", "pred"), ("low", "low"), ("high", "high")):
        np.testing.assert_array_equal(runtime[column].to_numpy(), [r["runtime_ms"][key] for r in served])
    assert runtime["ood"].tolist() == [r["out_of_distribution"] for r in served]


@pytest.fixture
def gpperf_model(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> Settings:
    for key, value in (
        ("PERFCOST_DATA_MIRROR", settings.data_mirror),
        ("PERFCOST_DATA_HOME", settings.data_home),
        ("PERFCOST_MODEL_DIR", settings.model_dir),
    ):
        monkeypatch.setenv(key, str(value))
    publish_gemm([load_gemm("gpperf-rtx4070-tiled", settings)], settings)
    return settings


def test_calibrate_publishes_a_version_that_knows_the_new_device(
    gpperf_model: Settings, tmp_path: Path
) -> None:
    """32 measured T4 rows turn a model that knew only the RTX 4070 into one that serves T4 as seen,
    with the rows and their file's sha256 in the card."""
    settings = gpperf_model
    t4 = load_gemm("neusight-gemm", settings).frame.query("device == 'Tesla T4'").sample(32, random_state=0)
    sweep = tmp_path / "sweep.csv"
    t4[["op", "batch", "m", "n", "k", "runtime_ms"]].to_csv(sweep, index=False)
    before = load_latest(settings.model_dir)
    result = CliRunner().invoke(app, ["calibrate", "gemm", "--device", "Tesla T4", "--from", str(sweep)])
    assert result.exit_code == 0, result.output
    after = load_latest(settings.model_dir)
    assert after.version != before.version and after.card["calibrated_from"] == before.version
    (entry,) = after.card["calibrations"]
    assert entry["device"] == "Tesla T4" and len(entry["rows"]) == 32 and len(entry["sha256"]) == 64
    assert "Tesla T4" in after.targets["runtime_ms"].devices
    row = gemm.predict(
        [GemmInstance(m=512, n=512, k=512, device="Tesla T4")], 0.9, after, DeviceCatalog.default()
    )[0]
    assert not any("training devices" in r for r in row["ood_reasons"]) and row["runtime_ms"] is not None


def test_calibrate_refuses_an_unknown_device_naming_the_option(
    gpperf_model: Settings, tmp_path: Path
) -> None:
    sweep = tmp_path / "sweep.csv"
    sweep.write_text("m,n,k,runtime_ms\n64,64,64,0.1\n")
    result = CliRunner().invoke(app, ["calibrate", "gemm", "--device", "No Such GPU", "--from", str(sweep)])
    assert result.exit_code != 0 and "--device" in result.output and "No Such GPU" in result.output


def test_group_device_keeps_the_held_out_device_out_of_every_training_source(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With other datasets added to training, a device held out of one dataset is absent from the rows of
    every dataset it is trained on, and its own rows are the whole test."""
    deepbench = load_gemm("deepbench", settings)
    neusight = load_gemm("neusight-gemm", settings).frame.sample(3000, random_state=0)
    folds: list[tuple[pd.DataFrame, pd.DataFrame]] = []

    def record(train: pd.DataFrame, test: pd.DataFrame, devices: object) -> pd.DataFrame:
        folds.append((train, test))
        return test

    monkeypatch.setattr(evaluate, "_held_out", record)
    _, n_train = evaluate._group_device(deepbench.frame, dict(deepbench.devices), 0, neusight)
    assert len(folds) == deepbench.frame["device"].nunique()
    assert n_train == int(np.mean([len(train) for train, _ in folds]))
    shared = set(deepbench.frame["device"]) & set(neusight["device"])
    assert shared, "the check needs a device both datasets hold"
    for train, test in folds:
        (held,) = set(test["device"])
        assert held not in set(train["device"])
        assert len(test) == int((deepbench.frame["device"] == held).sum())
        assert set(train["source"]) == {"deepbench", "neusight-gemm"}


@pytest.mark.parametrize(
    ("protocol", "train_datasets", "message"),
    [
        ("random", ["neusight-gemm"], "applies to the transfer and group-device protocols only"),
        ("group-device", ["deepbench"], "--train-dataset deepbench is the evaluated dataset itself"),
        ("transfer", [], "the transfer protocol needs --train-dataset"),
    ],
)
def test_evaluation_refuses_a_training_source_that_does_not_fit_the_protocol(
    settings: Settings, protocol: str, train_datasets: list[str], message: str
) -> None:
    with pytest.raises(DatasetError, match=message):
        evaluate.evaluate_gemm_dataset("deepbench", protocol, settings, train_datasets=train_datasets)


def test_measurements_without_a_baseline_are_named_not_dropped_silently(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Power is learned relative to the TDP: a device without one cannot train it, and the log says which."""
    frame = pd.DataFrame({"device": ["a", "no-tdp", "no-tdp"], "power_w": [100.0, 50.0, np.nan]})
    with caplog.at_level(logging.WARNING):
        mask, y = gemm_log_target(frame, "power_w", np.array([np.log(300.0), np.nan, np.nan]))
    assert mask.tolist() == [True, False, False] and len(y) == 1
    assert "1 measured rows left out" in caplog.text and "no-tdp" in caplog.text
