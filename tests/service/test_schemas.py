"""Request schemas: constraints in the types, strict decoding, readable error messages."""

import msgspec
import pytest

from service.decoding import validation_error
from service.schemas import (
    DetokenizeRequest,
    GenerateRequest,
    NeighboursRequest,
    NextTokenRequest,
    TokenizeRequest,
)


def decode(schema, body: dict):
    return msgspec.json.decode(msgspec.json.encode(body), type=schema)


def refusal(schema, body: dict):
    """The InvalidRequestError the API answers with for `body`."""
    with pytest.raises(msgspec.ValidationError) as caught:
        decode(schema, body)
    return validation_error(str(caught.value), schema)


def test_generate_defaults():
    request = decode(GenerateRequest, {"model": "m"})
    assert (request.prompt, request.max_new_tokens, request.temperature) == ("", 200, 1.0)
    assert (request.top_k, request.top_p, request.seed, request.stop) == (None, 1.0, None, [])


def test_stop_is_a_string_or_a_list_of_strings():
    assert decode(GenerateRequest, {"model": "m", "stop": "\n"}).stop == "\n"
    assert decode(GenerateRequest, {"model": "m", "stop": ["a", "bc"]}).stop == ["a", "bc"]


@pytest.mark.parametrize(
    ("schema", "field", "value"),
    [
        (GenerateRequest, "max_new_tokens", 0),
        (GenerateRequest, "temperature", -0.1),
        (GenerateRequest, "top_p", 0),
        (GenerateRequest, "top_p", 1.01),
        (GenerateRequest, "top_k", 0),
        (GenerateRequest, "seed", -1),
        (GenerateRequest, "stop", [""]),
        (NextTokenRequest, "temperature", 0),
        (NextTokenRequest, "top_k", 0),
        (NeighboursRequest, "k", 0),
        (NeighboursRequest, "metric", "manhattan"),
        (DetokenizeRequest, "ids", [-1]),
    ],
)
def test_out_of_range_values_are_refused_naming_the_field(schema, field, value):
    body = {"model": "m", field: value}
    if schema is DetokenizeRequest:
        body = {"model": "m", "ids": value}
    error = refusal(schema, body)
    assert error.param.split("[")[0] == field
    assert field in error.message


@pytest.mark.parametrize(
    ("field", "value"),
    [("max_new_tokens", "5"), ("temperature", "hot"), ("seed", 1.5), ("prompt", 3),
     ("stop", 7), ("top_k", True)],
)  # fmt: skip
def test_wrong_types_are_refused_even_when_they_would_convert(field, value):
    error = refusal(GenerateRequest, {"model": "m", field: value})
    assert error.param == field
    assert "Expected" in error.message


def test_an_unknown_field_is_named_with_the_accepted_ones():
    error = refusal(TokenizeRequest, {"model": "m", "text": "a", "txt": "b"})
    assert error.param == "txt"
    assert "unknown field `txt`" in error.message and "model, text" in error.message


def test_a_missing_field_is_named():
    error = refusal(TokenizeRequest, {"model": "m"})
    assert (error.param, error.message) == ("text", "missing required field `text`")


def test_a_body_that_is_not_an_object_is_refused():
    with pytest.raises(msgspec.ValidationError) as caught:
        msgspec.json.decode(b"[1, 2]", type=TokenizeRequest)
    error = validation_error(str(caught.value), TokenizeRequest)
    assert error.param is None and "JSON object" in error.message
