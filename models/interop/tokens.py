"""Tokens as bytes, and the two ways other formats spell them: GPT-2's byte-to-unicode
alphabet (GGUF, `tokenizers`' byte-level BPE) and a reversible escape for text formats whose
fields are split on whitespace (word2vec, TensorBoard's metadata TSV)."""

from __future__ import annotations

from tokenizers import decoders

from models.tokenizer import BPETokenizer, CharTokenizer, TextTokenizer


def byte_to_unicode() -> dict[int, str]:
    """GPT-2's table: printable Latin-1 bytes stand for themselves, the other 68 (space,
    control bytes, ...) for the characters from U+0100 on, so every byte is one visible
    character (' ' -> 'Ġ', '\\n' -> 'Ċ')."""
    kept = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1)]
    kept += range(ord("®"), ord("ÿ") + 1)
    table = {b: chr(b) for b in kept}
    shifted = (b for b in range(256) if b not in table)
    for offset, b in enumerate(shifted):
        table[b] = chr(256 + offset)
    return table


BYTE_TO_UNICODE = byte_to_unicode()
UNICODE_TO_BYTE = {ch: b for b, ch in BYTE_TO_UNICODE.items()}


def byte_level(data: bytes) -> str:
    return "".join(BYTE_TO_UNICODE[b] for b in data)


def from_byte_level(token: str) -> bytes:
    """The bytes a byte-level token stands for."""
    return bytes(UNICODE_TO_BYTE[ch] for ch in token)


def is_byte_level(tokenizer: BPETokenizer) -> bool:
    return isinstance(tokenizer.hf.decoder, decoders.ByteLevel)


def token_bytes(tokenizer: TextTokenizer, token_id: int) -> bytes:
    """What token `token_id` stands for, exactly: a BPE token may hold part of a character,
    which its decoded text would show as U+FFFD."""
    if isinstance(tokenizer, CharTokenizer):
        return tokenizer.chars[token_id].encode("utf-8")
    added = tokenizer.hf.get_added_tokens_decoder()
    if token_id in added:  # a special token is its literal text, not byte-level
        return added[token_id].content.encode("utf-8")
    token = tokenizer.hf.id_to_token(token_id)
    if token is None:
        raise ValueError(f"token id {token_id} is outside the vocabulary")
    return from_byte_level(token)


# Escapes for text formats that split on whitespace: one character each, after a backslash.
NAMED_ESCAPES = {"\\": "\\\\", " ": "\\s", "\n": "\\n", "\t": "\\t", "\r": "\\r"}
NAMED_UNESCAPES = {escape[1]: ch for ch, escape in NAMED_ESCAPES.items()}


def escape_token(data: bytes) -> str:
    """`data` as one field without whitespace, reversibly (see `unescape_token`): a backslash
    is written `\\\\`, space `\\s`, newline `\\n`, tab `\\t`, carriage return `\\r`, any
    other whitespace or unprintable character `\\uXXXX`, and a byte that is not part of a
    whole UTF-8 character (BPE tokens may split one) `\\xHH`."""
    out = []
    # surrogateescape maps each undecodable byte to one of U+DC80..U+DCFF, losslessly
    for ch in data.decode("utf-8", errors="surrogateescape"):
        code = ord(ch)
        if ch in NAMED_ESCAPES:
            out.append(NAMED_ESCAPES[ch])
        elif 0xDC80 <= code <= 0xDCFF:
            out.append(f"\\x{code - 0xDC00:02x}")
        elif ch.isspace() or not ch.isprintable():
            out.append(f"\\u{code:04x}" if code <= 0xFFFF else f"\\U{code:08x}")
        else:
            out.append(ch)
    return "".join(out)


def unescape_token(field: str) -> bytes:
    """The bytes `escape_token` wrote `field` for; ValueError for a malformed escape."""
    out = bytearray()
    i = 0
    while i < len(field):
        ch = field[i]
        if ch != "\\":
            out += ch.encode("utf-8")
            i += 1
            continue
        kind = field[i + 1 : i + 2]
        if kind in NAMED_UNESCAPES:
            out += NAMED_UNESCAPES[kind].encode("utf-8")
            i += 2
            continue
        width = {"x": 2, "u": 4, "U": 8}.get(kind)
        digits = field[i + 2 : i + 2 + width] if width else ""
        if not width or len(digits) != width:
            raise ValueError(f"malformed escape at position {i} of {field!r}")
        code = int(digits, 16)
        out += bytes([code]) if kind == "x" else chr(code).encode("utf-8")
        i += 2 + width
    return bytes(out)
