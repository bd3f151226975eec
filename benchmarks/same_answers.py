"""Whether two versions of perfcost give the same answers: replay one set of requests, compare the answers.

Three steps, each its own command, so that the answers of an older checkout (with its own models) can be
recorded by running this file from the newer one with the older one first on ``PYTHONPATH``:

    python benchmarks/same_answers.py payloads /tmp/payloads.json          # requests from the data
    PYTHONPATH=/path/to/old python benchmarks/same_answers.py answers MODELS /tmp/payloads.json /tmp/old.json
    python benchmarks/same_answers.py answers MODELS /tmp/payloads.json /tmp/new.json
    python benchmarks/same_answers.py compare /tmp/old.json /tmp/new.json [--ignore-versions]

The payloads are a seeded sample of every GEMM source (bundled and public), of each SPEC CPU2017 suite
and of the bundled MLIR programs. They are sent as ``/v1`` batches at two coverages, ``/v2`` infer
requests, single-instance requests (micro-batched), the error cases of each domain in both dialects,
GEMM searches, the listing routes, and ``perfcost score`` over every GEMM row. ``answers`` imports only
``service.app.create_app`` and the settings, which both versions have. ``compare`` reports how many
answers are byte-identical (with ``--ignore-versions``: apart from version names and training times,
for models trained anew) and where the others differ.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import random
import re
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pandas as pd
from fastapi.testclient import TestClient

log = logging.getLogger("same_answers")
GEMM_ROWS, CPU_ROWS, MLIR_ROWS, SINGLE = 150, 60, 80, 12
# What legitimately differs between two trainings of the same data: names and clocks.
VOLATILE = {"version", "model_version", "versions", "trained_at", "training_seconds", "seconds"}
VERSION_NAME = re.compile(r"\d{8}T\d{12}Z")


def _plain(record: dict[str, Any], fields: list[str]) -> dict[str, Any]:
    """A table row as the JSON a user would send: NaN left out, numpy scalars as Python values."""
    out = {}
    for key, value in record.items():
        if key not in fields or value is None or (isinstance(value, float) and math.isnan(value)):
            continue
        out[key] = value.item() if hasattr(value, "item") else value
    return out


def payloads(path: Path) -> None:
    from pydantic import ValidationError

    from service.core.settings import Settings
    from service.domains.cpu.schemas import CpuInstance
    from service.domains.gemm.schemas import GemmInstance
    from training.domains.cpu.data import load_spec_cpu2017
    from training.domains.gemm.data import available_gemm_datasets, load_gemm
    from training.domains.mlir.data import load_mlir

    settings = Settings()
    out: dict[str, dict[str, list[dict[str, Any]]]] = {"gemm": {}, "cpu": {}, "mlir": {}}
    for name in available_gemm_datasets(settings):
        frame = load_gemm(name, settings).frame
        rows = frame.sample(min(GEMM_ROWS, len(frame)), random_state=0).to_dict("records")
        kept = []
        for record in rows:
            instance = _plain(record, list(GemmInstance.model_fields))
            if "quantize_activation" in instance:
                instance["quantize_activation"] = bool(instance["quantize_activation"])
            instance.update({k: int(instance[k]) for k in ("m", "n", "k", "batch") if k in instance})
            try:
                GemmInstance.model_validate(instance)
            except ValidationError:
                continue  # the request a user could not send either
            kept.append(instance)
        out["gemm"][name] = kept
    integers = [k for k, f in CpuInstance.model_fields.items() if "int" in str(f.annotation).lower()]
    for suite, data in load_spec_cpu2017(settings).suites.items():
        kept = []
        for record in data.frame.sample(min(CPU_ROWS, len(data.frame)), random_state=0).to_dict("records"):
            instance = _plain(record, list(CpuInstance.model_fields))
            instance.update({k: int(instance[k]) for k in integers if isinstance(instance.get(k), float)})
            try:
                CpuInstance.model_validate(instance)
            except ValidationError:
                continue
            kept.append(instance)
        out["cpu"][suite] = kept
    texts = load_mlir().frame["mlir"].dropna().tolist()
    random.Random(0).shuffle(texts)
    out["mlir"]["mlir-cpu-local"] = [{"mlir": text} for text in texts[:MLIR_ROWS]]
    path.write_text(json.dumps(out))
    log.info("%s: %s", path, {d: {s: len(v) for s, v in sets.items()} for d, sets in out.items()})


def _tensors(instances: list[dict[str, Any]], metadata: dict[str, Any]) -> list[dict[str, Any]]:
    """Every field all the instances set, as one /v2 input tensor each."""
    return [
        {
            "name": t["name"],
            "shape": [len(instances)],
            "datatype": t["datatype"],
            "data": [i[t["name"]] for i in instances],
        }
        for t in metadata["inputs"]
        if all(t["name"] in i for i in instances)
    ]


def _requests(sets: dict[str, dict[str, list[dict[str, Any]]]], metadata: dict[str, Any]) -> Iterator[tuple]:
    """(key, method, path, body) of every request replayed."""
    for domain, named in sets.items():
        for name, instances in named.items():
            extra = {"suite": name} if domain == "cpu" else {}
            for coverage in (0.5, 0.9):
                body = {"instances": instances, "coverage": coverage, **extra}
                yield f"v1 {domain} {name} {coverage}", "POST", f"/v1/{domain}/predict", body
            infer = {
                "id": "x",
                "parameters": {"coverage": 0.8, **extra},
                "inputs": _tensors(instances, metadata[domain]),
            }
            yield f"v2 {domain} {name}", "POST", f"/v2/models/{domain}/infer", infer
            for i, instance in enumerate(instances[:SINGLE]):
                yield (
                    f"v1 one {domain} {name} {i}",
                    "POST",
                    f"/v1/{domain}/predict",
                    {"instances": [instance], **extra},
                )
    gemm = sets["gemm"]["neusight-gemm"][0]
    cpu = sets["cpu"]["Int_rate"][0]
    bad_gemm = {**gemm, "device": "no such device"}
    yield "err gemm device", "POST", "/v1/gemm/predict", {"instances": [bad_gemm]}
    yield (
        "err v2 gemm device",
        "POST",
        "/v2/models/gemm/infer",
        {"inputs": _tensors([bad_gemm], metadata["gemm"])},
    )
    yield "err cpu suite", "POST", "/v1/cpu/predict", {"instances": [cpu], "suite": "nope"}
    suite = {"parameters": {"suite": "nope"}, "inputs": _tensors([cpu], metadata["cpu"])}
    yield "err v2 cpu suite", "POST", "/v2/models/cpu/infer", suite
    spec = {"instances": [{**cpu, "cores_per_socket": 100_000}], "suite": "Int_rate"}
    yield "err cpu spec", "POST", "/v1/cpu/predict", spec
    yield "err mlir", "POST", "/v1/mlir/predict", {"instances": [{"mlir": "hello"}]}
    text = {"inputs": [{"name": "mlir", "shape": [1], "datatype": "BYTES", "data": ["hello"]}]}
    yield "err v2 mlir", "POST", "/v2/models/mlir/infer", text
    yield "err mlir big", "POST", "/v1/mlir/predict", {"instances": [{"mlir": "x" * (2 << 20)}]}
    workloads = (
        {"m": 4096, "n": 4096, "k": 4096, "dtype": "bfloat16"},
        {"m": 16, "n": 8192, "k": 8192, "dtype": "float8_e4m3fn", "quantize_activation": True},
    )
    for workload in workloads:
        for objective in ("time", "energy", "cost"):
            body = {"workload": workload, "objective": objective}
            yield f"search {workload} {objective}", "POST", "/v1/gemm/search", body


LISTINGS = (
    "/v1/models",
    "/v1/devices",
    "/v1/cpu/benchmarks",
    "/readyz",
    "/healthz",
    "/v2",
    "/v2/health/ready",
)


def answers(model_dir: Path, payload_file: Path, out: Path) -> None:
    from service.app import create_app

    try:
        from service.core.settings import Settings
    except ImportError:  # a checkout from before the core package
        from service.settings import Settings  # type: ignore[no-redef]

    sets = json.loads(payload_file.read_text())
    settings = Settings(model_dir=model_dir, train_missing=False)
    recorded: dict[str, Any] = {}
    with TestClient(create_app(settings)) as client:
        paths = [*LISTINGS, *(f"/v2/models/{d}" for d in ("gemm", "cpu", "mlir", "nope"))]
        for path in paths:
            answer = client.get(path)
            recorded[f"GET {path}"] = {"status": answer.status_code, "body": answer.json()}
        metadata = {d: client.get(f"/v2/models/{d}").json() for d in ("gemm", "cpu", "mlir")}
        for key, _, path, body in _requests(sets, metadata):
            answer = client.post(path, json=body)
            recorded[key] = {"status": answer.status_code, "body": answer.json()}
    recorded["score"] = _scored(model_dir, [i for instances in sets["gemm"].values() for i in instances])
    out.write_text(json.dumps(recorded, sort_keys=True))
    log.info("%s: %d answers", out, len(recorded))


def _scored(model_dir: Path, rows: list[dict[str, Any]]) -> Any:
    """``perfcost score`` over the rows, run as a user runs it, as a JSON table."""
    with tempfile.TemporaryDirectory() as tmp:
        table, folder = Path(tmp) / "table.csv", Path(tmp) / "scored"
        pd.DataFrame(rows).to_csv(table, index=False)
        command = [
            sys.executable,
            "-c",
            "from training.cli import app; app()",
            "score",
            str(table),
            str(folder),
        ]
        env = {**os.environ, "PERFCOST_MODEL_DIR": str(model_dir)}
        subprocess.run([*command, "--workers", "1"], env=env, check=True, capture_output=True)
        scored = pd.read_parquet(folder)
        return json.loads(scored.to_json(orient="split", double_precision=15))


def _differences(a: Any, b: Any, ignore: bool, path: str = "") -> Iterator[str]:
    if ignore and isinstance(a, str) and isinstance(b, str):
        a, b = VERSION_NAME.sub("V", a), VERSION_NAME.sub("V", b)
    if type(a) is not type(b):
        yield path
    elif isinstance(a, dict):
        for key in sorted(set(a) | set(b)):
            if ignore and key in VOLATILE:
                continue
            if key not in a or key not in b:
                yield f"{path}.{key}"
            else:
                yield from _differences(a[key], b[key], ignore, f"{path}.{key}")
    elif isinstance(a, list):
        if len(a) != len(b):
            yield f"{path}[len]"
        else:
            for i, (x, y) in enumerate(zip(a, b, strict=True)):
                yield from _differences(x, y, ignore, f"{path}[{i}]")
    elif a != b:
        yield path


def compare(first: Path, second: Path, ignore_versions: bool) -> int:
    a, b = json.loads(first.read_text()), json.loads(second.read_text())
    differing = {}
    for key in sorted(set(a) | set(b)):
        where = list(_differences(a.get(key), b.get(key), ignore_versions))
        if where:
            differing[key] = where[:3]
    floats = sum(1 for _ in re.finditer(r"-?\d+\.\d+(?:e-?\d+)?", first.read_text()))
    how = "apart from version names and training times" if ignore_versions else "byte for byte"
    log.info(
        "%d of %d answers identical %s (%d numbers with a fraction)",
        len(a) - len(differing),
        len(a),
        how,
        floats,
    )
    for key, where in differing.items():
        log.info("differs: %s at %s", key, ", ".join(where))
    return 1 if differing else 0


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    steps = parser.add_subparsers(dest="step", required=True)
    steps.add_parser("payloads").add_argument("out", type=Path)
    record = steps.add_parser("answers")
    for name in ("model_dir", "payloads", "out"):
        record.add_argument(name, type=Path)
    check = steps.add_parser("compare")
    check.add_argument("first", type=Path)
    check.add_argument("second", type=Path)
    check.add_argument("--ignore-versions", action="store_true")
    args = parser.parse_args()
    if args.step == "payloads":
        payloads(args.out)
    elif args.step == "answers":
        answers(args.model_dir, args.payloads, args.out)
    else:
        sys.exit(compare(args.first, args.second, args.ignore_versions))


if __name__ == "__main__":
    main()
