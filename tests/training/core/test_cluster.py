"""Training on a 2-worker LocalCluster: CV folds run as Dask tasks, LightGBM fits data-parallel with
lightgbm.dask, and the model is as good as the local one and saved the same way."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
from distributed import get_task_stream

from service.core.settings import Settings
from service.core.targets import OnnxTrees
from service.domains.gemm import features as gemm_features
from training.core.cluster import training_on_cluster
from training.core.models import CostRegressor
from training.domains.gemm.data import load_gemm
from training.domains.gemm.train import gemm_log_target


def test_cluster_training_matches_local_training(
    mirror: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    data = load_gemm("gpperf-rtx4070", Settings(data_mirror=mirror, data_home=tmp_path / "cache"))
    frame = data.frame.sample(3000, random_state=0).reset_index(drop=True)
    features = gemm_features.build_features(frame, data.devices)
    mask, y = gemm_log_target(frame, "runtime_ms", features["log_reference_ms"].to_numpy())
    features = features[mask].reset_index(drop=True)
    test = np.random.default_rng(0).random(len(y)) < 0.2

    def fitted_mape() -> tuple[CostRegressor, float]:
        model = CostRegressor(candidates=("lightgbm",), n_splits=3).fit(features[~test], y[~test])
        return model, float(np.mean(np.abs(np.expm1(model.predict(features[test]) - y[test]))))

    local, local_mape = fitted_mape()
    with caplog.at_level(logging.INFO), training_on_cluster(None, workers=2) as client:
        with get_task_stream(client) as stream:
            remote, remote_mape = fitted_mape()
        workers_used = {task["worker"] for task in stream.data}
    assert "across 2 Dask workers" in caplog.text  # the deployed fit went through lightgbm.dask
    assert len(workers_used) == 2 and len(stream.data) >= 3  # three CV folds at least, on both workers
    assert remote.cv_scores_["lightgbm"]["seen"]["mape"] == pytest.approx(
        local.cv_scores_["lightgbm"]["seen"]["mape"], rel=1e-9
    )
    assert abs(remote_mape - local_mape) <= 0.01, (local_mape, remote_mape)

    files = remote.save(tmp_path, "runtime")
    assert files == {"file": "runtime.lgb.txt", "onnx": "runtime.onnx"}
    served = OnnxTrees(tmp_path / "runtime.onnx").predict(features[test].to_numpy(dtype=np.float32)).ravel()
    own = remote.estimator_.predict(features[test].astype(np.float32))
    np.testing.assert_allclose(served, own, rtol=1e-5, atol=1e-6)  # float32 sums in the export
