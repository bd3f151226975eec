"""``perfcost collect mlir``: the program sweep, the assembly statistics, crash-safe storage, and a few
tiny programs compiled with iree-compile and benchmarked with iree-benchmark-module end to end."""

from __future__ import annotations

import gzip
import importlib.util
import json
import math
from collections import Counter
from pathlib import Path

import pytest

from service.domains.mlir import features as F
from training.collect.mlir import assembly, collector, iree, linalg, records, sweep
from training.collect.storage import CollectError, exclusive_lock

HAS_IREE = all(importlib.util.find_spec(m) is not None for m in ("iree.compiler", "iree.runtime"))
needs_iree = pytest.mark.skipif(not HAS_IREE, reason="iree-base-compiler / iree-base-runtime not installed")


def test_sweep_is_deterministic_interleaved_and_covers_every_family() -> None:
    specs = sweep.build_sweep(40)
    assert [s.key for s in specs] == [s.key for s in sweep.build_sweep(40)]
    assert len({s.key for s in specs}) == len(specs) == 40 * len(sweep.FAMILIES)
    # Any prefix covers the families evenly (a collection stopped early is still balanced).
    assert {s.family for s in specs[: len(sweep.FAMILIES)]} == set(sweep.FAMILIES)
    # A larger sweep extends a smaller one: resuming with more programs keeps the measured keys.
    assert [s.key for s in sweep.build_sweep(60)][: len(sweep.FAMILIES) * 40] == [s.key for s in specs]
    dtypes = Counter(s.dtype for s in specs)
    assert set(dtypes) == {"f32", "f16", "bf16", "i8"}
    assert all(s.dtype in sweep.FLOAT_DTYPES for s in specs if s.family in ("softmax", "layernorm"))


def test_every_family_spans_four_orders_of_magnitude_of_work() -> None:
    work: dict[str, list[float]] = {}
    for spec in sweep.build_sweep(120):
        if spec.family in sweep.ONNX_FAMILIES:
            continue  # needs the importer; covered by the dataset test
        s = F.summarize(linalg.render_linalg(spec))
        work.setdefault(spec.family, []).append(max(s.values["log_flops"], s.values["log_bytes"]))
    for family, values in work.items():
        assert max(values) - min(values) >= math.log(1e4), family


def test_rendered_linalg_programs_are_well_formed_with_benchmark_inputs() -> None:
    for spec in sweep.build_sweep(3):
        if spec.family in sweep.LINALG_FAMILIES:
            text = linalg.render_linalg(spec)
            F.check_mlir(text)
            inputs = iree.benchmark_inputs(text)
            assert inputs and all(v.endswith("=1") for v in inputs), spec.key


def test_assembly_statistics() -> None:
    asm = """\t.text
\t.type\tmain_dispatch_0_matmul_8x8x8_f32,@function
main_dispatch_0_matmul_8x8x8_f32:
\tvmovups\t(%rdi), %zmm0
\tvfmadd231ps\t%zmm1, %zmm2, %zmm0
\tvmovaps\t%ymm17, 64(%rsp)                # 32-byte Spill
\tvaddps\t64(%rsp), %ymm3, %ymm3           # 32-byte Folded Reload
\tvaddss\t%xmm4, %xmm5, %xmm5
\tmovq\t%rax, 8(%rsp)                      # 8-byte Spill
\tretq
.Lfunc_end0:
"""
    stats = assembly.assembly_stats(asm)
    assert stats["instructions"] == 7
    assert stats["vector_instructions"] == 4  # vaddss is scalar
    assert stats["vector_registers"] == 7  # 0, 1, 2, 3, 4, 5, 17
    assert stats["spill_stores"] == 2 and stats["spill_reloads"] == 1


def test_storage_recovers_from_a_truncated_tail_and_duplicates(tmp_path: Path) -> None:
    path = tmp_path / records.PROGRAMS
    path.touch()
    writer = records.RecordWriter(path)
    for key in ("a", "b", "a"):
        writer.append({"key": key, "family": "matmul"})
    writer.close()
    with path.open("ab") as fh:
        fh.write(gzip.compress(json.dumps({"key": "c"}).encode())[:-7])  # killed mid-write
    assert records.recover(path) == {"a", "b"}
    assert [r["key"] for r in records.read_records(path)] == ["a", "b"]
    assert records.recover(path) == {"a", "b"}  # idempotent


def test_second_collector_on_a_locked_directory_refuses(tmp_path: Path) -> None:
    with exclusive_lock(tmp_path), pytest.raises(CollectError, match="another collector"):
        collector.collect(tmp_path, sweep.build_sweep(1)[:1], iree.BenchSettings())


TINY = [
    sweep.ProgramSpec("matmul", "f32", (("m", 8), ("n", 16), ("k", 4))),
    sweep.ProgramSpec("elementwise", "i8", (("shape", (64,)), ("ops", ("add", "max")))),
    sweep.ProgramSpec("onnx_mlp", "f32", (("batch", 2), ("widths", (8, 16, 4)), ("act", "Relu"))),
]


@needs_iree
def test_tiny_programs_end_to_end_and_resume(tmp_path: Path) -> None:
    settings = iree.BenchSettings(repetitions=5, min_time_s=0.005, warmup_s=0.005, threads=1, invocations=2)
    assert collector.collect(tmp_path, TINY, settings) == len(TINY)
    measured = {r["key"]: r for r in records.read_records(tmp_path / records.PROGRAMS)}
    assert set(measured) == {s.key for s in TINY}
    for r in measured.values():
        assert r["status"] == "ok", r.get("error")
        assert r["runtime_ms"] > 0 and r["repetitions"] == 5 and r["runtime_spread"] >= 0
        # Two launches: the runtime is their median, never below the fastest repetition of either.
        assert r["invocations"] == 2 and 0 < r["runtime_min_ms"] <= r["runtime_ms"]
        assert 0 <= r["runtime_launch_spread"] < 2
        assert r["cpu_time_ms"] > 0 and 0 < r["utilization"] <= 1.5
        assert r["instructions"] > 0 and r["code_bytes"] > 0 and r["dispatches"] >= 1
        assert 0 < r["vector_registers"] <= 32 and r["spills"] >= 0
        assert r["compile_ms"] > 0 and "func.func @main" in r["mlir"]
    assert "torch.operator" in measured[TINY[2].key]["mlir"]
    env = json.loads((tmp_path / records.ENVIRONMENT_FILE).read_text())
    assert env["versions"]["iree-base-compiler"] != "not installed" and env["cpu_flags"]
    assert env["benchmark"]["invocations"] == 2
    # Rerunning measures nothing new.
    assert collector.collect(tmp_path, TINY, settings) == 0


@needs_iree
def test_a_program_that_fails_to_compile_is_recorded_with_the_first_error_line() -> None:
    bad = """func.func @main(%a: tensor<4xf32>) -> tensor<4xf32> {
  %0 = linalg.matmul_transpose_b ins(%a, %a : tensor<4xf32>, tensor<4xf32>) outs(%a : tensor<4xf32>)
  return %0 : tensor<4xf32>
}"""
    spec = sweep.ProgramSpec("matmul", "f32", (("m", 1), ("n", 1), ("k", 1)))
    record = iree.measure_program(spec, iree.BenchSettings(), mlir=bad)
    assert record["status"] == "compile_error"
    assert "error" in record["error"] and "\n" not in record["error"]
    assert record["error"].startswith("program.mlir:2:")
    assert record["mlir"] == bad


@pytest.mark.parametrize(
    ("args", "option"),
    [
        (["--invocations", "0"], "--invocations"),
        (["--repetitions", "2"], "--repetitions"),
        (["--per-family", "0"], "--per-family"),
    ],
)
def test_bad_options_name_the_option(tmp_path: Path, args: list[str], option: str) -> None:
    from typer.testing import CliRunner

    from training.collect.cli import app

    result = CliRunner().invoke(app, ["mlir", "--out", str(tmp_path / "x"), *args])
    assert result.exit_code == 2
    assert option in result.output
    assert not (tmp_path / "x").exists()


def test_settings_read_back_from_the_recorded_environment() -> None:
    settings = iree.BenchSettings(repetitions=7, min_time_s=0.03, warmup_s=0.01, threads=3, invocations=2)
    env = json.loads(json.dumps(collector.environment(settings, {})))
    assert iree.BenchSettings.from_environment(env) == settings
    # Collections from before launches were counted ran one launch per program.
    del env["benchmark"]["invocations"]
    assert iree.BenchSettings.from_environment(env).invocations == 1
