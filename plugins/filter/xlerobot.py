# Copyright: XleRobot deploy authors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""One naming scheme everywhere: containers, HAProxy backends and servers, release ids."""

from __future__ import annotations

import hashlib
import json
import re
from datetime import UTC, datetime

from ansible.errors import AnsibleFilterError

_NAME = re.compile(r"^[a-z][a-z0-9]*$")


def _check(kind: str, value: str) -> str:
    if not isinstance(value, str) or not _NAME.match(value):
        raise AnsibleFilterError(f"{kind} {value!r} must be lower-case letters and digits, starting with a letter")
    return value


def xl_backend(service: str) -> str:
    """HAProxy backend of a service: be_<service>."""
    return f"be_{_check('service', service)}"


def xl_server(service: str, colour: str, host: str | None = None) -> str:
    """HAProxy server of one instance: <service>_<colour>, plus _<host> when a service spans several hosts."""
    name = f"{_check('service', service)}_{_check('colour', colour)}"
    return f"{name}_{re.sub(r'[^a-z0-9]', '', host.lower())}" if host else name


def xl_servers(service: str, colour: str, hosts: list[str], fleet: list[str] | None = None) -> list[str]:
    """HAProxy servers of one colour of a service on `hosts`, one per host. Server names carry the host when
    the service spans several hosts: `fleet` (all its speech hosts) says so when `hosts` is only a batch."""
    if not hosts:
        raise AnsibleFilterError(f"service {service!r} has no speech hosts")
    several = len(fleet if fleet is not None else hosts) > 1
    return [xl_server(service, colour, host if several else None) for host in hosts]


def xl_weights(servers: list[str], weight: int) -> dict[str, int]:
    """The same weight for every server in the list."""
    return {server: int(weight) for server in servers}


def xl_live_colours(weights: dict[str, int], service: str, colours: list[str], hosts: list[str]) -> list[str]:
    """Colours of a service that take traffic: any of their servers has a weight above zero."""
    return [colour for colour in colours
            if any(weights.get(server, 0) > 0 for server in xl_servers(service, colour, hosts))]


def xl_container(service: str, colour: str, prefix: str = "xl") -> str:
    """Container of one instance: <prefix>-<service>-<colour>."""
    return f"{prefix}-{_check('service', service)}-{_check('colour', colour)}"


def xl_other_colour(colour: str | None, colours: list[str] | None = None) -> str:
    """The idle colour: the one that is not live (the first colour when nothing is live)."""
    colours = colours or ["blue", "green"]
    if len(colours) != 2:
        raise AnsibleFilterError(f"blue-green needs exactly two colours, got {colours}")
    if not colour:
        return colours[0]
    if colour not in colours:
        raise AnsibleFilterError(f"colour {colour!r} is not one of {colours}")
    return colours[1] if colour == colours[0] else colours[0]


def xl_release_id(version: str, now: str | None = None) -> str:
    """Release id pinned once per run: <UTC timestamp>-<version>."""
    moment = datetime.fromisoformat(now) if now else datetime.now(UTC)
    return f"{moment.strftime('%Y%m%dT%H%M%SZ')}-{version}"


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


def xl_instance_digest(settings: dict) -> str:
    """Content hash of the settings an instance is started with and keeps until it is replaced (environment,
    memory, stop timeout, container port, network): the io.xlerobot.config label. A live instance whose label
    differs from the target's runs other settings, so the release is not "already live" even on the same image.
    Values count as strings, so "60" and 60 are the same setting; runtime settings and secrets are not part of it."""
    if not isinstance(settings, dict):
        raise AnsibleFilterError(f"instance settings must be a mapping, got {type(settings).__name__}")

    def canonical(value):
        if isinstance(value, dict):
            return {str(key): canonical(item) for key, item in value.items()}
        if isinstance(value, list | tuple):
            return [canonical(item) for item in value]
        if isinstance(value, bool):
            return str(value).lower()
        return "" if value is None else str(value)

    text = json.dumps(canonical(settings), sort_keys=True, separators=(",", ":"))
    return "cfg-" + hashlib.sha256(text.encode()).hexdigest()[:16]


def _held_gpus(container: dict) -> list[str]:
    requests = (container.get("HostConfig") or {}).get("DeviceRequests") or []
    return sorted(str(device) for request in requests for device in (request.get("DeviceIDs") or []))


def xl_instance_drift(results: list, image: str, digest: str, secret_env: dict | None = None,
                      secret_names: list | None = None, gpus: dict | None = None) -> list[str]:
    """Why the inspected instances (docker_container_info results of a loop over hosts) are not the target: the
    empty list when every one exists, runs, runs `image`, carries the settings digest `digest`, was given exactly
    the GPUs `gpus` names for its host ({host: [GPU UUID]}; none where the host is not listed) and holds exactly
    the secret environment `secret_env` (the variables named in `secret_names`, XL_GATEWAY_API_KEY by default).
    A reason names the host and what differs; secret values never appear in it."""
    names = set(secret_names or ["XL_GATEWAY_API_KEY"]) | set(secret_env or {})
    wanted_secrets = {f"{name}={value}" for name, value in (secret_env or {}).items()}
    reasons = []
    for result in results or []:
        host = result.get("item", "?") if isinstance(result, dict) else "?"
        if not isinstance(result, dict) or not result.get("exists"):
            reasons.append(f"{host}: no instance")
            continue
        container = result.get("container") or {}
        config = container.get("Config") or {}
        labels = config.get("Labels") or {}
        if not (container.get("State") or {}).get("Running"):
            reasons.append(f"{host}: the instance is not running")
        elif config.get("Image") != image:
            reasons.append(f"{host}: runs image {config.get('Image')}")
        elif labels.get("io.xlerobot.config", "") != digest:
            reasons.append(f"{host}: started with settings {labels.get('io.xlerobot.config') or 'unlabelled'},"
                           f" the configuration asks for {digest}")
        elif (held_gpus := _held_gpus(container)) != (wanted_gpus := sorted((gpus or {}).get(host) or [])):
            reasons.append(f"{host}: runs on GPUs {', '.join(held_gpus) or 'none'}, the host's placement "
                           f"gives it {', '.join(wanted_gpus) or 'none'}")
        else:
            held = {entry for entry in config.get("Env") or [] if entry.split("=", 1)[0] in names}
            if held != wanted_secrets:
                reasons.append(f"{host}: holds other secrets ({', '.join(sorted(names))}) than the secrets layer")
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
