"""The committed MLIR dataset (datasets/mlir-cpu-local): size, families, dtypes, failures recorded with
their error line, the spread between repetitions (noise floor), the span of work, and its card."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from service.domains.mlir import features as F
from training.collect.mlir.sweep import FAMILIES, LINALG_FAMILIES
from training.domains.mlir.data import load_mlir, measured

DATASET = Path(__file__).resolve().parents[4] / "datasets" / "mlir-cpu-local"
# The project asked for at least 3,000 measured programs; the committed sweep holds 3,300.
MIN_PROGRAMS = 3000


@pytest.fixture(scope="module")
def data():
    return load_mlir(DATASET)


def test_size_families_and_dtypes(data) -> None:
    frame = data.frame
    assert len(frame) >= MIN_PROGRAMS
    assert frame["key"].is_unique
    ok = measured(data)
    counts = ok["family"].value_counts()
    assert set(counts.index) == set(FAMILIES)
    # Families are interleaved round-robin: each holds about 1/15 of the programs.
    assert counts.min() >= 0.5 * len(frame) / len(FAMILIES)
    assert set(ok["dtype"]) == {"f32", "f16", "bf16", "i8"}


def test_measurements_are_complete(data) -> None:
    ok = measured(data)
    assert ok["mlir"].str.contains("func.func").all()
    for col in ("runtime_ms", "cpu_time_ms", "compile_ms", "utilization"):
        assert (ok[col] > 0).all(), col
    for col in ("instructions", "vector_registers", "spills", "dispatches", "code_bytes", "runtime_spread"):
        assert (ok[col] >= 0).all(), col
    assert (ok["vector_registers"] <= 32).all()
    # The noise floor: the spread between repetitions and between launches is recorded for every program.
    assert np.isfinite(ok["runtime_spread"]).all() and 0 < ok["runtime_spread"].median() < 1
    launches = ok["runtime_launch_spread"]
    assert np.isfinite(launches).all() and (launches >= 0).all()
    # One worker thread and two launches per program (see the card): most programs' launches agree within
    # 10%; two workers on these 2 vCPUs differed by a median of 17.5% over 3 launches.
    assert launches.median() < 0.10


def test_failures_are_recorded_with_their_first_error_line(data) -> None:
    failed = data.frame.loc[data.frame["status"] != "ok"]
    assert failed["status"].isin(["compile_error", "run_error", "import_error"]).all()
    assert failed["error"].map(lambda e: isinstance(e, str) and e and "\n" not in e).all()


def test_every_family_spans_four_orders_of_magnitude_of_work(data) -> None:
    ok = measured(data)
    for family, part in ok.groupby("family"):
        work = [max(s.values["log_flops"], s.values["log_bytes"]) for s in map(F.summarize, part["mlir"])]
        assert max(work) - min(work) >= math.log(1e4), family
        if family not in LINALG_FAMILIES:
            assert part["mlir"].str.contains("torch.operator").all()


def test_runtime_baseline_fitted_on_the_dataset_separates_folded_programs_from_dispatches(data) -> None:
    from training.domains.mlir.train import BaselineFit

    ok = measured(data)
    table = F.summary_table([F.summarize(t) for t in ok["mlir"]])
    baseline = BaselineFit().fit(table, ok["runtime_ms"].to_numpy()).baseline_
    # 31 programs do no work once folded, and 27 of them run in about a microsecond (no dispatch); the fastest
    # dispatches take tens of microseconds.
    assert 2e-4 < baseline.floor_ms < 3e-3
    assert 0.01 < baseline.call_ms < 0.2
    folded = (table["work_ops"] == 0).to_numpy()
    assert folded.sum() >= 20
    measured_folded = np.median(ok["runtime_ms"].to_numpy()[folded])
    assert baseline.floor_ms == pytest.approx(measured_folded, rel=0.5)


def test_card_and_environment() -> None:
    env = json.loads((DATASET / "environment.json").read_text())
    assert env["versions"]["iree-base-compiler"] and env["cpu_flags"] and env["date"]
    card = (DATASET / "README.md").read_text()
    for needle in ("perfcost collect mlir", env["versions"]["iree-base-compiler"], "avx512"):
        assert needle in card, needle
