"""Shared fixtures. Public data comes through the registry from PERFCOST_DATA_MIRROR (CI sets it)."""

from __future__ import annotations

import gzip
import json
import os
import shutil
from pathlib import Path

import pandas as pd
import pytest

from service.core.settings import Settings
from service.domains.cpu import DOMAIN as CPU

REPO = Path(__file__).resolve().parents[1]
BUNDLED = REPO / "datasets"
MLIR_DATASET = BUNDLED / "mlir-cpu-local"
CPU_SUITE = "Int_rate"
CPU_BENCHMARKS = ("500.perlbench_r", "505.mcf_r")
MLIR_PER_FAMILY_TRAIN = 14
MLIR_PER_FAMILY_TEST = 4

MIRROR = Path(
    os.environ.get("PERFCOST_DATA_MIRROR", Path(__file__).resolve().parents[2] / "shared" / "datasets")
)


@pytest.fixture(scope="session")
def mirror() -> Path:
    if not (MIRROR / "manifest.json").is_file():
        pytest.fail(
            f"dataset mirror {MIRROR} not found: set PERFCOST_DATA_MIRROR to the shared datasets directory"
        )
    return MIRROR


@pytest.fixture
def settings(tmp_path: Path, mirror: Path) -> Settings:
    return Settings(
        data_mirror=mirror,
        data_home=tmp_path / "cache",
        model_dir=tmp_path / "models",
        report_dir=tmp_path / "reports",
    )


@pytest.fixture(scope="session")
def trained_model_dir(tmp_path_factory: pytest.TempPathFactory, mirror: Path) -> Path:
    """A real GEMM model published once per session: GPPerf's tiled kernel (runtime and power on an RTX
    4070) plus a 3,000-row sample of NeuSight's five GPUs, so new devices get calibrated intervals."""
    from dataclasses import replace

    from training.domains.gemm.data import load_gemm
    from training.domains.gemm.train import publish_gemm

    root = tmp_path_factory.mktemp("registry")
    settings = Settings(data_mirror=mirror, data_home=root / "cache", model_dir=root / "models")
    neusight = load_gemm("neusight-gemm", settings)
    sample = replace(neusight, frame=neusight.frame.sample(3000, random_state=0).reset_index(drop=True))
    publish_gemm([load_gemm("gpperf-rtx4070-tiled", settings), sample], settings)
    return root / "models"


@pytest.fixture(scope="session")
def cpu_model_dir(tmp_path_factory: pytest.TempPathFactory, mirror: Path) -> Path:
    """Two Int_rate benchmarks and the suite score on 1,500 results (LightGBM, 3 folds: seconds)."""
    from training.core.publish import publish
    from training.domains.cpu.data import SpecData, load_spec_cpu2017
    from training.domains.cpu.train import cpu_card, fit_spec_suite, target_stem

    root = tmp_path_factory.mktemp("cpu-service")
    data = load_spec_cpu2017(Settings(data_mirror=mirror, data_home=root / "cache"), (CPU_SUITE,))
    train = data.suites[CPU_SUITE].frame.sample(1500, random_state=0)
    models = fit_spec_suite(train, CPU_SUITE, list(CPU_BENCHMARKS))
    fitted = {target_stem(name): pair for name, pair in models.items()}
    subset = SpecData(suites={CPU_SUITE: data.suites[CPU_SUITE]}, report=data.report, files=data.files)
    publish(root / "models", "cpu", CPU, cpu_card(subset, fitted, 0.0), fitted)
    return root / "models"


@pytest.fixture(scope="session")
def mlir_split() -> tuple[pd.DataFrame, pd.DataFrame]:
    """A per-family sample of the committed MLIR dataset: (train, test)."""
    from training.domains.mlir.data import load_mlir, measured

    frame = measured(load_mlir(MLIR_DATASET))
    shuffled = frame.sample(frac=1.0, random_state=0)
    train = shuffled.groupby("family", group_keys=False).head(MLIR_PER_FAMILY_TRAIN)
    rest = shuffled.drop(train.index)
    test = rest.groupby("family", group_keys=False).head(MLIR_PER_FAMILY_TEST)
    return train.reset_index(drop=True), test.reset_index(drop=True)


@pytest.fixture(scope="session")
def mlir_model_dir(
    mlir_split: tuple[pd.DataFrame, pd.DataFrame], tmp_path_factory: pytest.TempPathFactory
) -> Path:
    from training.domains.mlir.train import publish_mlir

    root = tmp_path_factory.mktemp("mlir-models")
    # LightGBM only and 3 folds keep this fixture to seconds; `perfcost train mlir` runs both candidates.
    publish_mlir(
        mlir_split[0],
        Settings(model_dir=root),
        environment={"cpu_model": "test CPU", "cpu_flags": ["sse2", "avx", "avx512f"]},
        n_splits=3,
        candidates=("lightgbm",),
    )
    return root


@pytest.fixture
def small_bundle(tmp_path: Path) -> Path:
    """The bundled datasets, cut to a few hundred GEMM rows and four programs per MLIR family."""
    from training.collect.mlir.records import read_records

    root = tmp_path / "datasets"
    gemm = root / "cpu-gemm-local"
    gemm.mkdir(parents=True)
    shutil.copy(BUNDLED / "cpu-gemm-local" / "device.json", gemm)
    pd.read_csv(BUNDLED / "cpu-gemm-local" / "measurements.csv").sample(300, random_state=0).to_csv(
        gemm / "measurements.csv", index=False
    )
    mlir = root / "mlir-cpu-local"
    mlir.mkdir()
    per_family: dict[str, int] = {}
    with open(mlir / "programs.jsonl.gz", "wb") as fh:
        for record in read_records(BUNDLED / "mlir-cpu-local" / "programs.jsonl.gz"):
            if record.get("status") == "ok" and per_family.get(record["family"], 0) < 4:
                per_family[record["family"]] = per_family.get(record["family"], 0) + 1
                fh.write(gzip.compress((json.dumps(record) + "\n").encode(), mtime=0))
    shutil.copy(BUNDLED / "mlir-cpu-local" / "environment.json", mlir)
    return root


@pytest.fixture
def offline_settings(tmp_path: Path, small_bundle: Path) -> Settings:
    """A machine with the small bundle only: no public data cached or mirrored, an empty model dir."""
    return Settings(
        model_dir=tmp_path / "models",
        bundled_data_dir=small_bundle,
        data_mirror=tmp_path / "no-mirror",
        data_home=tmp_path / "cache",
    )
