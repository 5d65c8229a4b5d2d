"""What both fuzz test modules share: the OpenAPI document, schemathesis' view of it, and the
server log lines of a request that went wrong."""

from __future__ import annotations

import os
import time

import schemathesis

from service.app import create_app
from service.settings import Settings
from tests.fuzz.conftest import FUZZ_MAX_NEW_TOKENS
from tests.integration.conftest import Server

# Each operation's test runs the document's own examples; the coverage phase, boundary values
# of every constraint (a minimum, one below it, a maximum, one above it, wrong types, missing
# fields, unsupported methods); and random fuzzing. "stateful" is test_linked_operations_conform,
# whose state machine only gets the links schemathesis infers while the phase is enabled.
PHASES = ["examples", "coverage", "fuzzing", "stateful"]


def openapi_document() -> dict:
    """The document the server publishes at /docs/openapi.json, built in-process so that the
    operations are known when pytest collects; test_the_server_publishes_this_document checks
    that the real server's is the same."""
    settings = Settings(max_new_tokens=FUZZ_MAX_NEW_TOKENS)
    return create_app(settings).openapi_schema.to_schema()


schema = schemathesis.openapi.from_dict(openapi_document())
schema.config.phases.update(phases=PHASES)
# Failure reports hide values under keys that look secret, and "token" matches max_new_tokens;
# nothing secret is sent here, so a reproduction shows the request that was sent.
schema.config.output.sanitization.enabled = False
if os.environ.get("FUZZ_SEED"):
    schema.config.seed = int(os.environ["FUZZ_SEED"])


def server_log_since(server: Server, start: int, wait_s: float = 2.0, lines: int = 60) -> str:
    """What the server logged after offset `start`, its first and last lines if more than
    `lines` (a RecursionError's traceback runs to thousands); its log handler writes from a
    queue, so this waits up to `wait_s` for the lines of a request that just failed."""
    deadline = time.monotonic() + wait_s
    while not (new := server.log()[start:].strip()) and time.monotonic() < deadline:
        time.sleep(0.05)
    logged = new.splitlines()
    if len(logged) > lines:
        head, tail = logged[: lines // 3], logged[-(lines - lines // 3) :]
        logged = [*head, f"... ({len(logged) - lines} lines left out) ...", *tail]
    return "\n".join(logged) or "(nothing)"
