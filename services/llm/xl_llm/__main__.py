"""Entry point: ``python -m xl_llm`` serves the API with uvicorn."""

from __future__ import annotations

import argparse
import sys

import uvicorn

from . import jsonlog
from .app import create_app
from .settings import Settings, SettingsError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="xl_llm")
    parser.add_argument("--host", default="0.0.0.0")  # inside the container; the host publishes it on loopback
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--graceful-timeout", type=float, default=30.0,
                        help="seconds in-flight requests get to finish after SIGTERM")
    args = parser.parse_args(argv)
    try:
        settings = Settings.from_env()
    except SettingsError as exc:
        print(f"xl_llm: invalid setting: {exc}", file=sys.stderr)
        return 2
    jsonlog.configure(settings.log_level, {"service": settings.service, "version": settings.version,
                                           "colour": settings.colour})
    uvicorn.run(create_app(settings), host=args.host, port=args.port, log_config=None,
                timeout_graceful_shutdown=int(args.graceful_timeout), access_log=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
