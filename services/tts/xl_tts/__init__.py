"""XleRobot speech synthesis service: Piper behind an OpenAI-compatible HTTP API."""

__all__ = ["__version__"]

__version__ = "0.1.0"
