"""Settings read once from the environment (the container's contract with the deploy roles), and faults."""

from __future__ import annotations

import math
import os
from dataclasses import dataclass


class SettingsError(ValueError):
    """An environment variable holds a value the service cannot use."""


def env_int(name: str, default: int, minimum: int = 0) -> int:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError as exc:
        raise SettingsError(f"{name}={raw!r} is not an integer") from exc
    if value < minimum:
        raise SettingsError(f"{name}={value} is below the minimum {minimum}")
    return value


def env_float(name: str, default: float, minimum: float = 0.0, maximum: float = math.inf) -> float:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = float(raw)
    except ValueError as exc:
        raise SettingsError(f"{name}={raw!r} is not a number") from exc
    if not math.isfinite(value):
        raise SettingsError(f"{name}={raw!r} is not a finite number")
    if maximum != math.inf and not minimum <= value <= maximum:
        raise SettingsError(f"{name}={value} must be from {minimum} to {maximum}")
    if value < minimum:
        raise SettingsError(f"{name}={value} is below the minimum {minimum}")
    return value


def _fault_number(key: str, raw: str, kind: type[int] | type[float]) -> int | float:
    try:
        return kind(raw)
    except ValueError as exc:
        raise SettingsError(f"XL_FAULT: {key}={raw!r} is not a number") from exc


@dataclass(frozen=True)
class Faults:
    """Fault injection, for building deliberately broken versions that exercise the deploy gates.

    Parsed from ``XL_FAULT``, a comma-separated list such as ``never_ready`` or
    ``error_rate=0.05,latency_ms=500``. Empty in every normal image. ``error_rate`` fails exactly that share
    of the requests, evenly spread (see ``fails``). ``errors_after=N`` serves the first N inferences cleanly
    before ``error_rate`` applies: a version that passes its smoke gates and then fails under real traffic,
    which is what canary analysis exists to catch. ``garble`` makes the model's answer wrong in a way only a
    check of its content notices (each service says how). ``crash_after_s`` ends the process that many
    seconds after its first inference.
    """

    never_ready: bool = False
    garble: bool = False
    error_rate: float = 0.0
    errors_after: int = 0
    latency_ms: int = 0
    crash_after_s: float = 0.0

    @classmethod
    def parse(cls, spec: str) -> Faults:
        values: dict[str, object] = {}
        for item in filter(None, (part.strip() for part in spec.split(","))):
            key, _, raw = item.partition("=")
            if key in ("never_ready", "garble"):
                values[key] = True
            elif key in ("error_rate", "crash_after_s"):
                values[key] = _fault_number(key, raw, float)
            elif key in ("latency_ms", "errors_after"):
                values[key] = _fault_number(key, raw, int)
            else:
                raise SettingsError(f"XL_FAULT: unknown fault {key!r}")
        return cls(**values)  # type: ignore[arg-type]

    def fails(self, seen: int) -> bool:
        """Whether request number `seen` (from 1) is one the error_rate fault fails: exactly that share of the
        requests after the first `errors_after`, evenly spread and starting with the first of them, so a drill
        fails the same way on every run."""
        served = seen - self.errors_after
        # Rounded first, so that 10 * 0.3 counts as 3 and not 3.0000000000000004.
        return (self.error_rate > 0 and served > 0
                and math.ceil(round(served * self.error_rate, 9)) > math.ceil(round((served - 1) * self.error_rate, 9)))

    @property
    def active(self) -> bool:
        return self != Faults()


@dataclass(frozen=True)
class Identity:
    """Who an instance is: the labels of its metrics, logs and X-Served-By header."""

    service: str
    version: str = "dev"
    colour: str = "none"
    release: str = ""
    # The image reference by digest the instance was started from (what a rollback's warm check compares).
    image: str = ""

    @classmethod
    def from_env(cls, service: str) -> Identity:
        env = os.environ.get
        return cls(service=env("XL_SERVICE", service), version=env("XL_VERSION", "dev"),
                   colour=env("XL_COLOUR", "none"), release=env("XL_RELEASE", ""), image=env("XL_IMAGE", ""))

    @property
    def served_by(self) -> str:
        return f"{self.service}/{self.version}/{self.colour}"


def log_level() -> str:
    return os.environ.get("XL_LOG_LEVEL", "INFO").upper()


def faults() -> Faults:
    return Faults.parse(os.environ.get("XL_FAULT", ""))
