"""`tinygpt`: the offline commands of `models.cli` plus `tinygpt serve`."""

from __future__ import annotations

import argparse
import os
import signal
import sys
from typing import Any

import uvicorn

from models import cli as models_cli
from models.device import DEVICE_CHOICES, resolve_device
from service.app import create_app
from service.exceptions import NoModelsLoadedError
from service.registry import checkpoint_folders
from service.security import trusted_networks
from service.settings import Settings, SettingsError, env_name, torch_threads_for
from service.workers import supervise


def add_serve_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "serve",
        help="serve every checkpoint under a folder over HTTP",
        description="Serve the models over HTTP. Each option falls back to its TINYGPT_* "
        "environment variable (TINYGPT_HOST, TINYGPT_PORT, ...), then to the default shown.",
    )
    defaults = Settings()
    p.add_argument("--host", help=f"address to listen on (default {defaults.host})")
    p.add_argument("--port", type=int, help=f"port to listen on (default {defaults.port})")
    p.add_argument(
        "--checkpoints",
        help=f"folder of checkpoint folders, one model each (default {defaults.checkpoints}/)",
    )
    p.add_argument(
        "--device", choices=DEVICE_CHOICES, help=f"where the models run (default {defaults.device})"
    )
    p.add_argument(
        "--workers",
        type=int,
        help="processes serving the one port, each with its own engines and a share of the "
        f"cores for torch (default {defaults.workers})",
    )
    p.set_defaults(handler=run_serve)


def build_parser() -> argparse.ArgumentParser:
    parser = models_cli.build_parser()
    # argparse offers no public way back to the subcommands of a built parser.
    subcommands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    add_serve_parser(subcommands)
    return parser


SERVE_OPTIONS = ("host", "port", "checkpoints", "device", "workers")
# What each worker imports and calls when there are several.
APP_FACTORY = "service.app:create_app"


def run_serve(args: argparse.Namespace) -> int:
    options = {name: getattr(args, name) for name in SERVE_OPTIONS}
    options = {name: value for name, value in options.items() if value is not None}
    settings = Settings.from_env(options)
    # Refuse a bad device, checkpoint folder or proxy list here, with one line, rather than
    # from the server's startup hook (in every worker) with a traceback.
    resolve_device(settings.device)
    try:
        checkpoint_folders(settings.checkpoints)
        trusted_networks(settings.trusted_proxies)
    except (NoModelsLoadedError, SettingsError) as err:
        return models_cli.fail(str(err))
    threads = torch_threads_for(settings)
    print(
        f"tinygpt serve: {settings.workers} worker(s) on {len(os.sched_getaffinity(0))} "
        f"core(s), {threads} torch thread(s) each (TINYGPT_WORKERS, TINYGPT_TORCH_THREADS)",
        file=sys.stderr,
    )
    # When startup fails (no checkpoint loads, the port is taken) uvicorn logs why and exits
    # with status 3.
    # SIGTERM: the app drains first (service/draining.py: /ready answers 503 for
    # TINYGPT_DRAIN_DELAY seconds), then uvicorn stops accepting, lets in-flight requests
    # (streams included) finish for up to TINYGPT_SHUTDOWN_GRACE seconds, and runs the app's
    # shutdown (stopping engines). It re-raises the signal afterwards; this handler takes it
    # so that the exit status is 0. With several workers, service/workers.py hands SIGTERM on
    # to each worker and returns once all have stopped.
    signal.signal(signal.SIGTERM, lambda *_: None)
    server_options: dict[str, Any] = {
        "host": settings.host,
        "port": settings.port,
        "log_level": settings.log_level,
        "timeout_graceful_shutdown": settings.shutdown_grace,
        # Who a client is behind a proxy is decided by the app, from TINYGPT_TRUSTED_PROXIES
        # alone; uvicorn would otherwise believe X-Forwarded-For from any local peer.
        "proxy_headers": False,
    }
    if settings.workers == 1:
        uvicorn.run(create_app(settings), **server_options)
        return 0
    # Each worker builds its own app from the environment: the options go there.
    os.environ.update({env_name(name): str(value) for name, value in options.items()})
    config = uvicorn.Config(APP_FACTORY, factory=True, **server_options)
    return supervise(config, settings.workers)


def main(argv: list[str] | None = None) -> int:
    return models_cli.main(argv, parser=build_parser())


if __name__ == "__main__":
    sys.exit(main())
