"""``python -m xl_<service>``: serve a service's app with uvicorn, settings from the environment."""

from __future__ import annotations

import argparse
import os
import signal
import sys
from collections.abc import Callable
from typing import Any

import uvicorn

from . import jsonlog
from .runtime import RUNTIME_FILE_VAR, LiveSettings
from .settings import Identity, SettingsError


def serve(prog: str, load_settings: Callable[[], Any], create_app: Callable[[Any], Any],
          argv: list[str] | None = None) -> int:
    """Parse the command line, read the settings (exit 2 naming a bad one), configure JSON logs, serve.

    XL_LISTEN_HOST / XL_LISTEN_PORT override the defaults: an instance on the host network listens on the
    address and port the deploy gave it instead of the container's usual 0.0.0.0:8000. XL_RUNTIME_FILE names the
    runtime settings, applied at start and again on SIGHUP (see runtime.py); GET /runtime tells what is applied.
    """
    parser = argparse.ArgumentParser(prog=prog)
    # Inside the container; the host publishes it on loopback.
    parser.add_argument("--host", default=os.environ.get("XL_LISTEN_HOST") or "0.0.0.0")
    parser.add_argument("--port", type=int, default=int(os.environ.get("XL_LISTEN_PORT") or 8000))
    parser.add_argument("--graceful-timeout", type=float, default=30.0,
                        help="seconds in-flight requests get to finish after SIGTERM")
    args = parser.parse_args(argv)
    try:
        live = LiveSettings(load_settings, os.environ.get(RUNTIME_FILE_VAR) or None)
        live.start()
    except SettingsError as exc:
        print(f"{prog}: invalid setting: {exc}", file=sys.stderr)
        return 2
    identity: Identity = live.identity
    jsonlog.configure(live.log_level, {"service": identity.service, "version": identity.version,
                                       "colour": identity.colour})
    # The app reads its settings through `live`, so what it reads per request follows a reload.
    app = create_app(live)
    app.get("/runtime")(live.describe)
    # SIGHUP re-reads the runtime file (uvicorn handles only SIGINT and SIGTERM).
    signal.signal(signal.SIGHUP, lambda _signum, _frame: live.reload())
    uvicorn.run(app, host=args.host, port=args.port, log_config=None,
                timeout_graceful_shutdown=int(args.graceful_timeout), access_log=False)
    return 0
