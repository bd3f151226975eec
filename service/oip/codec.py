"""The Open Inference Protocol codec: an infer request's column tensors → rows the domain's native request
schema validates (so both dialects accept exactly the same instances), and prediction rows → output
tensors.

Triton's binary tensor data extension is read and written here too: a body of a JSON header
(``Inference-Header-Content-Length`` bytes) followed by each binary tensor's bytes, little-endian, BYTES
elements each prefixed with their 4-byte length.
"""

from __future__ import annotations

import json
import math
import struct
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from pydantic import BaseModel, ValidationError

from service.oip.schemas import InferRequest, RequestInput, TensorError, bad
from service.oip.tensors import InputSpec, OutputSpec

HEADER_LENGTH = "Inference-Header-Content-Length"
# Fixed-size datatypes this dialect reads and writes, as little-endian numpy dtypes.
FIXED = {"BOOL": np.dtype("?"), "INT64": np.dtype("<i8"), "FP64": np.dtype("<f8")}
# Request parameters the protocol or tritonclient may send that mean nothing to these models.
PROTOCOL_PARAMETERS = frozenset(
    {"binary_data_output", "sequence_id", "sequence_start", "sequence_end", "priority", "timeout", "headers"}
)
TRITON_PREFIX = "triton_"
MAX_REPORTED = 10


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


def raw_tensor(datatype: str, column: list[Any]) -> bytes:
    if datatype == "BYTES":
        encoded = [v.encode("utf-8") for v in column]
        return b"".join(struct.pack("<I", len(v)) + v for v in encoded)
    return np.asarray(column, dtype=FIXED[datatype]).tobytes()


def encode_response(
    head: Mapping[str, Any], outputs: Sequence[tuple[OutputSpec, bool, list[Any]]]
) -> tuple[bytes, int | None]:
    """The response body after ``head`` (model_name, model_version, id), and the JSON header's length
    when binary tensor data follows it."""
    tensors: list[dict[str, Any]] = []
    chunks: list[bytes] = []
    for spec, binary, column in outputs:
        tensor: dict[str, Any] = {"name": spec.name, "datatype": spec.datatype, "shape": [len(column)]}
        if binary:
            raw = raw_tensor(spec.datatype, column)
            tensor["parameters"] = {"binary_data_size": len(raw)}
            chunks.append(raw)
        elif spec.datatype == "FP64":
            tensor["data"] = [None if math.isnan(v) else v for v in column]
        else:
            tensor["data"] = column
        tensors.append(tensor)
    header = json.dumps({**head, "outputs": tensors}, allow_nan=False, separators=(",", ":")).encode()
    if not chunks:
        return header, None
    return header + b"".join(chunks), len(header)
