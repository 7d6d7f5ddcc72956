"""Command line: `nano-banana-gateway [--config PATH] [--host H] [--port P]`."""

from __future__ import annotations

import argparse
import logging
import sys

import uvicorn

from .config import ConfigError, load_config


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

    from .app import create_app

    uvicorn.run(
        create_app(config),
        host=args.host,
        port=args.port,
        log_level=config.server.log_level,
        # Image calls take minutes: on SIGTERM stop accepting, let in-flight ones finish.
        timeout_graceful_shutdown=int(config.server.shutdown_grace_seconds),
        timeout_keep_alive=75,
        proxy_headers=True,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
