import pytest

from models.tokenizer import CharTokenizer, UnknownCharacterError


def test_vocabulary_is_sorted_unique_characters():
    tok = CharTokenizer.from_text("hello world")
    assert tok.chars == sorted(set("hello world"))
    assert tok.vocab_size == 8


def test_round_trip():
    text = "To be, or not to be:\nthat is the question."
    tok = CharTokenizer.from_text(text)
    ids = tok.encode(text)
    assert all(0 <= i < tok.vocab_size for i in ids)
    assert tok.decode(ids) == text


def test_unknown_characters_are_named_with_positions():
    tok = CharTokenizer.from_text("abc")
    with pytest.raises(UnknownCharacterError) as info:
        tok.encode("abXcY")
    assert info.value.unknown == [(2, "X"), (4, "Y")]
    message = str(info.value)
    assert "'X' at position 2" in message and "'Y' at position 4" in message


def test_serialises_through_a_dict():
    tok = CharTokenizer.from_text("some text\n")
    again = CharTokenizer.from_dict(tok.to_dict())
    assert again.chars == tok.chars
    assert again.start_id == tok.chars.index("\n")


def test_rejects_a_vocabulary_with_repeats():
    with pytest.raises(ValueError):
        CharTokenizer(["a", "a"])
