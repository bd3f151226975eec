"""Open Inference Protocol tensors derived from a domain's schemas: nothing here is written per domain.

Input tensors are the fields of the domain's instance schema (one column per field, ``[N]`` or ``[N, 1]``),
typed from its JSON schema; output tensors are the fields of its prediction schema, an interval becoming
``X``, ``X_low`` and ``X_high``.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from functools import cache
from typing import Any

from pydantic import BaseModel

from service.oip.schemas import MetadataTensor

INTERVAL_PARTS = (("", "value"), ("_low", "low"), ("_high", "high"))
NAN_NOTE = "NaN where the native route gives null (JSON data: null); the 'unavailable' output says why"


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
