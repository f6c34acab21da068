"""Entry point: ``python -m xl_llm`` serves the API with uvicorn."""

from __future__ import annotations

import sys

from xl_service.main import serve

from .app import create_app
from .settings import Settings

if __name__ == "__main__":
    sys.exit(serve("xl_llm", Settings.from_env, create_app))
