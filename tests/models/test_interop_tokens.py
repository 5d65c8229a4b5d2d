"""Token spellings for other formats (models.interop.tokens): no optional library needed."""

import pytest

from models.checkpoint import load_checkpoint
from models.interop.tokens import (
    BYTE_TO_UNICODE,
    byte_level,
    escape_token,
    from_byte_level,
    token_bytes,
    unescape_token,
)
from models.tokenizer import CharTokenizer
from tests.models.test_shipped_checkpoints import CHECKPOINTS


def test_byte_table_is_gpt2s():
    assert len(set(BYTE_TO_UNICODE.values())) == 256
    assert byte_level(b" \n") == "\u0120\u010a"  # 'Ġ', 'Ċ'
    assert byte_level(b"KING") == "KING"
    assert from_byte_level(byte_level(bytes(range(256)))) == bytes(range(256))


@pytest.mark.parametrize(
    ("data", "field"),
    [
        (b" ", "\\s"),
        (b"\n", "\\n"),
        (b"a\\b", "a\\\\b"),
        (b"\t\r", "\\t\\r"),
        ("\u00a0".encode(), "\\u00a0"),  # no-break space: whitespace, so escaped
        ("é".encode(), "é"),
        (b"\xc3", "\\xc3"),  # half of 'é', as a BPE token may hold
        (b" the", "\\sthe"),
    ],
)
def test_escape_is_whitespace_free_and_reversible(data, field):
    assert escape_token(data) == field
    assert not any(ch.isspace() for ch in field)
    assert unescape_token(field) == data


def test_every_byte_string_round_trips():
    samples = [bytes([b]) for b in range(256)] + ["\U0001f600 \u2028".encode(), b"\\x41"]
    for data in samples:
        assert unescape_token(escape_token(data)) == data


@pytest.mark.parametrize("field", ["\\", "\\q", "\\x4", "\\u12"])
def test_malformed_escape_is_refused(field):
    with pytest.raises(ValueError, match="malformed escape"):
        unescape_token(field)


def test_token_bytes_are_exact_and_unique_for_the_shipped_vocabularies():
    for name in ("gpt-char", "gpt-bpe"):
        tokenizer = load_checkpoint(CHECKPOINTS / name).tokenizer
        spelled = [token_bytes(tokenizer, i) for i in range(tokenizer.vocab_size)]
        assert len(set(spelled)) == tokenizer.vocab_size
        text = "ROMEO: O, she doth teach the torches!\n"
        assert b"".join(spelled[i] for i in tokenizer.encode(text)) == text.encode()
    assert token_bytes(CharTokenizer(["é"]), 0) == "é".encode()
