"""JSON number types of the API, shared by the schemas and the device catalog (which validates inline
device specs with them), so neither has to import the other."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BeforeValidator, StrictInt


def _integral_float_to_int(value: Any) -> Any:
    # JSON has one number type: 64.0 is the integer 64 (JSON Schema agrees, and JavaScript clients
    # cannot tell them apart), while 1.5, "64" and true stay invalid.
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


Int = Annotated[StrictInt, BeforeValidator(_integral_float_to_int)]
# Not ``Int | None``: pydantic then writes its constraints into the schema as "gt"/"le", not JSON Schema.
OptionalInt = Annotated[StrictInt | None, BeforeValidator(_integral_float_to_int)]
