"""Runtime settings: values a running instance takes on SIGHUP, without a restart and without dropping a request.

The deploy writes ``XL_RUNTIME_FILE`` (JSON: ``{"version": "<id>", "env": {"ASR_BEAM_SIZE": "2", ...}}``) on a
read-only mount and sends the instance SIGHUP. Its ``env`` overlays the container's environment and the service's
settings are parsed again by the same ``from_env`` as at start, with the same validation. The file may only hold
the variables the settings class lists in ``RUNTIME_ENV`` (variable -> field; ``XL_LOG_LEVEL`` for every service),
and only those fields may differ from what the container's own environment gives: anything else (a model, a
thread count) is refused, named - that change needs a new instance, through a deploy. A refused or
unreadable file leaves the instance on the settings it had; ``describe``
(served at /runtime) says which version is applied and why the last one was refused.

The same rule holds at start, so a restart never picks up something a reload would have refused.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import threading
from collections.abc import Callable, Mapping
from typing import Any, Generic, TypeVar

from .settings import SettingsError

RUNTIME_FILE_VAR = "XL_RUNTIME_FILE"
# Every service reloads its log level.
COMMON_RUNTIME_ENV = {"XL_LOG_LEVEL": "log_level"}
NO_FILE = "none"

T = TypeVar("T")
log = logging.getLogger("xl_service.runtime")


class RuntimeFileError(SettingsError):
    """The runtime file cannot be applied (unreadable, malformed, or it changes what needs a restart)."""


def read_runtime_file(path: str) -> tuple[str, dict[str, str]]:
    """(version, env) of the runtime file at `path`; (NO_FILE, {}) when there is none."""
    try:
        with open(path, encoding="utf-8") as handle:
            data = json.load(handle)
    except FileNotFoundError:
        return NO_FILE, {}
    except (OSError, ValueError) as exc:
        raise RuntimeFileError(f"runtime file {path}: {exc}") from exc
    env = data.get("env", {}) if isinstance(data, dict) else None
    if not isinstance(env, dict) or not all(isinstance(k, str) and isinstance(v, str | int | float | bool)
                                            for k, v in env.items()):
        raise RuntimeFileError(f"runtime file {path}: 'env' must map variable names to plain values")
    version = str(data.get("version") or "unversioned")
    return version, {key: _env_text(value) for key, value in env.items()}


def _env_text(value: str | int | float | bool) -> str:
    return str(value).lower() if isinstance(value, bool) else str(value)


def _differing_fields(base: Any, other: Any) -> list[str]:
    return sorted(f.name for f in dataclasses.fields(base) if getattr(base, f.name) != getattr(other, f.name))


class LiveSettings(Generic[T]):
    """The service's settings as they are now: attribute reads go to the latest applied settings object, so an
    app that reads ``settings.beam_size`` per request follows a reload (fields read once at start, such as a
    model, are exactly those that are not reloadable)."""

    def __init__(self, load: Callable[[], T], path: str | None, environ: Any = os.environ) -> None:
        self._load = load
        self._path = path
        self._environ = environ
        self._base_env = dict(environ)
        self._lock = threading.Lock()
        self._overlay: dict[str, str] = {}
        self._base = load()
        self.runtime_env: dict[str, str] = {**COMMON_RUNTIME_ENV, **getattr(type(self._base), "RUNTIME_ENV", {})}
        self.reloadable = frozenset(self.runtime_env.values())
        self._current = self._base
        self.version = NO_FILE
        self.error: str | None = None
        self.reloads = {"applied": 0, "refused": 0}

    @property
    def current(self) -> T:
        return self._current

    def __getattr__(self, name: str) -> Any:
        # Only called for names LiveSettings itself lacks: the settings' fields.
        if name.startswith("_"):
            raise AttributeError(name)
        return getattr(self._current, name)

    def _set_overlay(self, overlay: Mapping[str, str]) -> None:
        for key in set(self._overlay) - set(overlay):
            if key in self._base_env:
                self._environ[key] = self._base_env[key]
            else:
                self._environ.pop(key, None)
        self._environ.update(overlay)
        self._overlay = dict(overlay)

    def _candidate(self, overlay: Mapping[str, str]) -> T:
        """Settings parsed with `overlay` over the container's environment (left applied on success)."""
        unknown = sorted(set(overlay) - set(self.runtime_env))
        if unknown:
            raise RuntimeFileError(f"{', '.join(unknown)}: not a runtime setting of this service (it reloads "
                                   f"{', '.join(sorted(self.runtime_env))}); deploy a new instance for that")
        previous = dict(self._overlay)
        self._set_overlay(overlay)
        try:
            candidate = self._load()
        except SettingsError:
            self._set_overlay(previous)
            raise
        changed = [name for name in _differing_fields(self._base, candidate) if name not in self.reloadable]
        if changed:
            self._set_overlay(previous)
            raise RuntimeFileError(f"{', '.join(changed)} cannot change while running (reloadable: "
                                f"{', '.join(sorted(self.reloadable))}); deploy a new instance for that")
        return candidate

    def start(self) -> T:
        """Apply the runtime file at start; SettingsError (the process exits naming it) when it cannot be."""
        if self._path:
            version, overlay = read_runtime_file(self._path)
            self._current = self._candidate(overlay)
            self.version = version
        return self._current

    def reload(self) -> bool:
        """Re-read the runtime file and apply it; False (and ``error`` set, settings unchanged) when refused."""
        if not self._path:
            return False
        with self._lock:
            try:
                version, overlay = read_runtime_file(self._path)
                candidate = self._candidate(overlay)
            except SettingsError as exc:
                self.error = str(exc)
                self.reloads["refused"] += 1
                log.error("runtime settings refused", extra={"reason": self.error})
                return False
            changes = _differing_fields(self._current, candidate)
            self._current = candidate
            self.version, self.error = version, None
            self.reloads["applied"] += 1
            level = getattr(candidate, "log_level", None)
            if isinstance(level, str):
                logging.getLogger().setLevel(level)
            log.info("runtime settings applied", extra={"runtime_version": version, "changed": changes})
            return True

    def describe(self) -> dict[str, Any]:
        """What /runtime answers: the applied version, the reloadable fields' values, the last refusal."""
        values = {name: getattr(self._current, name) for name in sorted(self.reloadable)
                  if hasattr(self._current, name)}
        return {"version": self.version, "error": self.error, "reloadable": values, "reloads": dict(self.reloads)}
