"""Shared fixtures: paths and the espeak-ng golden clips."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.audio import golden_texts, speak

REPO = Path(__file__).resolve().parent


@pytest.fixture(scope="session")
def repo() -> Path:
    return REPO


@pytest.fixture(scope="session")
def golden_clips(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    directory = tmp_path_factory.mktemp("golden")
    return {text: speak(text, directory) for text in golden_texts()}
