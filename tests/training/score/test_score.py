"""``perfcost score``: a table through Dask workers gives exactly the API's answers, refused rows are
reported by row, line and reason, and a run that fails publishes nothing."""

from __future__ import annotations

import csv
import dataclasses
import json
import math
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
from distributed import Client, LocalCluster
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from service.app import create_app
from service.core.devices import DeviceCatalog
from service.core.registry import ModelRegistry
from service.core.settings import Settings
from service.domains import DOMAINS
from service.domains.gemm import runtime as gemm
from service.domains.gemm.schemas import GemmInstance
from training.cli import app as cli
from training.core.cluster import dask_client
from training.domains.gemm.score import INTERVAL_COLUMNS, score_chunk
from training.score import run
from training.score.run import ERRORS, MANIFEST, ScoreError, score

DEVICES = ["NVIDIA GeForce RTX 4070", "Tesla T4", "NVIDIA H100 80GB HBM3", "nvidia a100-pcie-40gb"]


def instances(n: int) -> pd.DataFrame:
    rng = np.random.default_rng(3)
    return pd.DataFrame(
        {
            "m": rng.integers(1, 30_000, n),
            "n": rng.integers(1, 8192, n),
            "k": rng.integers(1, 8192, n),
            "batch": rng.integers(1, 4, n),
            "op": rng.choice(["gemm", "bmm", "linear"], n),
            "dtype": rng.choice(["float32", "float16"], n),
            "device": [DEVICES[i % len(DEVICES)] for i in range(n)],
            "price_per_hour_usd": np.where(rng.random(n) < 0.4, 2.5, np.nan),
            "grid_gco2_per_kwh": np.where(rng.random(n) < 0.4, 350.0, np.nan),
        }
    )


def api_answers(model_dir: Path, frame: pd.DataFrame, coverage: float = 0.9) -> list[dict[str, Any]]:
    records = [
        {k: v for k, v in rec.items() if not (isinstance(v, float) and math.isnan(v))}
        for rec in frame.to_dict("records")
    ]
    with TestClient(create_app(Settings(model_dir=model_dir))) as client:
        response = client.post("/v1/gemm/predict", json={"instances": records, "coverage": coverage})
    assert response.status_code == 200, response.text
    return response.json()["predictions"]  # type: ignore[no-any-return]


def scored_as_api(row: pd.Series) -> dict[str, Any]:
    """A scored row in the API's shape, to compare with ``==``."""
    out: dict[str, Any] = {}
    for name in INTERVAL_COLUMNS:
        value = row[name]
        interval = (
            None
            if pd.isna(value)
            else {k: row[f"{name}{s}"] for k, s in (("value", ""), ("low", "_low"), ("high", "_high"))}
        )
        if interval is not None or name not in ("cost_usd", "co2_g"):
            out[name] = interval
    # Always the JSON of the API's object ("{}" where it is empty): a null (NaN in pandas) stays as it is.
    out["unavailable"] = (
        json.loads(row["unavailable"]) if isinstance(row["unavailable"], str) else row["unavailable"]
    )
    out["ood_reasons"] = list(row["ood_reasons"])
    out["out_of_distribution"] = bool(row["out_of_distribution"])
    return out


def test_csv_on_two_workers_equals_the_api_and_reports_bad_rows(
    trained_model_dir: Path, tmp_path: Path
) -> None:
    frame = instances(400)
    source = tmp_path / "table.csv"
    frame.to_csv(source, index=False)
    lines = source.read_text().splitlines()
    # Data row r is on line r + 2 (1-based, after the header).
    bad = {
        5: ("-3", "m", "greater than 0"),
        17: ("abc", "m", "valid integer"),
        40: ("12.5", "m", "valid integer"),
    }
    for row, (value, _, _) in bad.items():
        lines[row + 1] = value + lines[row + 1][lines[row + 1].index(",") :]
    lines[61 + 1] = lines[61 + 1].replace("Tesla T4", "Quantum GPU 9000")  # rows 4i + 1 are on a T4
    source.write_text("\n".join(lines) + "\n")

    with dask_client(None, workers=2) as client:
        manifest = score(source, tmp_path / "out", client, trained_model_dir, 0.9, chunk_rows=64)

    assert manifest["rows"] == 400 and manifest["scored"] == 396 and manifest["refused"] == 4
    assert manifest["version"] == json.loads((tmp_path / "out" / MANIFEST).read_text())["version"]
    with (tmp_path / "out" / ERRORS).open() as fh:
        errors = list(csv.DictReader(fh))
    assert [int(e["row"]) for e in errors] == [5, 17, 40, 61]
    assert [int(e["line"]) for e in errors] == [7, 19, 42, 63]
    for error in errors[:3]:
        field, words = bad[int(error["row"])][1:]
        assert error["field"] == field and words in error["reason"]
    assert errors[3]["field"] == "device" and "Quantum GPU 9000" in errors[3]["reason"]

    scored = pd.read_parquet(tmp_path / "out").sort_values("row").reset_index(drop=True)
    good = [r for r in range(400) if r not in (5, 17, 40, 61)]
    assert scored["row"].tolist() == good
    answers = api_answers(trained_model_dir, frame.iloc[good])
    assert (
        scored["out_of_distribution"].any()
        and scored["power_w"].isna().any()
        and scored["cost_usd"].notna().any()
    )
    for (_, row), answer in zip(scored.iterrows(), answers, strict=True):
        expected = {k: v for k, v in answer.items() if k not in ("roofline",)}
        assert scored_as_api(row) == expected
        assert row["roofline_flops"] == answer["roofline"]["flops"]


def test_parquet_with_gaps_in_an_integer_column(trained_model_dir: Path, tmp_path: Path) -> None:
    frame = instances(50)
    frame["batch"] = frame["batch"].astype(float).where(frame.index % 3 != 0)  # NaN: the default batch, 1
    source = tmp_path / "table.parquet"
    frame.to_parquet(source, row_group_size=20)
    with dask_client(None, workers=1) as client:
        manifest = score(source, tmp_path / "out", client, trained_model_dir, 0.8)
    assert manifest["partitions"] == 3 and manifest["scored"] == 50
    scored = pd.read_parquet(tmp_path / "out").sort_values("row")
    filled = frame.assign(batch=frame["batch"].fillna(1).astype(int))
    assert scored["batch"].tolist() == filled["batch"].tolist()  # as validated: the default where empty
    expected = api_answers(trained_model_dir, filled, coverage=0.8)
    assert scored["runtime_ms_high"].tolist() == [a["runtime_ms"]["high"] for a in expected]


def test_an_empty_unavailable_is_written_as_the_apis_empty_object(
    trained_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Where the API answers ``"unavailable": {}``, the Parquet output holds ``"{}"``, never a null (which
    pandas reads back as NaN, and ``json.loads`` refuses); where it names reasons, their JSON."""
    # The session's model has no energy model, so each of its rows names a reason; a model with every
    # target answers {} on the RTX 4070. The API and the table both get their columns from here.
    predict_columns = gemm.predict_columns

    def complete_on_the_rtx(config: dict[str, list[Any]], *args: Any) -> gemm.GemmColumns:
        columns = predict_columns(config, *args)
        reasons = [
            {} if d == DEVICES[0] else r for d, r in zip(config["device"], columns.unavailable, strict=True)
        ]
        return replace(columns, unavailable=reasons)

    monkeypatch.setattr(gemm, "predict_columns", complete_on_the_rtx)
    model = ModelRegistry(trained_model_dir, DOMAINS).reload().get("gemm")
    assert model is not None
    catalog = DeviceCatalog.default()
    frame = instances(8)
    chunk = score_chunk(frame, 0, 0.9, model, catalog)
    assert chunk.errors == [] and chunk.table.num_rows == len(frame)
    pq.write_table(chunk.table, tmp_path / "part.parquet")
    written = pd.read_parquet(tmp_path / "part.parquet")["unavailable"].tolist()
    records = [{k: v for k, v in r.items() if not pd.isna(v)} for r in frame.to_dict("records")]
    answers = gemm.predict([GemmInstance.model_validate(r) for r in records], 0.9, model, catalog)
    expected = [a["unavailable"] for a in answers]
    assert {} in expected and any(expected), "the check needs rows with and without reasons"
    assert all(isinstance(v, str) for v in written), written
    assert [json.loads(v) for v in written] == expected


def test_a_failing_partition_publishes_nothing(
    trained_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    source = tmp_path / "table.parquet"
    instances(60).to_parquet(source, row_group_size=20)
    real = run.table_scorer("gemm")
    calls = []

    def flaky(frame: pd.DataFrame, first_row: int, *args: Any) -> Any:
        calls.append(first_row)
        if first_row == 20:
            raise MemoryError("worker ran out of memory")
        return real.score_chunk(frame, first_row, *args)

    monkeypatch.setattr(run, "table_scorer", lambda domain: dataclasses.replace(real, score_chunk=flaky))
    # Threads, not processes: the patched function is the one the workers run.
    failure = r"1 of 3 partitions failed after 2 retries.*rows 20-39.*out of memory"
    with (
        LocalCluster(n_workers=1, processes=False, dashboard_address=None) as cluster,
        Client(cluster) as client,
        pytest.raises(ScoreError, match=failure),
    ):
        score(source, tmp_path / "out", client, trained_model_dir, 0.9)
    assert calls.count(20) == 3  # the first try and two retries
    assert not (tmp_path / "out").exists()
    assert list(tmp_path.iterdir()) == [source]


def test_the_command_refuses_unknown_columns_and_existing_output(
    trained_model_dir: Path, tmp_path: Path
) -> None:
    source = tmp_path / "table.csv"
    instances(5).assign(flops=1.0).to_csv(source, index=False)
    env = {"PERFCOST_MODEL_DIR": str(trained_model_dir)}
    result = CliRunner().invoke(cli, ["score", str(source), str(tmp_path / "out")], env=env)
    assert result.exit_code == 1
    assert "['flops'] are not GEMM instance fields" in result.output
    (tmp_path / "exists").mkdir()
    instances(5).to_csv(source, index=False)
    result = CliRunner().invoke(cli, ["score", str(source), str(tmp_path / "exists")], env=env)
    assert result.exit_code == 1 and "exists; pass --overwrite" in result.output
    with pytest.raises(ScoreError, match="no GEMM model that loads"), dask_client(None, workers=1) as client:
        score(source, tmp_path / "out", client, tmp_path / "no-models", 0.9)
