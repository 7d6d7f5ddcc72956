"""Command line: `nano-banana-gateway [--config PATH] [--host H] [--port P]`."""

from __future__ import annotations

import argparse
import gc
import logging
import math
import resource
import sys
from collections.abc import Callable
from types import FrameType

import uvicorn

from . import logscrub
from .config import ConfigError, load_config
from .protocol import ReadLimits, protocol_with

log = logging.getLogger("gateway")

# uvicorn's own drain deadline, past the app's grace period: the app answers its cut-off
# requests with a 503 at the grace period, and these seconds let those answers go out
# before uvicorn cancels whatever is left.
_ANSWER_SECONDS = 5


class _Server(uvicorn.Server):
    """uvicorn's server, telling the app when SIGTERM/SIGINT arrives (uvicorn keeps that
    to itself), so the app can start its shutdown clock."""

    def __init__(self, config: uvicorn.Config, on_exit: Callable[[], None]) -> None:
        super().__init__(config)
        self._on_exit = on_exit

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        """The signal handler: start the app's grace period, then uvicorn's shutdown."""
        self._on_exit()
        super().handle_exit(sig, frame)


def _raise_file_limit() -> None:
    """Lift the soft open-file limit to the hard one. Each request waiting on an upstream
    holds two sockets (caller and upstream), and distros often ship a soft limit of 1024,
    which a few hundred callers use up."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (ValueError, OSError):
            pass  # e.g. an unlimited hard limit that the kernel caps lower: keep the soft one
    log.info("open-file limit: %s (hard limit %s)", soft, hard)


def main(argv: list[str] | None = None) -> int:
    """Parse arguments, validate the config, and serve until SIGTERM/SIGINT."""
    parser = argparse.ArgumentParser(
        prog="nano-banana-gateway",
        description="OpenAI Images API gateway over the Nano Banana upstreams.",
    )
    parser.add_argument("--config", metavar="PATH", help="TOML config (default: environment)")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    parser.add_argument(
        "--check", action="store_true", help="validate the config, print a summary, and exit"
    )
    args = parser.parse_args(argv)

    try:
        config = load_config(args.config)
    except ConfigError as exc:
        print(f"nano-banana-gateway: configuration error: {exc}", file=sys.stderr)
        return 2

    logging.basicConfig(
        level=config.server.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    if args.check:
        print(
            f"config ok ({config.source}): "
            + ", ".join(f"{u.name}[{u.type}, {len(u.tokens)} tokens]" for u in config.upstreams)
        )
        return 0

    _raise_file_limit()
    from .app import create_app

    try:
        app = create_app(config, bind_host=args.host)
    except ConfigError as exc:  # a state directory that cannot be written, say
        print(f"nano-banana-gateway: configuration error: {exc}", file=sys.stderr)
        return 2
    # Thousands of requests waiting on upstreams keep hundreds of thousands of objects
    # alive; with CPython's default thresholds (700, 10, 10) the collector walks them all
    # every few hundred requests, pausing the event loop for up to 0.2 s each time
    # (measured in bench/RESULTS.md).
    gc.set_threshold(10_000, 50, 100)
    uvicorn_config = uvicorn.Config(
        app,
        host=args.host,
        port=args.port,
        log_level=config.server.log_level,
        access_log=config.server.access_log,
        # The fastest settings the stack offers (both come with uvicorn[standard]); named
        # rather than "auto" so a missing one fails the start instead of slowing it.
        loop="uvloop",
        # uvicorn's httptools protocol, with the reading of each request bounded in time
        # and size (gateway/protocol.py): uvicorn itself waits forever on a client that
        # stops half way through its request.
        http=protocol_with(
            ReadLimits(
                head_seconds=config.server.header_timeout_seconds,
                body_seconds=config.server.body_timeout_seconds,
                max_head_bytes=config.server.max_header_bytes,
            )
        ),
        # Image calls take minutes: on SIGTERM stop accepting, let in-flight ones
        # finish (the app cuts them off at shutdown_grace_seconds).
        timeout_graceful_shutdown=math.ceil(config.server.shutdown_grace_seconds) + _ANSWER_SECONDS,
        timeout_keep_alive=75,
        proxy_headers=True,
    )
    # After uvicorn has set up its log handlers, so that they are covered too.
    logscrub.install(config.secrets())
    # httpx logs every outbound call at INFO: a line per upstream call, and a few percent
    # of the CPU per request. Kept at debug level, where it helps.
    if config.server.log_level != "debug":
        logging.getLogger("httpx").setLevel(logging.WARNING)
    server = _Server(uvicorn_config, on_exit=app.state.shutdown.begin)
    server.run()
    if not server.started:
        return 1  # uvicorn has logged why (e.g. the port is taken)
    return 0


if __name__ == "__main__":
    sys.exit(main())
