"""Server settings: one msgspec Struct, read from `TINYGPT_*` environment variables."""

from __future__ import annotations

import os
import re
import socket
from collections.abc import Mapping
from typing import Annotated, Any, Literal

import msgspec

ENV_PREFIX = "TINYGPT_"
# Part of the API contract rather than a setting: larger request bodies get a 413.
MAX_BODY_BYTES = 64 * 1024

DeviceName = Literal["auto", "cpu", "cuda", "mps"]
LogLevel = Literal["critical", "error", "warning", "info", "debug"]


class SettingsError(ValueError):
    """A setting from the environment or the command line has a value the server cannot use."""


class Settings(msgspec.Struct, frozen=True, kw_only=True):
    """Everything the server can be told; each field `name` comes from `TINYGPT_NAME`."""

    host: str = "127.0.0.1"
    port: Annotated[int, msgspec.Meta(ge=0, le=65535)] = 8000
    checkpoints: str = "checkpoints"
    device: DeviceName = "auto"
    max_new_tokens: Annotated[int, msgspec.Meta(ge=1, le=2**31 - 1)] = 1024
    max_prompt_chars: Annotated[int, msgspec.Meta(ge=1)] = 4096
    # Threads that run model work at once; the rest of the requests wait their turn.
    worker_threads: Annotated[int, msgspec.Meta(ge=1)] = 4
    # Sequences each model's engine decodes together, and requests that may wait beyond them
    # before the server answers 503.
    max_running: Annotated[int, msgspec.Meta(ge=1, le=1024)] = 64
    max_waiting: Annotated[int, msgspec.Meta(ge=0)] = 256
    # Fair shares (see service/limits.py): the sequences (prompts x n) one request may bring,
    # and those one client (API key, else address) may have queued or running at once.
    max_request_sequences: Annotated[int, msgspec.Meta(ge=1)] = 64
    max_client_sequences: Annotated[int, msgspec.Meta(ge=1)] = 128
    # torch.compile the GPT decode step; unset: when this machine can (see
    # service.engine.runners.compile_blocker). Models compile after start-up, /ready says 503
    # until they are done, and inductor's cache (TORCHINDUCTOR_CACHE_DIR, by default under the
    # tinygpt cache folder) makes a restart's compile take seconds.
    compile_decode: bool | None = None
    # Seconds a streamed token may wait to go out with the next steps' tokens (a first token
    # and a request's end never wait); 0: every decode step. Each hand-over wakes every
    # stream's reader and writes to its socket, which holds the GIL the decode thread needs:
    # at 32 streams 10 ms served 0.82x the engine's own speed, every step 0.64x (README).
    stream_interval: Annotated[float, msgspec.Meta(ge=0, le=1)] = 0.01
    # The GPT decode step's precision; auto: bfloat16 on a CUDA device that has it, float32
    # elsewhere. Generation only: the inspection endpoints read the float32 weights.
    decode_dtype: Literal["auto", "float32", "bfloat16"] = "auto"
    # Threads torch uses for model work; unset: see `torch_threads_for`.
    torch_threads: Annotated[int, msgspec.Meta(ge=1)] | None = None
    log_level: LogLevel = "info"
    # Access and limits (see service/security.py). API keys: comma-separated, and/or a file
    # with one key a line; when any is set, /v1/* needs `Authorization: Bearer <key>`.
    api_keys: str = ""
    api_key_file: str | None = None
    # Also require an API key for /docs (the OpenAPI page and document).
    protect_docs: bool = False
    # Keys for /admin/* (comma-separated); none configured turns the admin routes off (403).
    admin_keys: str = ""
    # Requests per client (API key, else address) per window, e.g. "120/minute"; empty: off.
    rate_limit: Annotated[
        str, msgspec.Meta(pattern=r"^$|^[1-9][0-9]*/(second|minute|hour|day)$")
    ] = ""
    # Seconds a generation may run before it ends with finish_reason "timeout" (or a 504).
    request_timeout: Annotated[float, msgspec.Meta(gt=0)] = 120.0
    # Origins allowed by CORS (comma-separated); empty: CORS off.
    cors_origins: str = ""
    # Seconds SIGTERM waits for in-flight requests (streams included) before closing them.
    shutdown_grace: Annotated[int, msgspec.Meta(ge=0)] = 30
    # Seconds the server keeps accepting after SIGTERM while /ready answers 503 ("draining"),
    # so that a balancer polling /ready stops routing here first; then shutdown_grace applies.
    drain_delay: Annotated[float, msgspec.Meta(ge=0)] = 0.0
    # Serving processes sharing the one port, each with its own engines (see torch_threads_for).
    workers: Annotated[int, msgspec.Meta(ge=1, le=64)] = 1
    # What this process answers as: the X-Replica-Id header and the `replica` label of
    # /metrics. Empty: `<host name>-<process id>`; with several workers each adds its pid.
    replica_id: Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z0-9_.:-]{0,64}$")] = ""
    # Where the rate limit and the client caps are counted across workers and replicas (see
    # service/shared_limits.py); empty: in each process. A replica that dies stops holding
    # its client's sequences within `redis_lease` seconds.
    redis_url: Annotated[str, msgspec.Meta(pattern=r"^$|^(redis|rediss|unix)://")] = ""
    redis_lease: Annotated[float, msgspec.Meta(gt=0)] = 15.0
    # Proxies whose X-Forwarded-For names the client (addresses or CIDR networks,
    # comma-separated); from any other peer the header is ignored.
    trusted_proxies: str = ""

    @classmethod
    def from_env(
        cls, overrides: Mapping[str, Any] | None = None, environ: Mapping[str, str] | None = None
    ) -> Settings:
        """Settings from the environment, with `overrides` (command-line options) on top."""
        environ = os.environ if environ is None else environ
        values: dict[str, Any] = {
            name: environ[env_name(name)]
            for name in cls.__struct_fields__
            if env_name(name) in environ
        }
        values.update(overrides or {})
        try:
            # strict=False: environment variables are strings, so "8000" must become 8000.
            return msgspec.convert(values, cls, strict=False)
        except msgspec.ValidationError as err:
            raise SettingsError(settings_problem(str(err), values)) from None


def torch_threads_for(settings: Settings) -> int:
    """The threads torch uses for model work in each worker: as set, else the cores this
    process may use shared among the workers, one fewer each for its event loop (at least 1,
    at most 8). The small matrices of these models gain little from more threads, and on a
    2-core machine torch's default of one per core let its threads compete with the event loop:
    one thread served 4,014 tokens/s to 32 clients where two served 2,188-3,104."""
    if settings.torch_threads is not None:
        return settings.torch_threads
    cores = len(os.sched_getaffinity(0))
    return max(1, min(8, cores // settings.workers - 1))


def replica_name(settings: Settings) -> str:
    """What this process answers as (see `Settings.replica_id`)."""
    name = settings.replica_id or socket.gethostname()
    if settings.replica_id and settings.workers == 1:
        return name
    return f"{name}-{os.getpid()}"


def env_name(field: str) -> str:
    return ENV_PREFIX + field.upper()


def settings_problem(msgspec_message: str, values: Mapping[str, Any]) -> str:
    """Turn "Expected `int` <= 65535 - at `$.port`" into a message naming the variable."""
    match = re.fullmatch(r"(?P<problem>.*) - at `\$\.(?P<field>\w+)`", msgspec_message)
    if match is None:
        return f"invalid settings: {msgspec_message}"
    field = match["field"]
    return (
        f"invalid setting {field}={values.get(field)!r} ({env_name(field)} or its "
        f"command-line option): {match['problem']}"
    )
