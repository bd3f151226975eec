"""``perfcost collect cpu-gemm``: the sweep, a tiny real run, crash-safe resumption and the lock."""

from __future__ import annotations

import csv
import fcntl
import hashlib
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from service.core.devices import DeviceSpec
from training.collect import cli, cpu_gemm, cpu_sweep, local_cpu, storage

REPO = Path(__file__).resolve().parents[3]
# Tiny shapes only, one BLAS thread, a small bandwidth array: a run costs milliseconds per configuration.
TINY = ["--max-seconds-per-config", "0.0005", "--threads", "1", "--bandwidth-mib", "4"]


def _rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def _invoke(*args: str):  # type: ignore[no-untyped-def]
    return CliRunner().invoke(cli.app, ["cpu-gemm", *args])


def test_sweep_is_deterministic_large_and_spans_the_space() -> None:
    sweep = cpu_sweep.build_sweep([1, 2])
    keys = sweep.keys()
    assert keys == cpu_sweep.build_sweep([1, 2]).keys()
    assert len(keys) >= 2200
    assert len(set(keys)) == len(keys)
    configs = sweep.configs
    assert {c.dtype for c in configs} == {"float32", "float64"}
    assert {c.op for c in configs} == {"gemm", "bmm"}
    assert {c.threads for c in configs} == {1, 2}
    assert all(c.batch == 1 for c in configs if c.op == "gemm")
    assert {c.batch for c in configs if c.op == "bmm"} <= set(range(2, 65))
    dims = {d for c in configs for d in (c.m, c.n, c.k)}
    assert {1, 2, 8, 127, 1000, 1537, 3001}.issubset(dims) and max(dims) >= 4096
    assert any((c.m, c.n, c.k) == (4096, 64, 4096) for c in configs)
    assert any((c.m, c.n, c.k) == (1, 2048, 2048) for c in configs)
    # The skip rule is explicit: everything kept is under the cap, everything left out says why.
    assert all(c.conservative_call_seconds() <= cpu_sweep.DEFAULT_MAX_CALL_SECONDS for c in configs)
    assert sweep.skipped and all(reason for _, reason in sweep.skipped)
    assert not {c.key for c, _ in sweep.skipped} & set(keys)
    # Keys are what resumption relies on: pin the exact sweep (update deliberately if the sweep changes).
    digest = hashlib.sha256("\n".join(keys).encode()).hexdigest()
    assert digest == "8c4f9fbe7a76773483802d0e4f01587c3b6c0e39aa697b513c04051e6c824676"


def test_default_threads_are_one_to_nproc() -> None:
    nproc = local_cpu.local_cpu_count()
    threads = cpu_sweep.default_threads()
    assert threads[0] == 1 and threads[-1] == nproc
    if nproc <= 8:
        assert threads == list(range(1, nproc + 1))
    assert {c.threads for c in cpu_sweep.build_sweep().configs} == set(threads)


def test_tiny_run_writes_measurements_device_and_environment(tmp_path: Path) -> None:
    out = tmp_path / "cpu-gemm-local"
    result = _invoke("--out", str(out), "--limit", "6", "--min-time", "0.001", *TINY)
    assert result.exit_code == 0, result.output
    with open(out / storage.MEASUREMENTS, newline="") as fh:
        assert tuple(next(csv.reader(fh))) == cpu_gemm.COLUMNS
    rows = _rows(out / storage.MEASUREMENTS)
    expected = cpu_sweep.build_sweep([1], 0.0005).keys()[:6]
    assert [r["key"] for r in rows] == expected
    device = DeviceSpec.model_validate(json.loads((out / storage.DEVICE_FILE).read_text()))
    assert device.kind == "cpu"
    env = json.loads((out / storage.ENVIRONMENT_FILE).read_text())
    assert env["numpy"] and "blas" in env and env["python"]
    for row in rows:
        assert float(row["runtime_ms"]) > 0
        assert float(row["runtime_spread"]) >= 0
        assert int(row["repeats"]) >= 5
        assert row["device"] == device.name
        assert row["source"] == "cpu-gemm-local"
        assert row["layout"] == "nn" and row["kernel"].startswith("numpy.matmul/")
        assert row["op"] in ("gemm", "bmm") and row["dtype"] in ("float32", "float64")
        assert row["threads"] == "1" and row["measured_at"].endswith("+00:00")

    # A rerun has nothing left to do and changes nothing.
    before = (out / storage.MEASUREMENTS).read_bytes()
    again = _invoke("--out", str(out), "--limit", "6", "--min-time", "0.001", *TINY)
    assert again.exit_code == 0, again.output
    assert (out / storage.MEASUREMENTS).read_bytes() == before


def test_sigkill_then_rerun_yields_each_key_exactly_once(tmp_path: Path) -> None:
    out = tmp_path / "run"
    csv_path = out / storage.MEASUREMENTS
    n = 30
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    # About 0.05 s per configuration, so the run is still going when it is killed.
    args = [sys.executable, "-m", "training.collect", "cpu-gemm", "--out", str(out), "--limit", str(n), *TINY]
    slow = [*args, "--min-time", "0.05", "--max-repeats", "1000000"]
    with open(tmp_path / "first.log", "w") as log:
        proc = subprocess.Popen(slow, cwd=tmp_path, env=env, stdout=log, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + 60
            written = 0
            while written < 3:
                assert proc.poll() is None, (tmp_path / "first.log").read_text()
                assert time.monotonic() < deadline, "collector wrote no rows within 60 s"
                time.sleep(0.01)
                written = csv_path.read_bytes().count(b"\n") - 1 if csv_path.exists() else 0
            # While it runs, a second collector on the same directory refuses.
            second = _invoke("--out", str(out), "--limit", str(n), "--min-time", "0.001", *TINY)
            assert second.exit_code == 1
            assert "another collector" in second.output
            os.kill(proc.pid, signal.SIGKILL)
        finally:
            proc.kill()
            proc.wait(timeout=30)
    kept = len(_rows(csv_path))
    assert 3 <= kept < n, f"the kill should land mid-run, found {kept} rows"
    with open(csv_path, "ab") as fh:  # a row cut short by the crash
        fh.write(b"gemm|b=1|m=3|n=3|k=3|float32|t=1,cpu-gemm-lo")

    done = subprocess.run(
        [*args, "--min-time", "0.001"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "partially written" in done.stderr
    keys = [r["key"] for r in _rows(csv_path)]
    assert len(keys) == len(set(keys)) == n
    assert set(keys) == set(cpu_sweep.build_sweep([1], 0.0005).keys()[:n])
    assert csv_path.read_bytes().endswith(b"\n")


def test_repeated_sigkills_at_random_moments_lose_and_duplicate_nothing(tmp_path: Path) -> None:
    n = 200
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}

    def command(out: Path, min_time: str) -> list[str]:
        return [sys.executable, "-m", "training.collect", "cpu-gemm", "--out", str(out), "--limit", str(n),
                *TINY, "--min-time", min_time, "--max-repeats", "1000000"]  # fmt: skip

    # The sweep's configurations do not depend on timing, so the reference run may be quick.
    reference = tmp_path / "uninterrupted"
    subprocess.run(
        command(reference, "0.001"), cwd=tmp_path, env=env, capture_output=True, check=True, timeout=300
    )
    expected = [r["key"] for r in _rows(reference / storage.MEASUREMENTS)]
    assert len(expected) == n

    out = tmp_path / "killed"
    csv_path = out / storage.MEASUREMENTS
    rng = random.Random(20261129)

    def lines() -> int:
        return csv_path.read_bytes().count(b"\n") if csv_path.exists() else 0

    mid_sweep = 0
    for i in range(6):
        proc = subprocess.Popen(
            command(out, "0.05"), cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        if i % 3 == 0:
            time.sleep(rng.uniform(0.05, 1.0))  # most likely during start-up or recovery
        else:
            # Once this run is writing rows (about 0.05 s each), at a random moment, often mid-write.
            before, deadline = lines(), time.monotonic() + 60
            while lines() == before and proc.poll() is None and time.monotonic() < deadline:
                time.sleep(0.005)
            time.sleep(rng.uniform(0.0, 0.5))
            mid_sweep += lines() > before
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    assert mid_sweep == 4 and lines() < n + 1, f"four kills should land mid-sweep, {mid_sweep} did"
    subprocess.run(command(out, "0.001"), cwd=tmp_path, env=env, capture_output=True, check=True, timeout=300)
    rows = _rows(csv_path)
    keys = [r["key"] for r in rows]
    assert len(keys) == len(set(keys)), "duplicated rows"
    assert sorted(keys) == sorted(expected), "lost or foreign rows"
    assert all(float(r["runtime_ms"]) > 0 for r in rows)


def test_second_collector_on_a_locked_directory_refuses(tmp_path: Path) -> None:
    out = tmp_path / "locked"
    out.mkdir()
    fd = os.open(out / storage.LOCK_FILE, os.O_RDWR | os.O_CREAT)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        result = _invoke("--out", str(out), "--limit", "2", "--min-time", "0.001", *TINY)
    finally:
        os.close(fd)
    assert result.exit_code == 1
    assert "another collector is already writing to" in result.output
    assert not (out / storage.MEASUREMENTS).exists()


def test_recovery_drops_partial_malformed_and_duplicate_lines(tmp_path: Path) -> None:
    path = tmp_path / storage.MEASUREMENTS
    good = "k1,s,d,gemm,1,2,2,2,float32,nn,numpy.matmul/x,1,0.001,0.1,5,t"
    other = good.replace("k1", "k2", 1)
    path.write_text("\n".join([cpu_gemm.HEADER, good, "garbage", good, other, "k3,s,d"]))
    rows = storage.recover_measurements(path, cpu_gemm.COLUMNS)
    assert list(rows) == ["k1", "k2"]
    assert path.read_text() == "\n".join([cpu_gemm.HEADER, good, other]) + "\n"

    other_columns = tmp_path / "other.csv"
    other_columns.write_text("a,b\n1,2\n")
    with pytest.raises(storage.CollectError, match="columns"):
        storage.recover_measurements(other_columns, cpu_gemm.COLUMNS)

    half_header = tmp_path / "half.csv"
    half_header.write_text("key,sou")
    assert storage.recover_measurements(half_header, cpu_gemm.COLUMNS) == {}
    assert half_header.read_text() == cpu_gemm.HEADER + "\n"


@pytest.mark.parametrize(
    ("args", "option"),
    [
        (["--limit", "0"], "--limit"),
        (["--min-time", "-1"], "--min-time"),
        (["--max-seconds-per-config", "0"], "--max-seconds-per-config"),
        (["--threads", "one,two"], "--threads"),
        (["--threads", "0"], "--threads"),
        (["--max-threads", "100000"], "--max-threads"),
    ],
)
def test_bad_options_name_the_option(tmp_path: Path, args: list[str], option: str) -> None:
    result = _invoke("--out", str(tmp_path / "x"), *args)
    assert result.exit_code == 2
    assert option in result.output
    assert not (tmp_path / "x").exists()
