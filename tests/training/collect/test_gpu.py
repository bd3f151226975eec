"""``perfcost collect gpu-gemm`` without a GPU: the refusal, the shipped calibration sweep and its
validator, the full sweep, and the storage path (resumption after a kill, loading) with a fake backend."""

from __future__ import annotations

import csv
import fcntl
import hashlib
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
import types
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from service.core.devices import DeviceSpec
from service.domains.gemm.features import OPS
from training import cli
from training.collect import cpu_gemm, gpu_backend, gpu_gemm, gpu_sweep, storage
from training.collect.gpu_backend import GpuTiming
from training.collect.gpu_sweep import GpuGemmConfig, SweepError
from training.domains.gemm.data import load_gemm_dir

REPO = Path(__file__).resolve().parents[3]
FAKE_SPEC = DeviceSpec(
    name="Fake GPU X",
    memory_gb=16.0,
    memory_bandwidth_gbps=900.0,
    sm_count=80,
    cores_per_sm=64,
    clock_mhz=1530.0,
    fp32_gflops=15667.2,
    fp16_gflops=125337.6,
    l2_cache_mb=6.0,
    tdp_w=300.0,
)


class Killed(BaseException):
    """Stands in for the process dying in the middle of a configuration."""


class FakeBackend:
    """Deterministic timings (from the configuration's FLOPs) and, optionally, energy; records what it
    was asked to measure; raises :class:`Killed` on the ``die_at``-th configuration."""

    def __init__(self, energy: bool = True, die_at: int | None = None, spec: DeviceSpec = FAKE_SPEC) -> None:
        self.energy_supported = energy
        self.die_at = die_at
        self.spec = spec
        self.measured: list[str] = []
        self.closed = False

    def device_spec(self) -> DeviceSpec:
        return self.spec

    def environment(self) -> dict[str, Any]:
        return {"gpu": self.spec.name, "gpu_uuid": "GPU-fake", "driver": "0", "torch": "fake"}

    def time(self, cfg: GpuGemmConfig, min_time: float) -> GpuTiming:
        if self.die_at is not None and len(self.measured) + 1 == self.die_at:
            raise Killed
        self.measured.append(cfg.key)
        runtime = 0.005 + cfg.flops / 1e10
        power = 100.0 + len(cfg.key) if self.energy_supported else None
        energy = power * runtime / 1000 if power is not None else None
        return GpuTiming(runtime, 0.01, 50, power, energy)

    def close(self) -> None:
        self.closed = True


def _rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def _invoke(*args: str):  # type: ignore[no-untyped-def]
    return CliRunner().invoke(cli.app, ["collect", "gpu-gemm", *args])


# --- refusing without a GPU ------------------------------------------------------------------------
def test_refuses_in_one_line_when_torch_is_missing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def no_torch() -> Any:
        raise ModuleNotFoundError("No module named 'torch'")

    monkeypatch.setattr(gpu_backend, "_import_torch", no_torch)
    result = _invoke("--out", str(tmp_path / "out"))
    assert result.exit_code == 1
    assert "no CUDA device" in result.output
    assert "pip install -e '.[gpu]'" in result.output
    assert "Traceback" not in result.output and isinstance(result.exception, SystemExit)
    assert len(result.output.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()


def test_refuses_when_cuda_is_not_available(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake_torch = types.SimpleNamespace(
        __version__="2.5.0+cpu",
        version=types.SimpleNamespace(cuda=None),
        cuda=types.SimpleNamespace(is_available=lambda: False, device_count=lambda: 0),
    )
    monkeypatch.setattr(gpu_backend, "_import_torch", lambda: fake_torch)
    result = _invoke("--out", str(tmp_path / "out"), "--sweep", "full", "--min-time", "1")
    assert result.exit_code == 1
    assert "no CUDA device" in result.output and "is_available() is false" in result.output
    assert "Traceback" not in result.output
    assert not (tmp_path / "out").exists()


def test_dry_run_needs_no_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_torch() -> Any:
        raise ModuleNotFoundError("No module named 'torch'")

    monkeypatch.setattr(gpu_backend, "_import_torch", no_torch)
    result = _invoke("--dry-run")
    assert result.exit_code == 0, result.output
    assert f"{len(gpu_sweep.calibration_configs())} configurations of the calibration sweep" in result.output
    half = _invoke("--dry-run", "--sweep", "full", "--dtype", "float16,bfloat16")
    assert half.exit_code == 0 and "dtypes bfloat16, float16)" in half.output


@pytest.mark.parametrize(
    ("args", "option"),
    [
        (["--min-time", "0"], "--min-time"),
        (["--min-time", "nan"], "--min-time"),
        (["--dtype", "int8"], "--dtype"),
        (["--dtype", ","], "--dtype"),
        (["--limit", "0"], "--limit"),
        (["--device-index", "-1"], "--device-index"),
        (["--sweep", "everything"], "--sweep"),
    ],
)
def test_bad_options_name_the_option(args: list[str], option: str) -> None:
    result = _invoke(*args)
    assert result.exit_code == 2
    assert option in result.output


# --- the sweeps ------------------------------------------------------------------------------------
def test_calibration_sweep_is_small_and_covers_the_regimes() -> None:
    frame = gpu_sweep.calibration_sweep()
    assert list(frame.columns) == list(gpu_sweep.SWEEP_COLUMNS)
    assert 16 <= len(frame) <= 32
    assert set(frame["op"]) == set(OPS) == {"gemm", "bmm", "linear"}
    assert not frame.duplicated().any()
    sizes = frame[["m", "n", "k"]]
    aligned = (sizes % 128 == 0).all(axis=1)
    unaligned = (sizes % 8 != 0).any(axis=1)
    assert aligned.sum() >= 8 and unaligned.sum() >= 3
    assert {2049, 4095} <= set(sizes.to_numpy().ravel())
    flops = 2 * frame["batch"] * frame["m"] * frame["n"] * frame["k"]
    assert flops.min() < 1e5  # launch floor
    assert ((sizes.min(axis=1) <= 16) & (sizes.max(axis=1) >= 4096)).sum() >= 3  # bandwidth-bound
    squares = frame[(frame["m"] == frame["n"]) & (frame["n"] == frame["k"]) & aligned]
    assert {1024, 2048, 4096, 8192} <= set(squares.loc[squares["dtype"] == "float32", "m"])
    bmm = frame[frame["op"] == "bmm"]
    assert bmm["batch"].between(8, 64).all() and len(bmm) >= 3
    assert (frame["dtype"] == "float32").mean() > 0.7
    assert {"float16", "bfloat16"} <= set(frame["dtype"])
    assert (frame.loc[frame["op"] == "linear", "layout"] == "nt").all()
    assert (frame.loc[frame["op"] != "bmm", "batch"] == 1).all()


GOOD = "op,batch,m,n,k,dtype,layout\ngemm,1,64,64,64,float32,nn\n"


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("gemm,1,0,64,64,float32,nn", "line 3: m '0' is not a positive integer"),
        ("gemm,1,64,-2,64,float32,nn", "line 3: n '-2' is not a positive integer"),
        ("gemm,1,64,64,1.5,float32,nn", "line 3: k '1.5' is not a positive integer"),
        ("gemm,,64,64,64,float32,nn", "line 3: batch '' is not a positive integer"),
        ("conv,1,64,64,64,float32,nn", "line 3: op 'conv' is not one of"),
        ("gemm,1,64,64,64,float8,nn", "line 3: dtype 'float8' is not one of"),
        ("gemm,1,64,64,64,int8,nn", "line 3: dtype 'int8' is not measured by the GPU collector"),
        ("gemm,1,64,64,64,float32,nx", "line 3: layout 'nx' is not one of"),
        ("gemm,4,64,64,64,float32,nn", "line 3: batch 4 must be 1 for op gemm"),
        ("linear,1,64,64,64,float32,nn", "line 3: layout 'nn' must be 'nt' for op linear"),
        ("gemm,1,64,64,64,float32", "line 3: 6 fields, expected 7"),
        ("gemm,1,64,64,64,float32,nn", "line 3: duplicate of line 2"),
    ],
)
def test_sweep_validator_names_the_line_and_field(line: str, message: str) -> None:
    with pytest.raises(SweepError, match="^bad.csv: " + message.replace("(", r"\(").replace(".", r"\.")):
        gpu_sweep.parse_sweep(GOOD + line + "\n", "bad.csv")


def test_sweep_validator_rejects_a_bad_header_too_many_rows_and_an_empty_file() -> None:
    with pytest.raises(SweepError, match="line 1: header must be op,batch,m,n,k,dtype,layout"):
        gpu_sweep.parse_sweep("op,m,n,k\ngemm,1,1,1\n", "bad.csv")
    many = "op,batch,m,n,k,dtype,layout\n" + "".join(f"gemm,1,{i},8,8,float32,nn\n" for i in range(1, 34))
    with pytest.raises(SweepError, match="33 configurations, at most 32"):
        gpu_sweep.parse_sweep(many, "bad.csv")
    with pytest.raises(SweepError, match="no configurations"):
        gpu_sweep.parse_sweep("op,batch,m,n,k,dtype,layout\n", "bad.csv")


def test_calibration_sweep_reports_a_broken_shipped_file(monkeypatch: pytest.MonkeyPatch) -> None:
    class Broken:
        def joinpath(self, name: str) -> Broken:
            return self

        def read_text(self, encoding: str) -> str:
            return GOOD + "bmm,8,64,64,x,float32,nn\n"

    monkeypatch.setattr(gpu_sweep.resources, "files", lambda package: Broken())
    with pytest.raises(
        SweepError, match="gemm_calibration_sweep.csv: line 3: k 'x' is not a positive integer"
    ):
        gpu_sweep.calibration_sweep()


def test_full_sweep_is_fixed_a_few_hundred_shapes_and_extends_the_calibration_one() -> None:
    configs = gpu_sweep.full_sweep()
    keys = [c.key for c in configs]
    assert keys == [c.key for c in gpu_sweep.full_sweep()]
    assert len(set(keys)) == len(keys)
    shapes = {(c.op, c.batch, c.m, c.n, c.k, c.layout) for c in configs}
    assert 250 <= len(shapes) <= 600
    calibration = gpu_sweep.calibration_configs()
    assert configs[: len(calibration)] == calibration
    assert {c.op for c in configs} == set(OPS)
    assert {c.dtype for c in configs} == {"float32", "float16", "bfloat16"}
    dims = [d for c in configs for d in (c.m, c.n, c.k)]
    for multiple in (8, 64, 128):
        assert sum(d % multiple == 0 and d > multiple for d in dims) > 100
    assert sum(d % 8 != 0 for d in dims) > 100
    assert sum(min(c.m, c.n, c.k) <= 64 and max(c.m, c.n, c.k) >= 4096 for c in configs) > 20  # skinny
    assert len({c.batch for c in configs if c.op == "bmm"}) >= 8
    assert all(c.batch == 1 for c in configs if c.op != "bmm")
    assert all(c.layout == "nt" for c in configs if c.op == "linear")
    assert all(gpu_sweep._check_config(c) is None for c in configs)
    # Keys are what resumption relies on: pin the exact sweep (update deliberately if it changes).
    digest = hashlib.sha256("\n".join(keys).encode()).hexdigest()
    assert digest == "761d53aaa92f270a9089c3e5e393002cbc497eb08f77d3a91820a85aaebc6d64"


def test_peak_rates_follow_the_tables() -> None:
    # A100: 108 SMs x 64 cores x 2 x 1410 MHz (the catalog's 19492), 2048 dense FP16 FLOPs/SM/clock.
    assert gpu_backend.peak_rates(8, 0, "NVIDIA A100-SXM4-40GB", 108, 1410) == (64, 19491.8, 311869.4)
    cores, fp32, fp16 = gpu_backend.peak_rates(9, 0, "NVIDIA H100 80GB HBM3", 132, 1980)
    assert (cores, fp32) == (128, 66908.2) and fp16 == pytest.approx(132 * 4096 * 1.98)
    # GeForce Ada runs FP16 with FP32 accumulation at half the workstation rate.
    assert gpu_backend.peak_rates(8, 9, "NVIDIA GeForce RTX 4090", 128, 2520)[2] == pytest.approx(
        128 * 512 * 2.52
    )
    assert gpu_backend.peak_rates(8, 9, "NVIDIA L4", 58, 2040)[2] == pytest.approx(58 * 1024 * 2.04)
    assert gpu_backend.peak_rates(6, 1, "Tesla P4", 20, 1113)[2] is None
    with pytest.raises(storage.CollectError, match="compute capability 3.5"):
        gpu_backend.peak_rates(3, 5, "Tesla K40", 15, 875)


# --- storage: measurements, device, environment, resumption ---------------------------------------
def test_run_writes_the_layout_train_reads_and_resumes_after_a_kill(tmp_path: Path) -> None:
    out = tmp_path / "gpu-gemm-fake"
    configs = gpu_sweep.calibration_configs()
    first = FakeBackend(die_at=6)
    with pytest.raises(Killed):
        gpu_gemm.run_collection(out, configs, first, 0.2, {"sweep": "calibration"})
    path = out / storage.MEASUREMENTS
    with open(path, newline="") as fh:
        assert tuple(next(csv.reader(fh))) == gpu_gemm.COLUMNS
    assert [r["key"] for r in _rows(path)] == [c.key for c in configs[:5]] == first.measured
    with open(path, "ab") as fh:  # a row cut short by the kill
        fh.write(configs[5].key.encode() + b",gpu-gemm-fa")

    second = FakeBackend(energy=False)
    assert gpu_gemm.run_collection(out, configs, second, 0.2) == len(configs) - 5
    assert second.measured == [c.key for c in configs[5:]]  # nothing measured twice
    rows = _rows(path)
    assert [r["key"] for r in rows] == [c.key for c in configs]
    assert path.read_bytes().endswith(b"\n")
    for row, cfg in zip(rows, configs, strict=True):
        assert (row["op"], row["dtype"], row["layout"]) == (cfg.op, cfg.dtype, cfg.layout)
        assert int(row["m"]) == cfg.m and int(row["batch"]) == cfg.batch
        assert float(row["runtime_ms"]) > 0 and float(row["runtime_spread"]) >= 0
        assert row["device"] == FAKE_SPEC.name and row["source"] == "gpu-gemm-fake"
        assert row["measured_at"].endswith("+00:00") and int(row["repeats"]) == 50
    assert all(float(r["power_w"]) > 0 and float(r["energy_j"]) > 0 for r in rows[:5])
    assert all(r["power_w"] == "" and r["energy_j"] == "" for r in rows[5:])  # energy unsupported
    assert DeviceSpec.model_validate(json.loads((out / storage.DEVICE_FILE).read_text())) == FAKE_SPEC
    env = json.loads((out / storage.ENVIRONMENT_FILE).read_text())
    assert env["collector"] == "perfcost collect gpu-gemm" and env["gpu_uuid"] == "GPU-fake"
    assert env["settings"]["min_time_s"] == 0.2 and "CUDA events" in env["timing"]

    # A third run has nothing to do and changes nothing.
    before = path.read_bytes()
    third = FakeBackend()
    assert gpu_gemm.run_collection(out, configs, third, 0.2) == 0 and not third.measured
    assert path.read_bytes() == before

    data = load_gemm_dir(out)
    assert not data.report.rejected, data.report.summary()
    assert len(data.frame) == len(configs)
    assert set(data.frame["op"]) == set(OPS) and data.frame["power_w"].notna().sum() == 5
    assert list(data.devices) == [FAKE_SPEC.name]


def test_another_gpu_in_the_same_directory_is_refused(tmp_path: Path) -> None:
    configs = gpu_sweep.calibration_configs()[:2]
    gpu_gemm.run_collection(tmp_path, configs, FakeBackend(), 0.2)
    other = FakeBackend(spec=FAKE_SPEC.model_copy(update={"name": "Other GPU"}))
    with pytest.raises(storage.CollectError, match="holds measurements of \\['Fake GPU X'\\]"):
        gpu_gemm.run_collection(tmp_path, gpu_sweep.calibration_configs(), other, 0.2)
    assert not other.measured


def test_configurations_too_large_for_the_gpu_are_left_out(tmp_path: Path) -> None:
    small = FakeBackend(spec=FAKE_SPEC.model_copy(update={"memory_gb": 1.0}))
    configs = gpu_sweep.calibration_configs()
    gpu_gemm.run_collection(tmp_path, configs, small, 0.2)
    budget = gpu_gemm.MAX_MEMORY_SHARE * 2**30
    assert small.measured == [c.key for c in configs if c.nbytes <= budget]
    assert len(small.measured) < len(configs)


def test_a_skipped_configuration_writes_no_row_and_is_tried_again(tmp_path: Path) -> None:
    configs = gpu_sweep.calibration_configs()[:4]

    class OutOfMemoryOnce(FakeBackend):
        def time(self, cfg: GpuGemmConfig, min_time: float) -> GpuTiming:
            if cfg == configs[1]:
                raise gpu_backend.ConfigSkipped("out of GPU memory")
            return super().time(cfg, min_time)

    assert gpu_gemm.run_collection(tmp_path, configs, OutOfMemoryOnce(), 0.2) == 3
    assert [r["key"] for r in _rows(tmp_path / storage.MEASUREMENTS)] == [configs[i].key for i in (0, 2, 3)]
    again = FakeBackend()
    assert gpu_gemm.run_collection(tmp_path, configs, again, 0.2) == 1 and again.measured == [configs[1].key]


def test_recovery_drops_partial_malformed_and_duplicate_lines(tmp_path: Path) -> None:
    path = tmp_path / storage.MEASUREMENTS
    good = "k1,s,d,gemm,1,2,2,2,float32,nn,0.001,0.1,,,5,t"
    other = "k2,s,d,gemm,1,2,2,2,float32,nn,0.001,0.1,250.5,0.00025,5,t"
    negative = "k3,s,d,gemm,1,2,2,2,float32,nn,0.001,0.1,-1,0.1,5,t"
    path.write_text("\n".join([",".join(gpu_gemm.COLUMNS), good, "garbage", good, other, negative, "k4,s,d"]))
    assert list(storage.recover_measurements(path, gpu_gemm.COLUMNS)) == ["k1", "k2"]
    assert path.read_text() == "\n".join([",".join(gpu_gemm.COLUMNS), good, other]) + "\n"
    cpu = tmp_path / "cpu.csv"
    cpu.write_text(cpu_gemm.HEADER + "\n")
    with pytest.raises(storage.CollectError, match="not the collector's"):
        storage.recover_measurements(cpu, gpu_gemm.COLUMNS)


def test_cli_run_with_a_fake_backend_writes_the_default_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    backend = FakeBackend()
    monkeypatch.setattr(gpu_gemm, "make_backend", lambda index: backend)
    monkeypatch.chdir(tmp_path)
    result = _invoke("--limit", "3", "--min-time", "0.01", "--dtype", "float32")
    assert result.exit_code == 0, result.output
    out = tmp_path / "datasets" / "gpu-gemm-fake-gpu-x"
    assert "measured 3 configurations" in result.output
    assert len(_rows(out / storage.MEASUREMENTS)) == 3 and backend.closed
    env = json.loads((out / storage.ENVIRONMENT_FILE).read_text())
    assert env["settings"]["sweep"] == "calibration" and env["settings"]["dtypes"] == ["float32"]

    # While another collector holds the directory, a second one refuses in one line.
    fd = os.open(out / storage.LOCK_FILE, os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        locked = _invoke("--limit", "5")
    finally:
        os.close(fd)
    assert locked.exit_code == 1 and "another collector is already writing to" in locked.output


SLOW_COLLECTOR = """
import sys, time
from pathlib import Path
from service.core.devices import DeviceSpec
from training.collect import gpu_backend, gpu_gemm, gpu_sweep

spec = DeviceSpec(name="Fake GPU X", memory_gb=16.0, memory_bandwidth_gbps=900.0, sm_count=80,
                  cores_per_sm=64, clock_mhz=1530.0, fp32_gflops=15667.2, l2_cache_mb=6.0)

class Slow:
    energy_supported = False
    def device_spec(self): return spec
    def environment(self): return {"gpu": spec.name}
    def time(self, cfg, min_time):
        time.sleep(min_time)
        return gpu_backend.GpuTiming(1.0 + cfg.m / 1e4, 0.01, 10)
    def close(self): pass

gpu_gemm.run_collection(Path(sys.argv[1]), gpu_sweep.calibration_configs(), Slow(), float(sys.argv[2]))
"""


def test_sigkill_then_rerun_yields_each_configuration_exactly_once(tmp_path: Path) -> None:
    script = tmp_path / "slow_collector.py"
    script.write_text(textwrap.dedent(SLOW_COLLECTOR))
    out = tmp_path / "run"
    csv_path = out / storage.MEASUREMENTS
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.Popen(
        [sys.executable, str(script), str(out), "0.05"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 60
        while not csv_path.exists() or csv_path.read_bytes().count(b"\n") < 4:
            assert proc.poll() is None and time.monotonic() < deadline, "collector wrote no rows"
            time.sleep(0.01)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait(timeout=30)
    n = len(gpu_sweep.calibration_configs())
    assert 3 <= len(_rows(csv_path)) < n
    subprocess.run([sys.executable, str(script), str(out), "0.001"], env=env, check=True, timeout=120)
    keys = [r["key"] for r in _rows(csv_path)]
    assert len(keys) == len(set(keys)) == n
    assert set(keys) == {c.key for c in gpu_sweep.calibration_configs()}
    assert not load_gemm_dir(out).report.rejected
