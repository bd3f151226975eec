"""One chunk of a configuration table → validated GEMM instances → the API's predictions as columns.

Rows are validated one by one by the API's own schema
(:class:`~service.domains.gemm.schemas.GemmInstance`) and predicted by the API's own columnar core
(:func:`service.domains.gemm.runtime.predict_columns`), so a table row gets exactly what ``POST
/v1/gemm/predict`` answers for it. Tables carry no types a schema can trust (CSV is text; a Parquet
integer column with gaps is float), so each column is first turned into the Python values a JSON request
would hold; anything that does not convert is passed on as it is, for the schema to reject with its own
message.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
from pydantic import TypeAdapter, ValidationError

from service.core.devices import DeviceCatalog, DeviceSpec
from service.core.model import TabularModel
from service.domains.gemm import runtime as gemm
from service.domains.gemm.schemas import GemmInstance
from training.core.domain import Chunk
from training.core.report import parse_boolean

# Quantities with an interval, as the response names them; each becomes three columns.
INTERVAL_COLUMNS = ("runtime_ms", "power_w", "energy_j", "utilization", "cost_usd", "co2_g")
ROOFLINE_COLUMNS = ("flops", "bytes", "peak_gflops", "bandwidth_gbps")
ROOFLINE_TEXT_COLUMNS = ("peak_unit", "peak_fallback")


def field_kinds() -> dict[str, str]:
    """Each table-able field of a GEMM instance and its JSON type (integer, number, boolean or string),
    read from the schema itself. Inline device specs are nested objects and have no place in a flat table."""
    properties = GemmInstance.model_json_schema()["properties"]
    kinds = {}
    for name, spec in properties.items():
        types = [spec.get("type")] + [option.get("type") for option in spec.get("anyOf", [])]
        kind = next((t for t in types if t in ("integer", "number", "boolean", "string")), None)
        if kind is not None:
            kinds[name] = kind
    return kinds


KINDS = field_kinds()
INSTANCES = TypeAdapter(list[GemmInstance])
REQUIRED = ("m", "n", "k", "device")


class TableError(ValueError):
    """The table cannot be scored at all (wrong columns); the message names them."""


def check_columns(columns: list[str]) -> None:
    unknown = [c for c in columns if c not in KINDS]
    if "device_spec" in unknown:
        raise TableError(
            "column 'device_spec': inline device specs do not fit a table; describe the device in a JSON or "
            "YAML file in PERFCOST_DEVICE_DIR and name it in the 'device' column"
        )
    if unknown:
        raise TableError(f"columns {unknown} are not GEMM instance fields; allowed: {sorted(KINDS)}")
    missing = [c for c in REQUIRED if c not in columns]
    if missing:
        raise TableError(f"required columns {missing} are missing")


def _python_values(series: pd.Series, kind: str) -> list[Any]:
    """A column as JSON-like Python values: None where empty, int / float / str where the value is one."""
    original = series.astype(object).tolist()
    empty = series.isna().to_numpy()
    if kind == "string":
        return [None if e else v for v, e in zip(original, empty, strict=True)]
    if kind == "boolean":
        return [None if e else _boolean(v) for v, e in zip(original, empty, strict=True)]
    numeric = pd.to_numeric(series, errors="coerce").to_numpy(dtype=float)
    convert = np.isfinite(numeric)
    if kind == "integer":
        # Beyond 2**53 a float no longer holds every integer: left as it is, for the schema to refuse.
        convert &= (numeric == np.floor(numeric)) & (np.abs(numeric) < 2.0**53)
    out: list[Any] = []
    for value, number, ok, is_empty in zip(original, numeric.tolist(), convert, empty, strict=True):
        if is_empty:
            out.append(None)
        elif ok:
            out.append(int(number) if kind == "integer" else number)
        else:
            out.append(value)
    return out


def _boolean(value: Any) -> Any:
    """A boolean where the cell spells one; otherwise the value as it is, for the schema to refuse."""
    parsed = parse_boolean(value)
    return value if parsed is None else parsed


def _reason(errors: list[Any]) -> tuple[str, str]:
    """One row's schema errors as the fields and the reasons (each naming its field)."""
    fields, reasons = [], []
    for error in errors:
        field = ".".join(str(part) for part in error["loc"][1:]) or "row"
        fields.append(field)
        reasons.append(f"{field}: {error['msg']}")
    return ", ".join(fields), "; ".join(reasons)


def _as_json(reasons: list[dict[str, str]]) -> list[str]:
    """Each row's reasons as the JSON object the API answers: ``{}`` where there are none (never null, which
    a reader would get back as NaN). Rows of one device share theirs, so each distinct set is encoded once."""
    encoded: dict[tuple[tuple[str, str], ...], str] = {}
    out: list[str] = []
    for row in reasons:
        key = tuple(row.items())
        if key not in encoded:
            encoded[key] = json.dumps(row)
        out.append(encoded[key])
    return out


ARROW_TYPES = {"integer": pa.int64(), "number": pa.float64(), "boolean": pa.bool_(), "string": pa.string()}


def output_schema(given: list[str]) -> pa.Schema:
    """The scored table's columns: the row number, the given fields as validated, the predictions (null
    where the API gives null), the roofline figures, why a target is unavailable, and the OOD flags."""
    fields = [pa.field("row", pa.int64(), nullable=False)]
    fields += [pa.field(c, ARROW_TYPES[KINDS[c]]) for c in given]
    for name in INTERVAL_COLUMNS:
        fields += [pa.field(f"{name}{suffix}", pa.float64()) for suffix in ("", "_low", "_high")]
    fields += [pa.field(f"roofline_{name}", pa.float64()) for name in ROOFLINE_COLUMNS]
    fields += [pa.field(f"roofline_{name}", pa.string()) for name in ROOFLINE_TEXT_COLUMNS]
    fields += [
        pa.field("unavailable", pa.string(), nullable=False),
        pa.field("out_of_distribution", pa.bool_()),
        pa.field("ood_reasons", pa.list_(pa.string())),
    ]
    return pa.schema(fields)


def _devices(
    instances: list[GemmInstance], catalog: DeviceCatalog, trained: dict[str, DeviceSpec]
) -> tuple[list[str | None], dict[str, DeviceSpec], dict[str, str]]:
    """Each row's canonical device name (None: unknown), the specs, and the reason per unknown name."""
    resolved: dict[str, str | None] = {}
    specs: dict[str, DeviceSpec] = {}
    unknown: dict[str, str] = {}
    for name in {inst.device for inst in instances if inst.device is not None}:
        try:
            names, found = gemm.resolve_names([name], catalog, trained)
        except gemm.UnknownDeviceError as exc:
            resolved[name], unknown[name] = None, str(exc)
            continue
        resolved[name] = names[0]
        specs.update(found)
    return [resolved[inst.device or ""] for inst in instances], specs, unknown


def _validated(frame: pd.DataFrame, first_row: int) -> tuple[list[int], list[GemmInstance], list[Any]]:
    columns = list(frame.columns)
    values = [_python_values(frame[c], KINDS[c]) for c in columns]
    records = [
        {c: v for c, v in zip(columns, row, strict=True) if v is not None}
        for row in zip(*values, strict=True)
    ]
    # The whole chunk at once (pydantic validates a list faster than its items one by one); where rows
    # fail, their errors say which, and the rest is validated again without them.
    rejected: dict[int, list[Any]] = {}
    try:
        instances = INSTANCES.validate_python(records)
    except ValidationError as exc:
        for error in exc.errors():
            rejected.setdefault(int(error["loc"][0]), []).append(error)
        instances = INSTANCES.validate_python([r for i, r in enumerate(records) if i not in rejected])
    rows = [first_row + i for i in range(len(records)) if i not in rejected]
    errors = [(first_row + i, *_reason(found)) for i, found in sorted(rejected.items())]
    return rows, instances, errors


def score_chunk(
    frame: pd.DataFrame, first_row: int, coverage: float, model: TabularModel, catalog: DeviceCatalog
) -> Chunk:
    """Validate and predict ``frame``'s rows (numbered from ``first_row``)."""
    rows, instances, errors = _validated(frame, first_row)
    names, specs, unknown = _devices(instances, catalog, gemm.model_devices(model))
    errors += [
        (rows[i], "device", unknown[inst.device or ""])
        for i, inst in enumerate(instances)
        if names[i] is None
    ]
    errors.sort()
    keep = [i for i, name in enumerate(names) if name is not None]
    instances = [instances[i] for i in keep]
    given = list(frame.columns)
    data: dict[str, Any] = {"row": [rows[i] for i in keep]}
    data |= {col: [getattr(inst, col) for inst in instances] for col in given}
    config = {
        col: data[col] if col in data else [GemmInstance.model_fields[col].default] * len(instances)
        for col in gemm.CONFIG_FIELDS
    }
    config["device"] = [names[i] for i in keep]
    prices = gemm.optional_floats([inst.price_per_hour_usd for inst in instances])
    grid = gemm.optional_floats([inst.grid_gco2_per_kwh for inst in instances])
    schema = output_schema(given)
    if not instances:
        return Chunk(schema.empty_table(), errors)
    columns = gemm.predict_columns(config, specs, coverage, model, prices, grid)
    for name in INTERVAL_COLUMNS:
        bounds = columns.values[name]
        data[name], data[f"{name}_low"], data[f"{name}_high"] = bounds.value, bounds.low, bounds.high
    for name in ROOFLINE_COLUMNS:
        data[f"roofline_{name}"] = columns.roofline[name]
    for name in ROOFLINE_TEXT_COLUMNS:
        data[f"roofline_{name}"] = columns.roofline[name].tolist()
    data["unavailable"] = _as_json(columns.unavailable)
    data["out_of_distribution"] = [bool(r) for r in columns.ood_reasons]
    data["ood_reasons"] = columns.ood_reasons
    arrays = [
        pa.array(data[f.name], type=f.type, from_pandas=isinstance(data[f.name], np.ndarray)) for f in schema
    ]
    return Chunk(pa.Table.from_arrays(arrays, schema=schema), errors)
