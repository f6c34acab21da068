"""Docker HEALTHCHECK: exit 0 when the service on this container answers /readyz with 200."""

from __future__ import annotations

import os
import sys
import urllib.request


def main() -> int:
    host = os.environ.get("XL_LISTEN_HOST") or "127.0.0.1"
    port = os.environ.get("XL_LISTEN_PORT") or "8000"
    if host in ("0.0.0.0", "::"):
        host = "127.0.0.1"
    try:
        with urllib.request.urlopen(f"http://{host}:{port}/readyz", timeout=2) as answer:
            return 0 if answer.status == 200 else 1
    except OSError:
        return 1


if __name__ == "__main__":
    sys.exit(main())
