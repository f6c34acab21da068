"""XleRobot language model service: llama.cpp behind an OpenAI-compatible chat completions API."""

__all__ = ["__version__"]

__version__ = "0.1.0"
