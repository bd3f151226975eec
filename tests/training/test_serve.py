"""``perfcost serve`` on a model directory with nothing it can serve trains what the bundled data allows,
and says what it skipped: GEMM from the bundled CPU-GEMM measurements, MLIR from the bundled programs, no
CPU model offline."""

from __future__ import annotations

import json
import logging

import pytest

from service.core.model import list_versions
from service.core.settings import Settings
from training.first_start import ensure_default_models


def test_empty_model_dir_gets_gemm_and_mlir_and_a_note_about_cpu(
    offline_settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    settings = offline_settings
    with caplog.at_level(logging.INFO):
        ensure_default_models(settings)
    assert len(list_versions(settings.model_dir, "gemm")) == 1
    assert len(list_versions(settings.model_dir, "mlir")) == 1
    assert list_versions(settings.model_dir, "cpu") == []
    assert "spec-cpu2017 is neither cached nor mirrored" in caplog.text
    assert "skipping neusight-gemm" in caplog.text
    # A second start trains nothing.
    ensure_default_models(settings)
    assert (
        len(list_versions(settings.model_dir, "gemm")) == len(list_versions(settings.model_dir, "mlir")) == 1
    )
    # A model this release refuses (here: built on other features) counts as none: GEMM is trained anew.
    (old,) = list_versions(settings.model_dir, "gemm")
    card = json.loads((old / "card.json").read_text())
    (old / "card.json").write_text(json.dumps({**card, "feature_version": "gemm-0"}))
    with caplog.at_level(logging.INFO):
        ensure_default_models(settings)
    assert [p.name for p in list_versions(settings.model_dir, "gemm")][0] == old.name
    assert len(list_versions(settings.model_dir, "gemm")) == 2
    assert len(list_versions(settings.model_dir, "mlir")) == 1
