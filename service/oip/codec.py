"""Open Inference Protocol v2 (the KServe / Triton / MLServer REST dialect): its wire schemas, and the
mapping between its column tensors and a domain's instances and prediction rows.

Nothing here is written per domain. Input tensors are the fields of the domain's instance schema (one
column per field, ``[N]`` or ``[N, 1]``), typed from its JSON schema; output tensors are the fields of its
prediction schema, an interval becoming ``X``, ``X_low`` and ``X_high``. The columns are turned back into
rows and validated by the native request schema, so both dialects accept exactly the same instances.

Triton's binary tensor data extension is read and written here too: a body of a JSON header
(``Inference-Header-Content-Length`` bytes) followed by each binary tensor's bytes, little-endian, BYTES
elements each prefixed with their 4-byte length.
"""

from __future__ import annotations

import json
import math
import struct
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from functools import cache
from typing import Annotated, Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, StrictInt, StrictStr, ValidationError

from service.core.schemas import ErrorDetail

HEADER_LENGTH = "Inference-Header-Content-Length"
EXTENSIONS = ("binary_tensor_data",)
# Fixed-size datatypes this dialect reads and writes, as little-endian numpy dtypes.
FIXED = {"BOOL": np.dtype("?"), "INT64": np.dtype("<i8"), "FP64": np.dtype("<f8")}
# Request parameters the protocol or tritonclient may send that mean nothing to these models.
PROTOCOL_PARAMETERS = frozenset(
    {"binary_data_output", "sequence_id", "sequence_start", "sequence_end", "priority", "timeout", "headers"}
)
TRITON_PREFIX = "triton_"
INTERVAL_PARTS = (("", "value"), ("_low", "low"), ("_high", "high"))
NAN_NOTE = "NaN where the native route gives null (JSON data: null); the 'unavailable' output says why"
MAX_REPORTED = 10


class V2Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


Dim = Annotated[StrictInt, Field(ge=0)]


class RequestInput(V2Model):
    name: StrictStr
    shape: list[Dim] = Field(min_length=1, max_length=2, description="[N] or [N, 1]")
    datatype: StrictStr = Field(description="BOOL, INT64, FP64 or BYTES, as the model metadata lists it")
    parameters: dict[str, Any] | None = Field(
        default=None, description="binary_data_size: the tensor's bytes follow the JSON header"
    )
    data: list[Any] | None = Field(default=None, description="Row-major, flat or nested; absent if binary")


class RequestOutput(V2Model):
    name: StrictStr
    parameters: dict[str, Any] | None = Field(default=None, description="binary_data: true for raw bytes")


class InferRequest(V2Model):
    id: StrictStr | None = None
    parameters: dict[str, Any] | None = Field(
        default=None, description="The native request's fields besides the instances (coverage, ...)"
    )
    inputs: list[RequestInput] = Field(min_length=1)
    outputs: list[RequestOutput] | None = Field(default=None, description="Default: every output")


class ResponseOutput(BaseModel):
    name: str
    datatype: str
    shape: list[int]
    parameters: dict[str, Any] | None = None
    data: list[Any] | None = None


class InferResponse(BaseModel):
    model_name: str
    model_version: str = Field(description="The registry's served version, the native 'version'")
    id: str
    outputs: list[ResponseOutput]


class MetadataTensor(BaseModel):
    name: str
    datatype: str
    shape: list[int]
    parameters: dict[str, Any] = Field(default_factory=dict)


class ModelMetadata(BaseModel):
    name: str
    versions: list[str]
    platform: str
    inputs: list[MetadataTensor]
    outputs: list[MetadataTensor]
    parameters: dict[str, Any] = Field(default_factory=dict)


class ServerMetadata(BaseModel):
    name: str
    version: str
    extensions: list[str]


class Liveness(BaseModel):
    live: bool


class Readiness(BaseModel):
    ready: bool
    name: str | None = None


class V2Error(BaseModel):
    """OIP's error body; ``detail`` carries the same problems in the shape every other route answers."""

    error: str
    detail: list[ErrorDetail]


class TensorError(ValueError):
    """A request that cannot be served: the status and each problem as (field, reason); reasons name the
    tensor, row or parameter, since OIP clients show only the joined message."""

    def __init__(self, problems: Sequence[tuple[str, str]], status: int = 400) -> None:
        super().__init__("; ".join(reason for _, reason in problems))
        self.problems = list(problems)
        self.status = status


def bad(field: str, reason: str, status: int = 400) -> TensorError:
    return TensorError([(field, reason)], status)


def error_body(problems: Sequence[tuple[str, str]]) -> dict[str, Any]:
    return {
        "error": "; ".join(reason for _, reason in problems),
        "detail": [{"field": field, "reason": reason} for field, reason in problems],
    }


# --- Tensors from schemas -------------------------------------------------------------------------------


@dataclass(frozen=True)
class InputSpec:
    name: str
    datatype: str
    required: bool
    default: Any = None
    description: str = ""
    json_text: bool = False  # a nested object: each BYTES element is its JSON text

    def metadata(self) -> MetadataTensor:
        parameters: dict[str, Any] = {"required": self.required}
        if not self.required:
            parameters["default"] = self.default
        if self.description:
            parameters["description"] = self.description
        if self.json_text:
            parameters["content"] = "JSON text of the object, per element"
        if self.datatype == "FP64" and not self.required:
            parameters["nan"] = "NaN means null (not given) for this row"
        return MetadataTensor(name=self.name, datatype=self.datatype, shape=[-1], parameters=parameters)


@dataclass(frozen=True)
class OutputSpec:
    name: str
    datatype: str
    path: tuple[str, ...]  # keys of the value in a prediction row
    part: str | None = None  # of an interval: "value", "low" or "high"
    description: str = ""

    def metadata(self) -> MetadataTensor:
        parameters = {"description": self.description} if self.description else {}
        return MetadataTensor(name=self.name, datatype=self.datatype, shape=[-1], parameters=parameters)


def _non_null(prop: Mapping[str, Any]) -> tuple[Mapping[str, Any], bool]:
    """The schema of a field without its ``null`` alternative, and whether it had one."""
    options = prop.get("anyOf")
    if options is None:
        return prop, False
    kept = [o for o in options if o.get("type") != "null"]
    return (kept[0] if len(kept) == 1 else {}), len(kept) < len(options)


def _resolved(prop: Mapping[str, Any], defs: Mapping[str, Any]) -> Mapping[str, Any]:
    ref = prop.get("$ref")
    return defs[ref.rsplit("/", 1)[-1]] if isinstance(ref, str) else prop


def _is_interval(schema: Mapping[str, Any]) -> bool:
    return set(schema.get("properties", {})) == {"value", "low", "high"}


@cache
def input_specs(instance: type[BaseModel]) -> tuple[InputSpec, ...]:
    schema = instance.model_json_schema()
    required = set(schema.get("required", ()))
    specs = []
    for name, prop in schema["properties"].items():
        inner, _ = _non_null(prop)
        kind = inner.get("type")
        datatype = {"integer": "INT64", "number": "FP64", "boolean": "BOOL", "string": "BYTES"}.get(
            kind or ""
        )
        description = prop.get("description", inner.get("description", ""))
        specs.append(
            InputSpec(
                name,
                datatype or "BYTES",
                name in required,
                prop.get("default"),
                description,
                json_text=datatype is None,
            )
        )
    return tuple(specs)


def dynamic_fields(prediction: type[BaseModel]) -> tuple[str, ...]:
    """Fields whose keys name outputs (a mapping of intervals, e.g. CPU benchmarks): known per model."""
    schema = prediction.model_json_schema()
    defs = schema.get("$defs", {})
    found = []
    for name, prop in schema["properties"].items():
        inner = _resolved(_non_null(prop)[0], defs)
        values = inner.get("additionalProperties")
        if isinstance(values, dict) and _is_interval(_resolved(_non_null(values)[0], defs)):
            found.append(name)
    return tuple(found)


@cache
def output_specs(
    prediction: type[BaseModel], keys: tuple[tuple[str, tuple[str, ...]], ...] = ()
) -> tuple[OutputSpec, ...]:
    """The prediction schema's fields as output tensors; ``keys`` lists the keys of each dynamic field."""
    schema = prediction.model_json_schema()
    return tuple(_outputs(schema, schema.get("$defs", {}), (), "", dict(keys)))


def _interval_outputs(name: str, path: tuple[str, ...], description: str) -> Iterator[OutputSpec]:
    for suffix, part in INTERVAL_PARTS:
        note = f"{description}; {NAN_NOTE}" if description else NAN_NOTE
        yield OutputSpec(name + suffix, "FP64", path, part, f"{part} of the interval: {note}")


def _outputs(
    schema: Mapping[str, Any],
    defs: Mapping[str, Any],
    path: tuple[str, ...],
    prefix: str,
    keys: Mapping[str, Sequence[str]],
) -> Iterator[OutputSpec]:
    for field, prop in schema.get("properties", {}).items():
        where, name = (*path, field), prefix + field
        inner, nullable = _non_null(prop)
        target = _resolved(inner, defs)
        description = prop.get("description", target.get("description", ""))
        values = target.get("additionalProperties")
        if _is_interval(target):
            yield from _interval_outputs(name, where, description)
        elif "properties" in target:
            yield from _outputs(target, defs, where, name + "_", keys)
        elif isinstance(values, dict) and _is_interval(_resolved(_non_null(values)[0], defs)):
            for key in keys.get(field, ()):
                yield from _interval_outputs(key, (*where, key), f"{field} {key}")
        else:
            yield OutputSpec(name, _output_datatype(target, nullable), where, None, _described(target, prop))


def _output_datatype(schema: Mapping[str, Any], nullable: bool) -> str:
    kind = schema.get("type")
    if kind == "boolean" and not nullable:
        return "BOOL"
    if kind == "integer" and not nullable:
        return "INT64"
    return "FP64" if kind in ("integer", "number") else "BYTES"


def _described(schema: Mapping[str, Any], prop: Mapping[str, Any]) -> str:
    description = str(prop.get("description", schema.get("description", "")))
    joined = {"array": "elements joined with '; '", "object": "'key: value' pairs joined with '; '"}
    how = joined.get(str(schema.get("type")))
    return f"{description} ({how})" if description and how else how or description


def _text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, list):
        return "; ".join(_text(v) for v in value)
    if isinstance(value, dict):
        return "; ".join(f"{k}: {_text(v)}" for k, v in value.items())
    return str(value)


def output_column(spec: OutputSpec, rows: Sequence[Mapping[str, Any]]) -> list[Any]:
    """One output's values, row by row, in the tensor's datatype (FP64: NaN for null)."""
    column: list[Any] = []
    for row in rows:
        value: Any = row
        for key in spec.path:
            value = value.get(key) if isinstance(value, dict) else None
        if spec.part is not None and value is not None:
            value = value[spec.part]
        if spec.datatype == "FP64":
            column.append(math.nan if value is None else float(value))
        elif spec.datatype == "BYTES":
            column.append(_text(value))
        else:
            column.append(value)
    return column


# --- Requests -------------------------------------------------------------------------------------------


def split_body(body: bytes, header_length: str | None) -> tuple[bytes, bytes]:
    """The JSON header and the binary tensor data after it (none without the length header)."""
    if header_length is None:
        return body, b""
    text = header_length.strip()
    if not text.isdigit() or int(text) > len(body):
        raise bad(
            "headers.inference-header-content-length",
            f"{HEADER_LENGTH} {header_length!r} is not a byte count within the {len(body)}-byte body",
        )
    return body[: int(text)], body[int(text) :]


def _where(loc: Sequence[Any], data: Any) -> str:
    """A validation error's location, naming the tensor (``input 'm': shape``) where the body names it."""
    path = ".".join(str(p) for p in loc) or "body"
    if len(loc) >= 2 and loc[0] in ("inputs", "outputs") and isinstance(loc[1], int):
        try:
            name = data[loc[0]][loc[1]]["name"]
        except (KeyError, IndexError, TypeError):
            return path
        rest = ".".join(str(p) for p in loc[2:])
        return f"{loc[0][:-1]} {name!r}" + (f": {rest}" if rest else "")
    return path


def parse_request(data: Any) -> InferRequest:
    try:
        return InferRequest.model_validate(data)
    except ValidationError as exc:
        problems = [
            (".".join(str(p) for p in e["loc"]) or "body", f"{_where(e['loc'], data)}: {e['msg']}")
            for e in exc.errors(include_url=False)[:MAX_REPORTED]
        ]
        raise TensorError(problems) from exc


def check_inputs(request: InferRequest, specs: Sequence[InputSpec], model: str) -> int:
    """The row count N, once every input is known to the model with its datatype and an [N] / [N, 1]
    shape agreeing with the others'; the required inputs present."""
    by_name = {s.name: s for s in specs}
    rows: tuple[int, str] | None = None
    seen: set[str] = set()
    for tensor in request.inputs:
        field, label = f"inputs.{tensor.name}", f"input {tensor.name!r}"
        spec = by_name.get(tensor.name)
        if spec is None:
            known = ", ".join(by_name)
            raise bad(field, f"{label} is not an input of model {model!r} (its inputs: {known})")
        if tensor.name in seen:
            raise bad(field, f"{label} is given twice")
        seen.add(tensor.name)
        if tensor.datatype != spec.datatype:
            raise bad(field, f"{label} has datatype {tensor.datatype!r}, expected {spec.datatype}")
        if len(tensor.shape) == 2 and tensor.shape[1] != 1:
            raise bad(field, f"{label} has shape {tensor.shape}: expected [N] or [N, 1], one value per row")
        unknown = set(tensor.parameters or {}) - {"binary_data_size"}
        if unknown:
            raise bad(field, f"{label}: parameter(s) {', '.join(sorted(unknown))} not supported")
        if rows is None:
            rows = (tensor.shape[0], tensor.name)
        elif tensor.shape[0] != rows[0]:
            raise bad(
                field,
                f"{label} has {tensor.shape[0]} rows (shape {tensor.shape}); input {rows[1]!r}: {rows[0]}",
            )
    missing = [s for s in specs if s.required and s.name not in seen]
    if missing:
        raise TensorError(
            [(f"inputs.{s.name}", f"input {s.name!r} ({s.datatype}) is required") for s in missing]
        )
    return rows[0] if rows is not None else 0


def _binary_inputs(request: InferRequest, binary: bytes) -> dict[str, bytes]:
    """Each binary input's bytes, cut in the inputs' order from what follows the JSON header."""
    raw: dict[str, bytes] = {}
    offset = 0
    for tensor in request.inputs:
        field, label = f"inputs.{tensor.name}", f"input {tensor.name!r}"
        size = (tensor.parameters or {}).get("binary_data_size")
        if size is None:
            if tensor.data is None:
                raise bad(field, f"{label} has neither 'data' nor parameters.binary_data_size")
            continue
        if isinstance(size, bool) or not isinstance(size, int) or size < 0:
            raise bad(field, f"{label}: binary_data_size {size!r} is not a byte count")
        if tensor.data is not None:
            raise bad(field, f"{label} has both 'data' and parameters.binary_data_size")
        if offset + size > len(binary):
            raise bad(
                field,
                f"{label} declares {size} bytes of binary data, but {len(binary) - offset} remain after "
                f"the JSON header ({HEADER_LENGTH} missing or wrong?)",
            )
        raw[tensor.name] = binary[offset : offset + size]
        offset += size
    if offset != len(binary):
        raise bad("body", f"{len(binary) - offset} bytes follow the inputs' declared binary data")
    return raw


def _flattened(data: list[Any], depth: int) -> list[Any] | None:
    """Row-major elements of flat or nested data; None if nested deeper than the shape."""
    values = data
    for _ in range(depth - 1):
        if not all(isinstance(v, list) for v in values):
            break
        values = [x for v in values for x in v]
    return None if any(isinstance(v, list) for v in values) else values


def _bytes_elements(raw: bytes, label: str, field: str) -> list[bytes]:
    out: list[bytes] = []
    offset = 0
    while offset < len(raw):
        if offset + 4 > len(raw):
            raise bad(field, f"{label}: binary BYTES data ends inside the length of element {len(out)}")
        (size,) = struct.unpack_from("<I", raw, offset)
        offset += 4
        if offset + size > len(raw):
            raise bad(field, f"{label}: element {len(out)} declares {size} bytes, {len(raw) - offset} remain")
        out.append(raw[offset : offset + size])
        offset += size
    return out


def _element(value: Any, spec: InputSpec, label: str, field: str, row: int) -> Any:
    """A tensor element as the instance schema reads it: text decoded, NaN as null (FP64 has no null)."""
    if isinstance(value, bytes):
        try:
            value = value.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise bad(f"{field}.{row}", f"{label} row {row}: not UTF-8 text ({exc.reason})") from exc
    if spec.json_text and value is not None:
        if not isinstance(value, str):
            raise bad(f"{field}.{row}", f"{label} row {row}: expected the JSON text of an object")
        try:
            return json.loads(value)
        except ValueError as exc:
            raise bad(f"{field}.{row}", f"{label} row {row}: not JSON ({exc})") from exc
    if spec.datatype == "FP64" and isinstance(value, int | float) and not isinstance(value, bool):
        return None if math.isnan(value) else float(value)
    return value


def _values(tensor: RequestInput, spec: InputSpec, raw: bytes | None) -> list[Any]:
    field, label = f"inputs.{tensor.name}", f"input {tensor.name!r}"
    count = math.prod(tensor.shape)
    values: list[Any]
    if raw is None:
        flat = _flattened(tensor.data or [], len(tensor.shape))
        if flat is None:
            raise bad(field, f"{label}: data is nested deeper than its shape {tensor.shape}")
        values = flat
    elif spec.datatype == "BYTES":
        values = _bytes_elements(raw, label, field)
    else:
        itemsize = FIXED[spec.datatype].itemsize
        if len(raw) != count * itemsize:
            raise bad(
                field,
                f"{label}: {len(raw)} bytes of binary data, but shape {tensor.shape} of {spec.datatype} "
                f"takes {count * itemsize}",
            )
        values = np.frombuffer(raw, FIXED[spec.datatype]).tolist()
    if len(values) != count:
        raise bad(field, f"{label}: {len(values)} data elements, but shape {tensor.shape} holds {count}")
    return [_element(v, spec, label, field, i) for i, v in enumerate(values)]


def instance_rows(
    request: InferRequest, binary: bytes, specs: Sequence[InputSpec], n: int
) -> list[dict[str, Any]]:
    """The checked inputs (see :func:`check_inputs`) as N instance dicts; absent inputs are left out, so
    the schema's defaults apply."""
    by_name = {s.name: s for s in specs}
    raw = _binary_inputs(request, binary)
    columns = {t.name: _values(t, by_name[t.name], raw.get(t.name)) for t in request.inputs}
    return [{name: column[i] for name, column in columns.items()} for i in range(n)]


def model_parameters(request: InferRequest, request_model: type[BaseModel], model: str) -> dict[str, Any]:
    """The request parameters the native request schema takes (coverage, ...); the protocol's own are
    ignored, any other is an error rather than silently unused."""
    known = [f for f in request_model.model_fields if f != "instances"]
    taken = {}
    for key, value in (request.parameters or {}).items():
        if key in known:
            taken[key] = value
        elif key not in PROTOCOL_PARAMETERS and not key.startswith(TRITON_PREFIX):
            raise bad(
                f"parameters.{key}",
                f"parameter {key!r} is unknown to model {model!r} (it takes: {', '.join(known)})",
            )
    return taken


def _row_problem(error: Mapping[str, Any]) -> tuple[str, str]:
    loc, message = tuple(error["loc"]), str(error["msg"])
    if loc[:1] == ("instances",) and len(loc) >= 3:
        row, name, rest = loc[1], loc[2], ".".join(str(p) for p in loc[3:])
        return f"inputs.{name}.{row}", f"input {name!r} row {row}: " + (f"{rest}: " if rest else "") + message
    if loc[:1] == ("instances",) and len(loc) == 2:
        return f"rows.{loc[1]}", f"row {loc[1]}: {message}"
    if loc[:1] == ("instances",) or not loc:
        return "inputs", f"inputs: {message}"
    return f"parameters.{loc[0]}", f"parameter {loc[0]!r}: {message}"


def native_request(
    request_model: type[BaseModel], rows: list[dict[str, Any]], parameters: dict[str, Any]
) -> BaseModel:
    """The rows and parameters validated by the native route's own request schema."""
    try:
        return request_model.model_validate({**parameters, "instances": rows})
    except ValidationError as exc:
        raise TensorError([_row_problem(e) for e in exc.errors(include_url=False)[:MAX_REPORTED]]) from exc


# --- Responses ------------------------------------------------------------------------------------------


def selected_outputs(
    request: InferRequest, specs: Sequence[OutputSpec], model: str
) -> list[tuple[OutputSpec, bool]]:
    """The outputs to answer, each with whether it goes as binary data."""
    default = (request.parameters or {}).get("binary_data_output", False)
    if not isinstance(default, bool):
        raise bad("parameters.binary_data_output", "parameter 'binary_data_output' must be true or false")
    if not request.outputs:
        return [(s, default) for s in specs]
    by_name = {s.name: s for s in specs}
    chosen: dict[str, tuple[OutputSpec, bool]] = {}
    for output in request.outputs:
        field, label = f"outputs.{output.name}", f"output {output.name!r}"
        spec = by_name.get(output.name)
        if spec is None:
            raise bad(
                field, f"{label} is not an output of model {model!r} (its outputs: {', '.join(by_name)})"
            )
        if output.name in chosen:
            raise bad(field, f"{label} is requested twice")
        parameters = dict(output.parameters or {})
        binary = parameters.pop("binary_data", default)
        if parameters:
            raise bad(field, f"{label}: parameter(s) {', '.join(sorted(parameters))} not supported")
        if not isinstance(binary, bool):
            raise bad(field, f"{label}: binary_data must be true or false")
        chosen[output.name] = (spec, binary)
    return list(chosen.values())
