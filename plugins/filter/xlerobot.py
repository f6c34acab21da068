# Copyright: XleRobot deploy authors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""One naming scheme everywhere: containers, HAProxy backends and servers, release ids."""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Callable
from datetime import datetime
from typing import Any

from ansible.errors import AnsibleFilterError

# This repository is no installed collection, so ansible.module_utils does not reach plugins/module_utils on the
# controller: the names come from the release engine's own module, so the scheme exists once.
_MODULE_UTILS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "module_utils")
if _MODULE_UTILS not in sys.path:
    sys.path.insert(0, _MODULE_UTILS)

import xl_release  # noqa: E402


def _named(function: Callable[..., Any]) -> Callable[..., Any]:
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return function(*args, **kwargs)
        except xl_release.ReleaseError as exc:
            raise AnsibleFilterError(str(exc)) from exc
    wrapper.__doc__ = function.__doc__
    return wrapper


xl_backend = _named(xl_release.backend)
xl_server = _named(xl_release.server)
xl_servers = _named(xl_release.servers)
xl_live_colours = _named(xl_release.live_colours)
xl_container = _named(xl_release.container)
xl_other_colour = _named(xl_release.other_colour)
xl_instance_digest = _named(xl_release.settings_digest)


def xl_weights(servers: list[str], weight: int) -> dict[str, int]:
    """The same weight for every server in the list."""
    return {server: int(weight) for server in servers}


def xl_release_id(version: str, now: str | None = None) -> str:
    """Release id pinned once per run: <UTC timestamp>-<version>."""
    return xl_release.release_id(version, datetime.fromisoformat(now) if now else None)


def xl_runtime_env(runtime: dict | None, prefix: str) -> dict[str, str]:
    """A service's runtime settings as the environment its instances read: log_level is XL_LOG_LEVEL, every
    other key <prefix>_<KEY>; values as strings (booleans lower-case), keys sorted."""
    if runtime is not None and not isinstance(runtime, dict):
        raise AnsibleFilterError(f"runtime settings must be a mapping, got {type(runtime).__name__}")
    if not re.fullmatch(r"[A-Z][A-Z0-9]*", prefix or ""):
        raise AnsibleFilterError(f"env_prefix {prefix!r} must be upper-case letters and digits")
    env = {}
    for key, value in sorted((runtime or {}).items()):
        if not re.fullmatch(r"[a-z][a-z0-9_]*", key):
            raise AnsibleFilterError(f"runtime setting {key!r} must be lower-case letters, digits and _")
        name = "XL_LOG_LEVEL" if key == "log_level" else f"{prefix}_{key.upper()}"
        env[name] = str(value).lower() if isinstance(value, bool) else str(value)
    return env


def xl_instance_drift(results: list, image: str, digest: str, secret_env: dict | None = None,
                      secret_names: list | None = None, gpus: dict | None = None) -> list[str]:
    """Why the inspected instances (docker_container_info results of a loop over hosts) are not the target: the
    empty list when every one exists, runs `image`, carries the settings digest `digest`, was given exactly
    the GPUs `gpus` names for its host ({host: [GPU UUID]}; none where the host is not listed) and holds exactly
    the secret environment `secret_env` (the variables named in `secret_names`, XL_GATEWAY_API_KEY by default).
    A reason names the host and what differs; secret values never appear in it."""
    reasons = []
    for result in results or []:
        host = result.get("item", "?") if isinstance(result, dict) else "?"
        reason = xl_release.drift_reason(str(host), result if isinstance(result, dict) else None, image, digest,
                                         secret_env, secret_names, (gpus or {}).get(host))
        if reason:
            reasons.append(reason)
    return reasons


class FilterModule:
    def filters(self):
        return {
            "xl_backend": xl_backend,
            "xl_server": xl_server,
            "xl_servers": xl_servers,
            "xl_weights": xl_weights,
            "xl_live_colours": xl_live_colours,
            "xl_container": xl_container,
            "xl_other_colour": xl_other_colour,
            "xl_release_id": xl_release_id,
            "xl_runtime_env": xl_runtime_env,
            "xl_instance_digest": xl_instance_digest,
            "xl_instance_drift": xl_instance_drift,
        }
