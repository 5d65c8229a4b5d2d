"""`tinygpt`: the offline commands of `models.cli` plus `tinygpt serve`."""

from __future__ import annotations

import argparse
import signal
import sys

import uvicorn

from models import cli as models_cli
from models.device import DEVICE_CHOICES, resolve_device
from service.app import create_app
from service.exceptions import NoModelsLoadedError
from service.registry import checkpoint_folders
from service.settings import Settings


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
    p.set_defaults(handler=run_serve)


def build_parser() -> argparse.ArgumentParser:
    parser = models_cli.build_parser()
    # argparse offers no public way back to the subcommands of a built parser.
    subcommands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    add_serve_parser(subcommands)
    return parser


def run_serve(args: argparse.Namespace) -> int:
    options = {name: getattr(args, name) for name in ("host", "port", "checkpoints", "device")}
    settings = Settings.from_env({k: v for k, v in options.items() if v is not None})
    # Refuse a bad device or checkpoint folder here, with one line, rather than from the
    # server's startup hook with a traceback.
    resolve_device(settings.device)
    try:
        checkpoint_folders(settings.checkpoints)
    except NoModelsLoadedError as err:
        return models_cli.fail(str(err))
    # When startup fails (no checkpoint loads, the port is taken) uvicorn logs why and exits
    # with status 3.
    # SIGTERM: uvicorn stops accepting, lets in-flight requests (streams included) finish for
    # up to TINYGPT_SHUTDOWN_GRACE seconds, then runs the app's shutdown (stopping engines).
    # It re-raises the signal afterwards; this handler takes it so that the exit status is 0.
    signal.signal(signal.SIGTERM, lambda *_: None)
    uvicorn.run(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level,
        timeout_graceful_shutdown=settings.shutdown_grace,
    )
    return 0


def main(argv: list[str] | None = None) -> int:
    return models_cli.main(argv, parser=build_parser())


if __name__ == "__main__":
    sys.exit(main())
