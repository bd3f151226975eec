"""CPU request/response schemas (``POST /v1/cpu/predict``, ``GET /v1/cpu/benchmarks``).

An instance is a CPU system described the way a SPEC CPU2017 result describes it: exactly the fields
:mod:`service.domains.cpu.features` consumes (``SPEC_FIELDS``), nothing else. Counts are integers; clocks,
sizes and rates are numbers. The fields that identify the system and set its scale are required; every other
one may be left out (or null), which the model treats as unknown.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, Field, StrictFloat, StrictStr, StringConstraints

from service.core.schemas import Int, Interval, ModelRef, OptionalInt, Strict
from service.domains.cpu.features import Suite

MAX_TEXT = 200
MAX_KB = 1e12  # 1 PB: far past any machine; larger sizes are input errors, not predictions.


Text = Annotated[StrictStr, StringConstraints(min_length=1, max_length=MAX_TEXT)]


class CpuInstance(Strict):
    # Identity and scale (required).
    vendor: Text = Field(
        description="CPU vendor, e.g. Intel, AMD; a vendor never seen in training is flagged OOD"
    )
    model_name: Text = Field(
        description="CPU model as SPEC writes it, e.g. 'Xeon Platinum 8260L', 'EPYC 7742'"
    )
    nominal_mhz: StrictFloat = Field(gt=0, le=20_000, description="Base clock (MHz)")
    cores_per_socket: Int = Field(gt=0, le=4096)
    sockets: Int = Field(gt=0, le=1024)
    # Everything else: optional, unknown when missing.
    max_mhz: StrictFloat | None = Field(default=None, gt=0, le=20_000, description="Max boost clock (MHz)")
    cpus: OptionalInt = Field(default=None, gt=0, le=1 << 20, description="Logical CPUs enabled")
    threads_per_core: OptionalInt = Field(default=None, gt=0, le=16)
    numas: OptionalInt = Field(default=None, gt=0, le=4096, description="NUMA nodes")
    l1d_cache_kb: StrictFloat | None = Field(default=None, ge=0, le=MAX_KB, description="L1 data, per core")
    l1i_cache_kb: StrictFloat | None = Field(default=None, ge=0, le=MAX_KB, description="L1 instr., per core")
    l2_cache_kb: StrictFloat | None = Field(default=None, ge=0, le=MAX_KB, description="L2 per core")
    l3_cache_kb: StrictFloat | None = Field(default=None, ge=0, le=MAX_KB, description="L3 per socket")
    mem_kb: StrictFloat | None = Field(default=None, gt=0, le=MAX_KB, description="Total memory (KB)")
    mem_channels: OptionalInt = Field(default=None, gt=0, le=1 << 16, description="Populated DIMMs")
    channel_kb: StrictFloat | None = Field(default=None, gt=0, le=MAX_KB, description="Size of one DIMM")
    mem_data_rate: StrictFloat | None = Field(default=None, gt=0, le=100_000, description="Memory MT/s")
    storage_gb: StrictFloat | None = Field(default=None, ge=0, le=1e9)
    os_vid: StrictFloat | None = Field(
        default=None, ge=0, le=1000, description="OS release number, e.g. 12.4"
    )
    threads_or_copies: OptionalInt = Field(
        default=None, gt=0, le=1 << 20, description="Copies (rate suites) or threads (speed suites) run"
    )
    hardware_vendor: Text | None = Field(default=None, description="System vendor, e.g. Dell")
    test_sponsor: Text | None = Field(default=None, description="Who ran the benchmark")
    arch: Text | None = Field(default=None, description="Instruction set, e.g. x86_64")
    os_name: Text | None = Field(default=None, description="OS family, e.g. SLES, RHEL, Ubuntu")
    os: Text | None = Field(default=None, description="Full OS description")
    compiler: Text | None = Field(
        default=None, description="SPEC compiler string, e.g. 'C/C++: Version 19.0.1.144 of Intel C/C++'"
    )
    parallel: Text | None = Field(default=None, description="SPEC's 'Parallel' field: Yes / No")
    file_system: Text | None = Field(default=None, description="e.g. xfs, ext4")


class CpuPredictRequest(Strict):
    instances: list[CpuInstance] = Field(min_length=1, description="CPU systems to predict")
    suite: Suite = Field(description="SPEC CPU2017 suite (GET /v1/cpu/benchmarks lists those loaded)")
    coverage: StrictFloat = Field(
        default=0.9, gt=0.0, lt=1.0, description="Coverage of the prediction intervals"
    )


class CpuPrediction(BaseModel):
    benchmarks: dict[str, Interval | None] = Field(
        description="SPEC ratio per benchmark of the suite (null: see 'unavailable')"
    )
    score: Interval | None = Field(
        description="Suite score: geometric mean of the benchmark ratios, with the direct score model's "
        "calibrated interval half-width (log scale) around it"
    )
    unavailable: dict[str, str] = Field(default_factory=dict, description="Why a value is null")
    seen_in_training: bool = Field(description="The CPU model was in the training data (narrower intervals)")
    out_of_distribution: bool
    ood_reasons: list[str]


class CpuPredictResponse(ModelRef):
    suite: str
    predictions: list[CpuPrediction]


class CpuBenchmarksResponse(ModelRef):
    suites: dict[str, list[str]] = Field(description="Suite name → its benchmarks, in the model's order")
    score_method: str = Field(description="How a suite score is computed from the benchmark predictions")
