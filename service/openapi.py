"""OpenAPI details that Litestar's generated document would otherwise get wrong."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, get_type_hints

import msgspec
from litestar.exceptions import ImproperlyConfiguredException
from litestar.openapi.spec import OpenAPIMediaType, OpenAPIType, Operation, Reference, Schema
from litestar.plugins import OpenAPISchemaPlugin, OpenAPISchemaPluginProtocol
from litestar.typing import FieldDefinition

from service.schemas import RequestBody

if TYPE_CHECKING:
    # Type only: Litestar's public plugin protocol (`litestar.plugins`) is annotated with this
    # class and no public module exports it; nothing of it is imported at run time.
    from litestar._openapi.schema_generation import SchemaCreator

# JSON Schema keywords for the constraints that msgspec enforces, and Schema's names for them.
CONSTRAINTS = {
    "minLength": "min_length",
    "maxLength": "max_length",
    "pattern": "pattern",
    "minimum": "minimum",
    "maximum": "maximum",
    "exclusiveMinimum": "exclusive_minimum",
    "exclusiveMaximum": "exclusive_maximum",
    "minItems": "min_items",
    "maxItems": "max_items",
    "minProperties": "min_properties",
    "maxProperties": "max_properties",
}


class ClosedRequestSchemaPlugin(OpenAPISchemaPlugin):
    """Request bodies as the server decodes them. They answer 400 to an unknown field
    (`forbid_unknown_fields`), so their schemas say `additionalProperties: false`; and
    Litestar drops the constraints of types nested in a list or a union (`ids` items >= 0, a
    `stop` string's minimum length), so they are taken from msgspec's own JSON schema.

    The schema itself is Litestar's: the plugin asks the one Litestar would otherwise use for
    the struct (its built-in msgspec plugin) and amends what that answers."""

    def is_plugin_supported_field(self, field_definition: FieldDefinition) -> bool:
        return not field_definition.is_union and field_definition.is_subclass_of(RequestBody)

    def to_openapi_schema(
        self, field_definition: FieldDefinition, schema_creator: SchemaCreator
    ) -> Schema:
        plugin = next_plugin_for(field_definition, schema_creator.plugins, after=self)
        schema = plugin.to_openapi_schema(field_definition, schema_creator)
        schema.additional_properties = False
        hints = get_type_hints(field_definition.type_, include_extras=True)
        for field in msgspec.structs.fields(field_definition.type_):
            prop = (schema.properties or {}).get(field.encode_name)
            add_constraints(prop, msgspec.json.schema(hints[field.name]))
        return schema


def next_plugin_for(
    field_definition: FieldDefinition,
    plugins: Iterable[OpenAPISchemaPluginProtocol],
    after: OpenAPISchemaPluginProtocol,
) -> OpenAPISchemaPluginProtocol:
    """The first of `plugins` after `after` that supports the field: the one Litestar would
    have used without `after` (app plugins come first, Litestar's built-in ones after)."""
    listed = list(plugins)
    rest = listed[listed.index(after) + 1 :] if after in listed else listed
    for plugin in rest:
        if isinstance(plugin, type(after)):
            continue
        if isinstance(plugin, OpenAPISchemaPlugin):
            supported = plugin.is_plugin_supported_field(field_definition)
        else:
            supported = plugin.is_plugin_supported_type(field_definition.annotation)
        if supported:
            return plugin
    raise ImproperlyConfiguredException(
        f"no OpenAPI schema plugin after {type(after).__name__} for {field_definition.annotation}"
    )


def add_constraints(target: Schema | Reference | None, source: dict[str, Any]) -> None:
    """Copy the constraints of the JSON schema `source` that `target` lacks, recursively
    into array items, dict values and union alternatives (matched by type)."""
    if not isinstance(target, Schema):
        return
    for keyword, attribute in CONSTRAINTS.items():
        if keyword in source and getattr(target, attribute) is None:
            setattr(target, attribute, source[keyword])
    if isinstance(source.get("items"), dict):
        add_constraints(target.items, source["items"])
    values = target.additional_properties
    if isinstance(source.get("additionalProperties"), dict) and not isinstance(values, bool):
        # a dict's values (logit_bias: each bias in [-100, 100])
        add_constraints(values, source["additionalProperties"])
    alternatives = union_alternatives(source)
    for option in target.one_of or target.any_of or []:
        option_type = getattr(option, "type", None)
        option_type = getattr(option_type, "value", option_type)
        for alternative in alternatives:
            if option_type is not None and alternative.get("type") == option_type:
                add_constraints(option, alternative)
                break


def union_alternatives(source: dict[str, Any]) -> list[dict[str, Any]]:
    """The alternatives of a union schema, nested unions (an Optional around one) flattened."""
    flat: list[dict[str, Any]] = []
    for alternative in source.get("anyOf") or source.get("oneOf") or []:
        nested = "anyOf" in alternative or "oneOf" in alternative
        flat.extend(union_alternatives(alternative) if nested else [alternative])
    return flat


@dataclass
class JSONOrEventStreamOperation(Operation):
    """/v1/generate answers 200 with its JSON response object, or with Server-Sent Events
    when `stream` is true; Litestar would document `oneOf: [response, {}]` as JSON, which no
    JSON body can match (it matches both)."""

    def __post_init__(self) -> None:
        success = (self.responses or {}).get("200")
        content = getattr(success, "content", None)
        json_body = content.get("application/json") if content else None
        if content is None or json_body is None or not isinstance(json_body.schema, Schema):
            return
        alternatives = [s for s in json_body.schema.one_of or [] if isinstance(s, Reference)]
        if alternatives:
            json_body.schema = alternatives[0]
        # OpenAPI describes an event stream one event at a time: `data` holds the JSON text.
        content["text/event-stream"] = OpenAPIMediaType(
            schema=Schema(
                type=OpenAPIType.OBJECT,
                description="one Server-Sent Event",
                required=["data"],
                properties={
                    "event": Schema(type=OpenAPIType.STRING),
                    "data": Schema(type=OpenAPIType.STRING),
                    "id": Schema(type=OpenAPIType.STRING),
                    "retry": Schema(type=OpenAPIType.INTEGER),
                },
            )
        )
