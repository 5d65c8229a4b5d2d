"""Strict JSON request bodies.

Litestar converts request bodies in msgspec's lax mode, which would take "5" for the integer
5 and "true" for a boolean. The API promises a 400 for wrong types, so the request class
below decodes a body straight into the handler's `data` type with msgspec's strict rules and
turns msgspec's error into a message that names the field.
"""

from __future__ import annotations

import re
from typing import Any

import msgspec
from litestar import Request

from service.exceptions import InvalidRequestError

# msgspec's "<problem> - at `$.path[0].to`"; the path is absent for errors at the top level.
ERROR_AT = re.compile(r"(?P<problem>.*?)(?: - at `\$(?P<path>[^`]*)`)?", re.DOTALL)
# No request body nests deeper than a few levels; this bounds the work a body can ask for.
MAX_DEPTH = 32
NAMED_FIELD = re.compile(
    r"Object (?P<what>contains unknown|missing required) field `(?P<name>[^`]+)`"
)


class StrictJSONRequest(Request):
    """A Request whose JSON body is decoded strictly into the route handler's `data` type."""

    async def body(self) -> bytes:
        body = await super().body()
        if not body and self.route_handler.parsed_data_field is not None:
            raise InvalidRequestError(
                "the request body is empty; send a JSON object (the schema is at /docs)"
            )
        return body

    async def json(self) -> Any:
        data_field = self.route_handler.parsed_data_field
        if data_field is None:
            return await super().json()
        try:
            parsed = msgspec.json.decode(await self.body())
            return msgspec.convert(integral_floats_as_ints(parsed), data_field.annotation)
        except (RecursionError, TooDeepError):
            raise InvalidRequestError(
                f"the request body nests arrays or objects more than {MAX_DEPTH} levels deep; "
                "send the flat JSON object the schema at /docs describes"
            ) from None
        except msgspec.ValidationError as err:
            raise validation_error(str(err), data_field.annotation) from None
        except msgspec.DecodeError as err:
            raise InvalidRequestError(
                f"the request body is not valid JSON ({err}); send a JSON object"
            ) from None


class TooDeepError(ValueError):
    """A body nested deeper than MAX_DEPTH."""


def integral_floats_as_ints(value: Any, depth: int = 0) -> Any:
    """JSON has numbers, not ints and floats: `5.0` is the integer 5 to JSON Schema (and to
    JavaScript clients), so it must pass where the schema says `integer`. Ints still pass
    where it says `number`; `5.5` and `"5"` are still refused for an integer."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, dict | list) and depth >= MAX_DEPTH:
        raise TooDeepError
    if isinstance(value, dict):
        return {key: integral_floats_as_ints(item, depth + 1) for key, item in value.items()}
    if isinstance(value, list):
        return [integral_floats_as_ints(item, depth + 1) for item in value]
    return value


def validation_error(msgspec_message: str, schema: Any) -> InvalidRequestError:
    """A readable InvalidRequestError naming the field that msgspec refused."""
    match = ERROR_AT.fullmatch(msgspec_message)
    assert match is not None  # the pattern matches any message
    problem, path = match["problem"], (match["path"] or "").lstrip(".")
    named = NAMED_FIELD.fullmatch(problem)
    if named and named["what"] == "contains unknown":
        fields = ", ".join(getattr(schema, "__struct_fields__", ()))
        return InvalidRequestError(
            f"unknown field `{named['name']}`; this endpoint accepts: {fields}",
            param=named["name"],
        )
    if named:
        return InvalidRequestError(f"missing required field `{named['name']}`", param=named["name"])
    if not path:
        return InvalidRequestError(f"the request body must be a JSON object: {problem}")
    return InvalidRequestError(f"invalid `{path}`: {problem}", param=path)
