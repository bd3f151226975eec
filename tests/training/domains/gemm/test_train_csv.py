"""Retraining on a user's own measurements CSV: bad rows are reported by reason and line, never trained on."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from service.domains.gemm.features import DTYPES
from training.cli import app

BUNDLED = Path(__file__).resolve().parents[4] / "datasets" / "cpu-gemm-local"
GOOD_ROWS = 240


def user_dir(tmp_path: Path, frame: pd.DataFrame) -> Path:
    directory = tmp_path / "my-measurements"
    directory.mkdir()
    shutil.copy(BUNDLED / "device.json", directory / "device.json")
    frame.to_csv(directory / "measurements.csv", index=False)
    return directory


def train(tmp_path: Path, directory: Path) -> tuple[int, str, Path]:
    model_dir = tmp_path / "models"
    env = {"PERFCOST_MODEL_DIR": str(model_dir), "COLUMNS": "200"}
    result = CliRunner().invoke(app, ["train", "gemm", "--from", str(directory)], env=env)
    return result.exit_code, result.output, model_dir


def test_bad_rows_are_reported_by_reason_and_line_and_not_trained_on(tmp_path: Path) -> None:
    source = pd.read_csv(BUNDLED / "measurements.csv")
    good = source.sample(GOOD_ROWS, random_state=0)[["m", "n", "k", "dtype", "threads", "runtime_ms"]]
    good = good.drop_duplicates(["m", "n", "k", "dtype", "threads"]).astype(object)
    first = good.iloc[0].to_dict()
    bad = [
        {**first, "runtime_ms": -0.5},  # line GOOD+2
        {**first, "runtime_ms": "fast"},
        {**first, "runtime_ms": None},
        {**first, "m": None},
        {**first, "n": 1.5},
        {**first, "dtype": "float128"},
        {**first, "threads": "two"},
        dict(first),  # a duplicate of line 2
    ]
    frame = pd.concat([good, pd.DataFrame(bad)], ignore_index=True)
    code, output, model_dir = train(tmp_path, user_dir(tmp_path, frame))
    assert code == 0, output
    n = len(good)
    for reason, line in [
        ("runtime_ms missing, non-numeric or <= 0", n + 2),
        ("m missing, non-numeric or <= 0", n + 5),
        ("n is not a whole number", n + 6),
        ("dtype not one of", n + 7),
        ("threads is not a finite number", n + 8),
        ("duplicate configuration", n + 9),
    ]:
        assert reason in output, reason
        assert f"line {line}" in output, (reason, line)
    (card_path,) = model_dir.glob("gemm/*/card.json")
    (dataset,) = json.loads(card_path.read_text())["datasets"]
    assert dataset["name"] == "my-measurements"
    assert dataset["rows"] == n
    assert dataset["rejected"] == {
        "runtime_ms missing, non-numeric or <= 0": 3,
        "m missing, non-numeric or <= 0": 1,
        "n is not a whole number": 1,
        f"dtype not one of {', '.join(DTYPES)}": 1,
        "threads is not a finite number": 1,
        "duplicate configuration": 1,
    }


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("m,n,k\n8,8,8\n", "missing required column(s) runtime_ms"),
        ("m,n,k,runtime_ms\n8,8,8,-1\n0,8,8,1\n", "no usable rows"),
        ("", "not a readable CSV"),
    ],
)
def test_unusable_csv_is_a_one_line_error_not_a_traceback(tmp_path: Path, content: str, message: str) -> None:
    directory = user_dir(tmp_path, pd.DataFrame())
    (directory / "measurements.csv").write_text(content)
    code, output, model_dir = train(tmp_path, directory)
    assert code == 2
    assert message in " ".join(output.split())
    assert "Traceback" not in output
    assert not list(model_dir.glob("gemm/*"))


def test_quantize_activation_in_a_csv_is_a_flag_for_quantized_dtypes_only(tmp_path: Path) -> None:
    from service.core.devices import DeviceCatalog
    from training.core.report import LoadReport
    from training.domains.gemm.data import load_measurements

    device = DeviceCatalog.default().get("NVIDIA H100 80GB HBM3")
    path = tmp_path / "measurements.csv"
    path.write_text(
        "m,n,k,dtype,quantize_activation,runtime_ms\n"
        "16,4096,4096,float8_e4m3fn,true,0.02\n"
        "32,4096,4096,float8_e4m3fn,0,0.01\n"
        "64,4096,4096,float8_e4m3fn,,0.01\n"
        "16,4096,4096,float8_e4m3fn,yes,0.02\n"
        "16,4096,4096,bfloat16,true,0.02\n"
    )
    report = LoadReport("mine")
    rows = load_measurements(path, device, report)
    assert rows["quantize_activation"].tolist()[:2] == [1.0, 0.0] and np.isnan(
        rows["quantize_activation"].iloc[2]
    )
    assert len(rows) == 3
    reasons = " | ".join(report.rejected)
    assert "quantize_activation is not true/false/1/0" in reasons
    assert "quantize_activation is true but the dtype has no quantized activation" in reasons
