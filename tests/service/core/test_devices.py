"""The built-in device catalog (``service/data/devices.json``): every device a dataset names is there, and
its per-dtype peaks are dense, ordered as the hardware orders them, sourced, and agree with what the
aiconfigurator dataset ships and measured (those checks skip when the dataset mirror is absent)."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import pytest
import yaml

from service.core.devices import DeviceCatalog, DeviceSpec, canonical
from service.core.settings import Settings
from service.domains.gemm.dtypes import dtype_peak
from service.domains.gemm.features import flops
from training.core.datasets import fetch, get_spec
from training.core.report import LoadReport
from training.domains.gemm.aiconfigurator_campaigns import load_aiconfigurator_campaigns

ROOT = Path(__file__).resolve().parents[3]
CATALOG_FILE = ROOT / "service" / "data" / "devices.json"
AICONFIGURATOR = (
    Path(os.environ.get("PERFCOST_DATA_MIRROR", ROOT.parent / "shared" / "datasets")) / "aiconfigurator-gemm"
)
UNITS = ("tf32", "fp16", "bf16", "fp8", "int8", "fp4")
TFLOPS = 1000.0  # GFLOP/s per TFLOP/s

# Driver names of the aiconfigurator-gemm rows (torch.cuda.get_device_name / SYCL), its system file for each.
AICONFIGURATOR_SYSTEMS = {
    "a100_sxm": "NVIDIA A100-SXM4-80GB",
    "a100_pcie": "NVIDIA A100 80GB PCIe",
    "b200_sxm": "NVIDIA B200",
    "gb200": "NVIDIA GB200",
    "h100_sxm": "NVIDIA H100 80GB HBM3",
    "l4": "NVIDIA L4",
    "l40s": "NVIDIA L40S",
    "rtx_pro_6000_server": "NVIDIA RTX PRO 6000 Blackwell Server Edition",
    "b60": "Intel(R) Arc(TM) Pro B60 Graphics",
}
AICONFIGURATOR_NAMES = {*AICONFIGURATOR_SYSTEMS.values(), "Intel(R) Graphics [0xe211]"}
NEUSIGHT_NAMES = {
    "NVIDIA A100-PCIE-40GB",
    "NVIDIA A100-SXM4-40GB",
    "NVIDIA A100 80GB PCIe",
    "NVIDIA H100 80GB HBM3",
    "NVIDIA L4",
    "Tesla P100-PCIE-16GB",
    "Tesla P4",
    "Tesla T4",
    "Tesla V100-PCIE-32GB",
    "AMD Instinct MI100",
    "AMD Instinct MI210",
    "AMD Instinct MI250",
}
DEEPBENCH_NAMES = {
    "Tesla V100-SXM2-16GB",
    "Tesla P100-PCIE-16GB",
    "Tesla T4",
    "NVIDIA GeForce GTX 1080 Ti",
    "Tesla M40",
    "NVIDIA GeForce GTX TITAN X",
    "NVIDIA TITAN X (Pascal)",
    "NVIDIA TITAN Xp",
}
GPPERF_NAMES = {"NVIDIA GeForce RTX 4070", "NVIDIA GeForce GTX 680"}
PRICED_NAMES = {
    "NVIDIA H100 80GB HBM3",
    "NVIDIA H200",
    "NVIDIA B200",
    "NVIDIA B300",
    "NVIDIA GB200",
    "NVIDIA GB300",
    "NVIDIA A10G",
    "NVIDIA A40",
    "NVIDIA L4",
    "NVIDIA L40S",
    "NVIDIA GeForce RTX 4090",
    "NVIDIA GeForce RTX 5090",
    "AMD Instinct MI300X",
    "AMD Instinct MI325X",
    "AMD Instinct MI355X",
}
ALL_NAMES = AICONFIGURATOR_NAMES | NEUSIGHT_NAMES | DEEPBENCH_NAMES | GPPERF_NAMES | PRICED_NAMES
# Maxwell (5.2) and Kepler (3.0) have no FP16 arithmetic at all: FP16 GEMMs run on the FP32 units.
# No FP16 unit a GEMM can use: Maxwell has none; consumer Pascal and the P4 compute FP16 at 1/64 of FP32,
# and frameworks accumulate in FP32 anyway, so their FP16 GEMMs run on the FP32 units (source key
# fp16-fp32-accumulate).
NO_FP16 = {
    "Tesla M40",
    "NVIDIA GeForce GTX TITAN X",
    "NVIDIA GeForce GTX 680",
    "NVIDIA GeForce GTX 1080 Ti",
    "NVIDIA TITAN X (Pascal)",
    "NVIDIA TITAN Xp",
    "Tesla P4",
}
PRE_BF16 = NO_FP16 | {
    "Tesla V100-SXM2-16GB",
    "Tesla V100-PCIE-32GB",
    "Tesla T4",
    "Tesla P100-PCIE-16GB",
    "Tesla P4",
    "NVIDIA GeForce GTX 1080 Ti",
    "NVIDIA TITAN X (Pascal)",
    "NVIDIA TITAN Xp",
}
NO_FP8 = PRE_BF16 | {
    "NVIDIA A100-PCIE-40GB",
    "NVIDIA A100-SXM4-40GB",
    "NVIDIA A100 80GB PCIe",
    "NVIDIA A100-SXM4-80GB",
    "NVIDIA A10G",
    "NVIDIA A40",
    "AMD Instinct MI100",
    "AMD Instinct MI210",
    "AMD Instinct MI250",
    "Intel(R) Arc(TM) Pro B60 Graphics",
}
WITH_FP4 = {
    "NVIDIA B200",
    "NVIDIA GB200",
    "NVIDIA B300",
    "NVIDIA GB300",
    "NVIDIA GeForce RTX 5090",
    "NVIDIA RTX PRO 6000 Blackwell Server Edition",
    "AMD Instinct MI355X",
}


@pytest.fixture(scope="module")
def catalog() -> DeviceCatalog:
    return DeviceCatalog.default()


@pytest.fixture(scope="module")
def raw() -> dict:
    return json.loads(CATALOG_FILE.read_text())


def tf(catalog: DeviceCatalog, name: str, unit: str) -> float:
    value = catalog.get(name).unit_gflops(unit)
    assert value is not None, f"{name} lists no {unit}"
    return value / TFLOPS


def test_the_catalog_loads_with_unique_names(catalog: DeviceCatalog, raw: dict) -> None:
    names = [d["name"] for d in raw["devices"]]
    assert len({canonical(n) for n in names}) == len(names) == len(catalog)
    for item in raw["devices"]:
        DeviceSpec.model_validate(item)  # strict: JSON numbers only, no unknown fields


def test_every_device_a_dataset_names_is_in_the_catalog(catalog: DeviceCatalog) -> None:
    missing = sorted(name for name in ALL_NAMES if name not in catalog)
    assert not missing


@pytest.mark.skipif(not AICONFIGURATOR.is_dir(), reason="aiconfigurator-gemm is not in the dataset mirror")
def test_every_device_the_aiconfigurator_rows_name_is_known(catalog: DeviceCatalog) -> None:
    names = set()
    for path in AICONFIGURATOR.glob("*/gemm/*/*/*.parquet"):
        names |= set(pq.read_table(path, columns=["device"]).column("device").to_pylist())
    assert names and names <= AICONFIGURATOR_NAMES, names - AICONFIGURATOR_NAMES
    assert all(name in catalog for name in names)


def test_every_gpu_lists_fp32_and_a_16_bit_rate(catalog: DeviceCatalog) -> None:
    for spec in catalog:
        assert spec.kind == "gpu" and spec.fp32_gflops > 0, spec.name
        has_16_bit = spec.fp16_gflops is not None or spec.bf16_gflops is not None
        assert has_16_bit != (spec.name in NO_FP16), spec.name


def test_units_are_null_where_the_hardware_has_none(catalog: DeviceCatalog) -> None:
    for spec in catalog:
        assert (spec.bf16_gflops is None) == (spec.name in PRE_BF16), spec.name
        assert (spec.fp8_gflops is None) == (spec.name in NO_FP8 | {"Intel(R) Graphics [0xe211]"}), spec.name
        assert (spec.fp4_gflops is None) == (spec.name not in WITH_FP4), spec.name
        if spec.name in PRE_BF16:
            assert spec.tf32_gflops is None, spec.name


def test_peaks_are_ordered_as_the_hardware_orders_them(catalog: DeviceCatalog) -> None:
    chain = ("fp4", "fp8", "bf16", "tf32")
    for spec in catalog:
        known = [(u, spec.unit_gflops(u)) for u in chain if spec.unit_gflops(u) is not None]
        for (high, a), (low, b) in zip(known, known[1:], strict=False):
            assert a >= b, f"{spec.name}: {high} {a} < {low} {b}"
        tensor = spec.bf16_gflops is not None or spec.name.startswith(("Tesla V100", "Tesla T4"))
        if tensor:
            assert spec.fp16_gflops is not None and spec.fp16_gflops >= 1.9 * spec.fp32_gflops, spec.name
            assert spec.int8_gflops is not None, spec.name


def test_every_figure_is_a_dense_peak(catalog: DeviceCatalog) -> None:
    for spec in catalog:
        for unit in ("fp64", "fp32", *UNITS):
            value = spec.unit_gflops(unit)
            assert value is None or 1 <= value <= 20_000 * TFLOPS, (spec.name, unit, value)
    # Each of these would be about twice as high had a "with sparsity" figure slipped in.
    assert tf(catalog, "NVIDIA H100 80GB HBM3", "bf16") < 1000
    assert tf(catalog, "NVIDIA H200", "fp8") < 2000
    assert 2000 <= tf(catalog, "NVIDIA B200", "bf16") <= 2600
    assert tf(catalog, "NVIDIA GB200", "fp4") <= 10_000
    assert tf(catalog, "NVIDIA GB300", "fp4") <= 15_000
    assert tf(catalog, "NVIDIA A100-SXM4-80GB", "bf16") == 312
    assert tf(catalog, "NVIDIA L4", "fp8") < 250
    assert tf(catalog, "NVIDIA L40S", "fp8") < 750
    assert tf(catalog, "AMD Instinct MI300X", "bf16") < 1400
    assert tf(catalog, "AMD Instinct MI355X", "fp4") < 11_000


def test_geforce_parts_run_fp32_accumulate_at_half_the_professional_rate(catalog: DeviceCatalog) -> None:
    """Ada and Blackwell SMs do 1024 dense FP16 FLOP per clock with FP16 accumulate; GeForce parts halve
    it with the FP32 accumulate frameworks use, data-centre and professional parts do not."""

    def per_sm_clock(name: str, unit: str) -> float:
        spec = catalog.get(name)
        return tf(catalog, name, unit) * TFLOPS / (spec.sm_count * spec.clock_mhz / 1000)

    for name in ("NVIDIA GeForce RTX 4070", "NVIDIA GeForce RTX 4090", "NVIDIA GeForce RTX 5090"):
        assert per_sm_clock(name, "bf16") == pytest.approx(512, rel=0.02), name
        assert per_sm_clock(name, "fp8") == pytest.approx(1024, rel=0.02), name
    for name in ("NVIDIA L40S", "NVIDIA L4", "NVIDIA RTX PRO 6000 Blackwell Server Edition"):
        assert per_sm_clock(name, "bf16") == pytest.approx(1024, rel=0.05), name
    assert per_sm_clock("NVIDIA GeForce RTX 5090", "fp4") == pytest.approx(4096, rel=0.02)


def test_generations_relate_as_the_datasheets_say(catalog: DeviceCatalog) -> None:
    a100, h100, b200 = "NVIDIA A100-SXM4-80GB", "NVIDIA H100 80GB HBM3", "NVIDIA B200"
    assert tf(catalog, h100, "bf16") >= 2.5 * tf(catalog, a100, "bf16")
    assert 3.0 < tf(catalog, h100, "bf16") / tf(catalog, a100, "bf16") < 3.3
    assert 2.2 < tf(catalog, b200, "bf16") / tf(catalog, h100, "bf16") < 2.35
    assert catalog.get("NVIDIA H200").bf16_gflops == catalog.get(h100).bf16_gflops
    assert catalog.get("NVIDIA H200").memory_bandwidth_gbps > 1.35 * catalog.get(h100).memory_bandwidth_gbps
    for unit in ("fp32", *UNITS):
        assert tf(catalog, "NVIDIA GB200", unit) >= tf(catalog, b200, unit), unit
        assert tf(catalog, "NVIDIA GB300", unit) >= tf(catalog, "NVIDIA B300", unit), unit
    # Blackwell Ultra: 1.5x the dense FP4 of Blackwell, FP64 and INT8 all but gone.
    assert tf(catalog, "NVIDIA GB300", "fp4") == 1.5 * tf(catalog, "NVIDIA GB200", "fp4")
    assert tf(catalog, "NVIDIA B300", "fp64") < 0.05 * tf(catalog, b200, "fp64")
    assert tf(catalog, "NVIDIA B300", "int8") < 0.1 * tf(catalog, "NVIDIA B300", "fp8")
    # DGEMM runs on FP64 tensor cores from Ampere on: twice the vector rate on A100 and H100.
    assert tf(catalog, a100, "fp64") == pytest.approx(tf(catalog, a100, "fp32"), rel=0.01)
    assert tf(catalog, h100, "fp64") == pytest.approx(tf(catalog, h100, "fp32"), rel=0.01)
    assert 1.8 < tf(catalog, "AMD Instinct MI355X", "fp8") / tf(catalog, "AMD Instinct MI300X", "fp8") < 2
    assert tf(catalog, "AMD Instinct MI100", "bf16") == tf(catalog, "AMD Instinct MI100", "fp16") / 2


def test_every_entry_cites_its_sources(raw: dict) -> None:
    keys = set(raw["_sources"])
    base = {"neusight", "deepbench", "vendor"}
    for item in raw["devices"]:
        cited = [re.match(r"[\w.-]+", part.strip()) for part in (item.get("source") or "").split(";")]
        names = [m.group(0) for m in cited if m]
        assert names and set(names) <= keys, (item["name"], set(names) - keys)
        if any(item.get(f"{u}_gflops") is not None for u in UNITS):
            assert set(names) - base - {"dense-peaks"}, f"{item['name']}: no source for its dtype peaks"
            assert "dense-peaks" in names, item["name"]


@pytest.mark.skipif(not AICONFIGURATOR.is_dir(), reason="aiconfigurator-gemm is not in the dataset mirror")
def test_the_aiconfigurator_system_files_agree(catalog: DeviceCatalog) -> None:
    fields = {
        "bfloat16_tc_flops": "bf16",
        "fp8_tc_flops": "fp8",
        "int8_tc_flops": "int8",
        "fp4_tc_flops": "fp4",
    }
    for system, name in AICONFIGURATOR_SYSTEMS.items():
        path = AICONFIGURATOR / "systems" / f"{system}.yaml"
        if not path.is_file():
            continue
        gpu = yaml.safe_load(path.read_text())["gpu"]
        spec = catalog.get(name)
        assert spec.memory_bandwidth_gbps == pytest.approx(gpu["mem_bw"] / 1e9, rel=0.05), name
        for field, unit in fields.items():
            ours = spec.unit_gflops(unit)
            if field in gpu and ours is not None:  # B60's fp8 figure is its BF16 fallback: we list no FP8
                assert ours == pytest.approx(gpu[field] / 1e9, rel=0.05), (name, unit)


@pytest.mark.skipif(not AICONFIGURATOR.is_dir(), reason="aiconfigurator-gemm is not in the dataset mirror")
def test_no_measured_gemm_beats_the_catalog_peak(catalog: DeviceCatalog) -> None:
    """Every campaign's rows as the loader reads them, against the peak the features price their dtype at
    (a dtype without its unit at the unit it falls back to, as B60's W8A16 FP8 runs on its 16-bit units)."""
    paths = fetch(get_spec("aiconfigurator-gemm"), Settings(data_mirror=AICONFIGURATOR.parent))
    frame = load_aiconfigurator_campaigns(paths, LoadReport("aiconfigurator-gemm"))
    achieved = pd.Series(flops(frame) / frame["runtime_ms"].to_numpy() / 1e6)  # GFLOP/s
    best = achieved.groupby(
        [frame["device"].astype(str).to_numpy(), frame["dtype"].astype(str).to_numpy()]
    ).max()
    assert len(best) >= 28
    for (name, dtype), value in best.items():
        peak = dtype_peak(catalog.get(name), dtype).gflops
        assert value <= 1.05 * peak, (name, dtype, value, peak)
