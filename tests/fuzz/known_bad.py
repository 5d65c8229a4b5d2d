"""The stored requests that once made the server answer 5xx (known_bad.json), as requests."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

KNOWN_BAD_FILE = Path(__file__).with_name("known_bad.json")


def load_known_bad() -> list[dict[str, Any]]:
    return json.loads(KNOWN_BAD_FILE.read_text(encoding="utf-8"))


def request_content(entry: dict[str, Any]) -> bytes:
    """The body to send: `body` as JSON, or `raw` text (a string, or [text, times] pieces)."""
    if "body" in entry:
        return json.dumps(entry["body"]).encode()
    raw = entry["raw"]
    if isinstance(raw, str):
        return raw.encode()
    return "".join(text * times for text, times in raw).encode()
