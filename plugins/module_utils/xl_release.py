# Copyright: XleRobot deploy authors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The release engine's decisions, as plain functions over plain data.

A run of the engine (a deploy, rollback, refresh or reap of one or more services) is planned here from what the
running system says - HAProxy's servers, the instances' labels, the record - and from what the run asks for. The
task files of roles/release carry the plan out and report back what happened (gate results, weights set,
analyses), which the functions below fold into the run's progress; the filters in plugins/filter/xl_engine.py are
their way in from Ansible. Every service has an entry of its own in the plan and in the progress, built afresh for
the run, so nothing of one service's release can carry over to another's.

The words are Argo Rollouts': steps (setWeight, pause, analysis), abort, promote. A blue-green release is the one
step [setWeight: 100]; a canary walks its steps; a rolling release replaces the live colour's instances a batch of
hosts at a time. The steps of every service of a run advance together, in rounds: one pause for all, their
analyses side by side.
"""

from __future__ import annotations

import contextlib
import copy
import datetime
import fcntl
import hashlib
import json
import math
import os
import re
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

STRATEGIES = ("bluegreen", "canary", "rolling")
ENTRIES = ("deploy", "rollback", "refresh", "reap")
ABORT_SCOPES = ("run", "service")
COLOURS = ("blue", "green")
SECRET_ENV = ("XL_GATEWAY_API_KEY",)
ABORT_FILE = "deploy.abort"
TRAFFIC_LOCK_FILE = "traffic.lock"
_NAME = re.compile(r"^[a-z][a-z0-9]*$")
_VERSION = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")
_SERIAL = re.compile(r"^([0-9]+)(%?)$")
STEP_KEYS = ("setWeight", "pause", "analysis")


class ReleaseError(ValueError):
    """A request, a step list or an observation cannot be planned with; the message names what and why."""


# --- names: one scheme for containers, HAProxy backends and servers -----------------------------------------------

def _check(kind: str, value: Any) -> str:
    if not isinstance(value, str) or not _NAME.match(value):
        raise ReleaseError(f"{kind} {value!r} must be lower-case letters and digits, starting with a letter")
    return value


def backend(service: str) -> str:
    """HAProxy backend of a service: be_<service>."""
    return f"be_{_check('service', service)}"


def server(service: str, colour: str, host: str | None = None) -> str:
    """HAProxy server of one instance: <service>_<colour>, plus _<host> when a service spans several hosts."""
    name = f"{_check('service', service)}_{_check('colour', colour)}"
    return f"{name}_{re.sub(r'[^a-z0-9]', '', host.lower())}" if host else name


def servers(service: str, colour: str, hosts: Sequence[str], fleet: Sequence[str] | None = None) -> list[str]:
    """HAProxy servers of one colour of a service on `hosts`, one per host. Server names carry the host when the
    service spans several hosts: `fleet` (all its speech hosts) says so when `hosts` is only a batch."""
    if not hosts:
        raise ReleaseError(f"service {service!r} has no speech hosts")
    several = len(fleet if fleet is not None else hosts) > 1
    return [server(service, colour, host if several else None) for host in hosts]


def host_server(service: str, colour: str, host: str, fleet: Sequence[str]) -> str:
    """The HAProxy server of `service`'s `colour` instance on `host`."""
    return servers(service, colour, [host], fleet)[0]


def container(service: str, colour: str, prefix: str = "xl") -> str:
    """Container of one instance: <prefix>-<service>-<colour>."""
    return f"{prefix}-{_check('service', service)}-{_check('colour', colour)}"


def other_colour(colour: str | None, colours: Sequence[str] = COLOURS) -> str:
    """The idle colour: the one that is not live (the first colour when nothing is live)."""
    if len(colours) != 2:
        raise ReleaseError(f"blue-green needs exactly two colours, got {list(colours)}")
    if not colour:
        return colours[0]
    if colour not in colours:
        raise ReleaseError(f"colour {colour!r} is not one of {list(colours)}")
    return colours[1] if colour == colours[0] else colours[0]


def release_id(version: str, now: datetime.datetime | None = None) -> str:
    """Release id pinned once per run: <UTC timestamp>-<version>."""
    moment = now or datetime.datetime.now(datetime.UTC)
    return f"{moment.strftime('%Y%m%dT%H%M%SZ')}-{version}"


def utc_text(seconds: float) -> str:
    return datetime.datetime.fromtimestamp(seconds, datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


# --- the request --------------------------------------------------------------------------------------------------

def request_errors(*, entry: str, strategy: str, version: str, services: Sequence[str], catalogue: Mapping[str, Any],
                   hosts: Sequence[str], abort_scope: str = "run") -> list[str]:
    """Everything wrong with a run's request, each naming the value and what is accepted; empty when it is valid."""
    errors = []
    if entry not in ENTRIES:
        errors.append(f"entry {json.dumps(entry)} is not one of {', '.join(ENTRIES)}")
    if entry == "deploy":
        if strategy not in STRATEGIES:
            errors.append(f"strategy {json.dumps(strategy)} is not available; choose one of {', '.join(STRATEGIES)}")
        if not version:
            errors.append("no version given: add -e version=X.Y.Z (an image tag built with playbooks/build.yml)")
        elif not _VERSION.match(version) or version == "latest":
            errors.append(f"version {json.dumps(version)} is not a pinned image tag (-e version=X.Y.Z; 'latest' is "
                          f"refused)")
    if abort_scope not in ABORT_SCOPES:
        errors.append(f"abort_scope {json.dumps(abort_scope)} is not one of {', '.join(ABORT_SCOPES)}")
    if not services:
        errors.append("no service named (-e services=asr,tts)")
    unknown = [service for service in services if service not in catalogue]
    if unknown:
        errors.append(f"unknown service(s) {unknown} (known: {list(catalogue)})")
    if len(set(services)) != len(services):
        errors.append(f"services {list(services)} name a service twice")
    if not hosts:
        errors.append("the inventory has no host in group 'speech'")
    return errors


# --- what an instance is: its inspection, summarised, and why it is not the target ---------------------------------

def instance_settings(spec: Mapping[str, Any], gateway_url: str) -> dict[str, Any]:
    """The settings an instance of a service is started with and keeps until it is replaced: the schema's
    x-restart keys that reach the container. A service that calls others reaches them through the gateway."""
    return {
        "env": {"XL_GATEWAY_URL": gateway_url, **(spec.get("env") or {})},
        "memory": spec.get("memory", "3g"),
        "stop_timeout": spec.get("stop_timeout", 60),
        "container_port": spec.get("container_port"),
        "network": spec.get("network", "bridge"),
    }


def settings_digest(settings: Mapping[str, Any]) -> str:
    """Content hash of an instance's settings: the io.xlerobot.config label. Values count as strings, so "60" and
    60 are the same setting; runtime settings and secrets are not part of it."""
    if not isinstance(settings, Mapping):
        raise ReleaseError(f"instance settings must be a mapping, got {type(settings).__name__}")

    def canonical(value: Any) -> Any:
        if isinstance(value, Mapping):
            return {str(key): canonical(item) for key, item in value.items()}
        if isinstance(value, list | tuple):
            return [canonical(item) for item in value]
        if isinstance(value, bool):
            return str(value).lower()
        return "" if value is None else str(value)

    text = json.dumps(canonical(settings), sort_keys=True, separators=(",", ":"))
    return "cfg-" + hashlib.sha256(text.encode()).hexdigest()[:16]


def _held_gpus(container_info: Mapping[str, Any]) -> list[str]:
    requests = (container_info.get("HostConfig") or {}).get("DeviceRequests") or []
    return sorted(str(device) for request in requests for device in (request.get("DeviceIDs") or []))


def drift_reason(host: str, result: Mapping[str, Any] | None, image: str, digest: str,
                 secret_env: Mapping[str, str] | None = None, secret_names: Sequence[str] | None = None,
                 gpus: Sequence[str] | None = None) -> str | None:
    """Why one inspected instance (a docker_container_info result) is not the target, or None when it exists,
    runs `image`, carries the settings digest `digest`, was given exactly the GPUs `gpus` and holds exactly the
    secret environment `secret_env`. The reason names the host and what differs; secret values never appear."""
    if not isinstance(result, Mapping) or not result.get("exists"):
        return f"{host}: no instance"
    info = result.get("container") or {}
    config = info.get("Config") or {}
    labels = config.get("Labels") or {}
    if not (info.get("State") or {}).get("Running"):
        return f"{host}: the instance is not running"
    if config.get("Image") != image:
        return f"{host}: runs image {config.get('Image')}"
    if labels.get("io.xlerobot.config", "") != digest:
        return (f"{host}: started with settings {labels.get('io.xlerobot.config') or 'unlabelled'}, the configuration "
                f"asks for {digest}")
    held_gpus, wanted_gpus = _held_gpus(info), sorted(gpus or [])
    if held_gpus != wanted_gpus:
        return (f"{host}: runs on GPUs {', '.join(held_gpus) or 'none'}, the host's placement gives it "
                f"{', '.join(wanted_gpus) or 'none'}")
    names = set(secret_names or SECRET_ENV) | set(secret_env or {})
    held = {entry for entry in config.get("Env") or [] if entry.split("=", 1)[0] in names}
    if held != {f"{name}={value}" for name, value in (secret_env or {}).items()}:
        return f"{host}: holds other secrets ({', '.join(sorted(names))}) than the secrets layer"
    return None


def summarise_instances(results: Sequence[Mapping[str, Any]], *, targets: Mapping[str, Any],
                        digests: Mapping[str, str], secret_env: Mapping[str, str] | None = None,
                        gpus: Mapping[str, Mapping[str, Sequence[str]]] | None = None,
                        ) -> dict[str, dict[str, dict[str, dict[str, Any]]]]:
    """docker_container_info results of a loop over {service, colour, host} items, as
    {service: {colour: {host: summary}}}: whether the instance exists and runs, its image, version, release and
    restart count, whether its host could be reached, and why it is not the service's target (`targets`, with the
    settings digest `digests` and the secret environment `secret_env`). No environment value is kept, so the
    summary can be shown and planned with."""
    summary: dict[str, dict[str, dict[str, dict[str, Any]]]] = {}
    for result in results:
        item = result.get("item") or {}
        service, colour, host = item.get("service"), item.get("colour"), item.get("host")
        if not (service and colour and host):
            raise ReleaseError(f"an instance inspection lacks its service, colour or host: {item!r}")
        found = bool(result.get("exists"))
        info = result.get("container") or {} if found else {}
        labels = ((info.get("Config") or {}).get("Labels") or {}) if found else {}
        image = (info.get("Config") or {}).get("Image", "") if found else ""
        entry: dict[str, Any] = {
            "exists": found,
            "running": found and bool((info.get("State") or {}).get("Running")),
            "image": image,
            "digest": image.rsplit("@", 1)[1] if "@" in image else "",
            "version": labels.get("io.xlerobot.version", ""),
            "release": labels.get("io.xlerobot.release", ""),
            "restart_count": int(info.get("RestartCount", 0) or 0) if found else 0,
            "unreachable": bool(result.get("unreachable")),
            "why": str(result.get("msg", "")) if result.get("unreachable") else "",
        }
        target = targets.get(service)
        if entry["unreachable"]:
            entry["drift"] = f"{host}: unreachable"
        elif target:
            entry["drift"] = drift_reason(host, result, target["ref"], digests.get(service, ""), secret_env,
                                          gpus=((gpus or {}).get(service) or {}).get(host))
        else:
            entry["drift"] = None
        summary.setdefault(service, {}).setdefault(colour, {})[host] = entry
    return summary


# --- the status of one service ----------------------------------------------------------------------------------

def weights_of(servers_state: Mapping[str, Mapping[str, Any]]) -> dict[str, int]:
    """Weight per server as it takes traffic: 0 for a server in maintenance."""
    return {name: (0 if srv.get("maintenance") else int(srv.get("weight", 0))) for name, srv in servers_state.items()}


def live_colours(weights: Mapping[str, int], service: str, colours: Sequence[str], hosts: Sequence[str]) -> list[str]:
    """Colours of a service that take traffic: any of their servers has a weight above zero."""
    return [colour for colour in colours
            if any(weights.get(name, 0) > 0 for name in servers(service, colour, hosts))]


def service_status(service: str, *, colours: Sequence[str], hosts: Sequence[str],
                   servers_state: Mapping[str, Mapping[str, Any]],
                   instances: Mapping[str, Mapping[str, Mapping[str, Any]]]) -> dict[str, Any]:
    """What a service is now, from HAProxy's servers and its instances (summarise_instances):

    - ``state``: ``new`` (no colour takes traffic), ``live`` (one does) or ``split`` (both do);
    - ``live_colour`` and ``idle_colour`` (for a new service, the first colour is the idle one);
    - ``already_live``: the live colour's instance on every host is the target;
    - ``live_reasons``: why it is not (each naming the host);
    - ``idle_reusable``: the idle colour's instance on every host already is the target (a warm one);
    - ``idle_up``: HAProxy's health checks see every idle server UP;
    - ``from_version`` and ``from_digest`` of the live instances.
    """
    weights = weights_of(servers_state)
    live = live_colours(weights, service, colours, hosts)
    status: dict[str, Any] = {"service": service, "weights": {name: weights[name] for name in sorted(weights)}}
    if len(live) > 1:
        return {**status, "state": "split", "live_colour": "", "idle_colour": "", "already_live": False,
                "live_reasons": [], "idle_reusable": False, "idle_up": False, "from_version": "", "from_digest": ""}
    live_colour = live[0] if live else ""
    not_live = ["no colour takes traffic"]
    if live_colour and _removed_everywhere(instances.get(live_colour) or {}, hosts):
        # HAProxy kept the weights (its configuration persists them) but the instances were removed outside a run
        # (playbooks/teardown.yml, or by hand): nothing serves, so the run is a first release, and gates that
        # read back through the gateway wait for their judge to go live first.
        status["live_removed"] = live_colour
        not_live = [f"no instance of {live_colour}, the colour HAProxy sends traffic to, on any host"]
        live_colour = ""
    idle_colour = other_colour(live_colour, colours)

    def reasons(colour: str) -> list[str]:
        found = instances.get(colour) or {}
        return [found[host]["drift"] if host in found else f"{host}: no instance" for host in hosts
                if host not in found or found[host]["drift"]]

    live_instances = [(instances.get(live_colour) or {}).get(host) or {} for host in hosts] if live_colour else []
    running = [instance for instance in live_instances if instance.get("exists")]
    idle_servers = servers(service, idle_colour, hosts)
    return {
        **status,
        "state": "live" if live_colour else "new",
        "live_colour": live_colour,
        "idle_colour": idle_colour,
        "live_reasons": reasons(live_colour) if live_colour else not_live,
        "already_live": bool(live_colour) and not reasons(live_colour),
        "idle_reusable": not reasons(idle_colour),
        "idle_up": all((servers_state.get(name) or {}).get("up") for name in idle_servers),
        "from_version": running[0].get("version", "") if running else "",
        "from_digest": running[0].get("digest", "") if running else "",
    }


def _removed_everywhere(found: Mapping[str, Mapping[str, Any]], hosts: Sequence[str]) -> bool:
    """Every host was inspected and has no instance of the colour (a host not inspected or not reached proves
    nothing)."""
    return bool(hosts) and all(host in found and not found[host].get("exists") and not found[host].get("unreachable")
                               for host in hosts)


# --- steps: the strategies as data -----------------------------------------------------------------------------

def _pause_seconds(value: Any, where: str) -> float:
    duration = value.get("duration") if isinstance(value, Mapping) else value
    if isinstance(duration, str):
        match = re.fullmatch(r"([0-9]+(?:\.[0-9]+)?)(s|m|h)?", duration.strip())
        if not match:
            raise ReleaseError(f"{where}: pause duration {duration!r} must be seconds (30, '30s', '2m')")
        return float(match[1]) * {"s": 1, "m": 60, "h": 3600, None: 1}[match[2]]
    if isinstance(duration, bool) or not isinstance(duration, int | float) or duration < 0:
        raise ReleaseError(f"{where}: pause needs a duration in seconds (an indefinite pause waits for a promote, "
                           f"which this engine does not have), got {value!r}")
    return float(duration)


def parse_steps(steps: Any, where: str = "steps") -> list[dict[str, Any]]:
    """A strategy's steps as stages: each stage sets a weight and then holds it for beats, each beat a pause
    followed by an optional analysis. A step list that does not end at 100 % gets a last stage that promotes,
    as Argo Rollouts does at the end of its steps."""
    if not isinstance(steps, list) or not steps:
        raise ReleaseError(f"{where} must be a non-empty list of steps (setWeight, pause, analysis)")
    stages: list[dict[str, Any]] = []
    for index, step in enumerate(steps):
        here = f"{where}[{index}]"
        if not isinstance(step, Mapping) or len(step) != 1 or next(iter(step)) not in STEP_KEYS:
            raise ReleaseError(f"{here} must be one of {{setWeight: N}}, {{pause: {{duration: S}}}}, "
                               f"{{analysis: {{...}}}}, got {step!r}")
        kind, value = next(iter(step.items()))
        if kind == "setWeight":
            if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 100:
                raise ReleaseError(f"{here}: setWeight must be a whole percentage 0..100, got {value!r}")
            stages.append({"setWeight": value, "beats": []})
            continue
        if not stages:
            stages.append({"setWeight": None, "beats": []})
        beats = stages[-1]["beats"]
        if kind == "pause":
            seconds = _pause_seconds(value, here)
            if beats and beats[-1]["analysis"] is None and not beats[-1]["pause"]:
                beats[-1]["pause"] = seconds
            else:
                beats.append({"pause": seconds, "analysis": None})
        else:
            if value is not None and not isinstance(value, Mapping):
                raise ReleaseError(f"{here}: analysis must be a mapping (its keys override the defaults), "
                                   f"got {value!r}")
            # The step's number in the service's own list, so a failure names the step the SRE wrote.
            if beats and beats[-1]["analysis"] is None:
                beats[-1].update(analysis=dict(value or {}), step=index + 1)
            else:
                beats.append({"pause": 0.0, "analysis": dict(value or {}), "step": index + 1})
    if [stage["setWeight"] for stage in stages if stage["setWeight"] is not None][-1:] != [100]:
        stages.append({"setWeight": 100, "beats": []})
    return stages


def _deep_merge(base: Any, layer: Any) -> Any:
    if isinstance(base, Mapping) and isinstance(layer, Mapping):
        merged = dict(base)
        for key, value in layer.items():
            merged[key] = _deep_merge(base.get(key), value)
        return merged
    return copy.deepcopy(layer)


def layered_analysis(*layers: Mapping[str, Any] | None) -> dict[str, Any]:
    """Analysis settings layered in order (the engine's defaults, the service's canary.analysis, the step's own):
    each key over the one before, mappings merged; `metrics` merge by name, so a layer can change one metric's
    condition without restating its query. Metrics keep the order in which they first appear."""
    merged: dict[str, Any] = {}
    metrics: dict[str, dict[str, Any]] = {}
    for depth, layer in enumerate(layers):
        for key, value in (layer or {}).items():
            if key != "metrics":
                merged[key] = _deep_merge(merged.get(key), value)
        for index, metric in enumerate((layer or {}).get("metrics") or []):
            if not isinstance(metric, Mapping) or not metric.get("name"):
                raise ReleaseError(f"analysis layer {depth}: metrics[{index}] needs a name, got {metric!r}")
            metrics[metric["name"]] = _deep_merge(metrics.get(metric["name"], {}), metric)
    merged["metrics"] = list(metrics.values())
    return merged


def dependency_waves(services: Sequence[str], depends: Mapping[str, Sequence[str]]) -> dict[str, int]:
    """The wave of each service of a run: one more than the waves of the services of the run it depends on (it is
    gated once they have moved), 0 for one that depends on none."""
    waves: dict[str, int] = {}

    def wave(service: str, seen: tuple[str, ...]) -> int:
        if service in seen:
            raise ReleaseError(f"services call each other in a circle: {' -> '.join((*seen, service))}")
        if service not in waves:
            called = [other for other in depends.get(service) or [] if other in services and other != service]
            waves[service] = 1 + max((wave(other, (*seen, service)) for other in called), default=-1)
        return waves[service]

    for service in services:
        wave(service, ())
    return waves


def gate_dependencies(services: Sequence[str], catalogue: Mapping[str, Any], readback_url: str,
                      first_release: Sequence[str], strategy: str) -> dict[str, list[str]]:
    """What each service's gates need to have moved before they run.

    - Blue-green: a service that calls others (catalogue `calls`: the voice interaction) is gated after them, so its
      gate talks to their new versions, the combination its users get. A canary judges it under the split instead.
    - Any strategy: a gate that reads speech back (speech synthesis, the voice interaction) needs a live speech
      recognition behind the gateway; when that is a first release of the same run, it goes first. (Where speech
      recognition is already live, its live version is the judge.)"""
    readback_path = readback_url.split("://", 1)[-1].partition("/")[2]
    judge = next((name for name, spec in catalogue.items()
                  if readback_path and f"/{readback_path}" in (spec.get("paths") or [])), None)
    depends: dict[str, list[str]] = {}
    for service in services:
        spec = catalogue.get(service) or {}
        needs = [other for other in spec.get("calls") or [] if other in services
                 and (strategy != "canary" or other in first_release)]
        reads_back = any(gate.get("type") in ("speech", "interaction") for gate in spec.get("gates") or [])
        if reads_back and judge and judge != service and judge in first_release and judge not in needs:
            needs.append(judge)
        depends[service] = needs
    return depends


def plan_rounds(stages: Mapping[str, list[dict[str, Any]]], first_release: Sequence[str] = ()) -> list[dict[str, Any]]:
    """The stages of every service of a run as rounds that advance together. Stage lists of different lengths are
    aligned at their end, so every service reaches 100 % in the same round; a first release (nothing to compare
    with) goes live in the first round. Round r: the weight each service is set to, then beats of one pause (the
    longest of that beat's pauses) and the analyses of the services that have one in that beat."""
    if not stages:
        return []
    count = max(len(service_stages) for service_stages in stages.values())
    rounds: list[dict[str, Any]] = [{"index": index, "weights": {}, "beats": []} for index in range(count)]
    for service, service_stages in stages.items():
        offset = 0 if service in first_release else count - len(service_stages)
        for number, stage in enumerate(service_stages):
            round_ = rounds[offset + number]
            if stage["setWeight"] is not None:
                round_["weights"][service] = stage["setWeight"]
            for beat_index, beat in enumerate(stage["beats"]):
                while len(round_["beats"]) <= beat_index:
                    round_["beats"].append({"pause": 0.0, "analyses": {}, "steps": {}})
                target = round_["beats"][beat_index]
                target["pause"] = max(target["pause"], beat["pause"])
                if beat["analysis"] is not None:
                    target["analyses"][service] = beat["analysis"]
                    target["steps"][service] = beat.get("step")
    return [round_ for round_ in rounds if round_["weights"] or round_["beats"]]


# --- traffic: the one planner every strategy and the abort use --------------------------------------------------

def step_weights(service: str, hosts: Sequence[str], colours: Sequence[str], new_colour: str,
                 weight: int) -> dict[str, int]:
    """Weights that give `new_colour` `weight` percent of a service's traffic and the other colour the rest; every
    server of a colour alike."""
    if isinstance(weight, bool) or not isinstance(weight, int) or not 0 <= weight <= 100:
        raise ReleaseError(f"service {service}: a weight must be a whole percentage 0..100, got {weight!r}")
    old_colour = other_colour(new_colour, colours)
    return {**dict.fromkeys(servers(service, new_colour, hosts), weight),
            **dict.fromkeys(servers(service, old_colour, hosts), 100 - weight)}


def restore_weights(service: str, hosts: Sequence[str], colours: Sequence[str], live_colour: str) -> dict[str, int]:
    """Every request back to `live_colour`: what an abort, a rollback of a split and playbooks/abort.yml set."""
    return step_weights(service, hosts, colours, live_colour, 100)


def drain_weights(service: str, colour: str, batch: Sequence[str], fleet: Sequence[str]) -> dict[str, int]:
    """A rolling batch taken out of rotation: its servers at weight 0, so their in-flight requests finish."""
    return dict.fromkeys(servers(service, colour, batch, fleet), 0) if batch else {}


def put_back_weights(service: str, colour: str, batch: Sequence[str], fleet: Sequence[str],
                     before: Mapping[str, int]) -> dict[str, int]:
    """A rolling batch back in rotation at the weight each server had before the run (100 where it had none)."""
    return {name: int(before.get(name) or 100) for name in servers(service, colour, batch, fleet)} if batch else {}


def by_backend(weights: Mapping[str, Mapping[str, int]]) -> dict[str, dict[str, int]]:
    """{service: {server: weight}} as {backend: {server: weight}}: one runtime-API batch for every service."""
    return {backend(service): dict(server_weights) for service, server_weights in weights.items() if server_weights}


# --- rolling ----------------------------------------------------------------------------------------------------

def batch_size(serial: Any, host_count: int) -> int:
    """Hosts replaced at once: a percentage of the hosts ("25%", rounded down) or a count, at least one."""
    match = _SERIAL.match(str(serial).strip())
    if not match:
        raise ReleaseError(f"rolling serial {serial!r} must be a count (2) or a percentage of the hosts (25%)")
    number = int(match[1])
    size = host_count * number // 100 if match[2] else number
    return max(1, size)


def rolling_settings(spec: Mapping[str, Any], serial: Any = "", max_fail_percentage: Any = "") -> dict[str, Any]:
    """The command line wins over the service's own rolling settings, which win over 25 % and no failures."""
    own = spec.get("rolling") or {}
    chosen_serial = serial if str(serial) != "" else own.get("serial", "25%")
    budget = max_fail_percentage if str(max_fail_percentage) != "" else own.get("max_fail_percentage", 0)
    try:
        budget = int(budget)
    except (TypeError, ValueError) as exc:
        raise ReleaseError(f"rolling max_fail_percentage {budget!r} must be a whole percentage") from exc
    if not 0 <= budget <= 100:
        raise ReleaseError(f"rolling max_fail_percentage {budget} must be 0..100")
    return {"serial": str(chosen_serial), "max_fail_percentage": budget}


def within_budget(failed: int, budget_percent: int, host_count: int) -> bool:
    """Whether `failed` of `host_count` hosts stay within max_fail_percentage."""
    return failed * 100 <= budget_percent * host_count


def rolling_batches(hosts: Sequence[str], size: int) -> list[list[str]]:
    return [list(hosts[index:index + size]) for index in range(0, len(hosts), size)]


# --- gates ------------------------------------------------------------------------------------------------------

def golden_path(golden_dir: str, text: str) -> str:
    """Where the spoken clip of a gate's text lives (the file name is the text's hash)."""
    return f"{golden_dir}/{hashlib.sha1(text.encode(), usedforsecurity=False).hexdigest()}.wav"


def golden_texts(catalogue: Mapping[str, Any], services: Sequence[str]) -> list[str]:
    """Texts of the transcription and interaction gates of `services`, each once."""
    texts: list[str] = []
    for service in services:
        for gate in (catalogue.get(service) or {}).get("gates") or []:
            if gate.get("type") in ("transcription", "interaction") and gate.get("text") not in texts:
                texts.append(gate["text"])
    return texts


def fill_gates(gates: Sequence[Mapping[str, Any]], golden_dir: str, readback_url: str) -> list[dict[str, Any]]:
    """A service's gates with what each needs: the golden clip of a transcription or interaction gate, the
    read-back endpoint of a speech or interaction gate."""
    filled = []
    for gate in gates:
        gate = dict(gate)
        if gate.get("type") in ("speech", "interaction"):
            gate = {"readback_url": readback_url, **gate}
        if gate.get("type") in ("transcription", "interaction"):
            gate["audio"] = golden_path(golden_dir, gate["text"])
        filled.append(gate)
    return filled


def instance_url(spec: Mapping[str, Any], colour: str, address: str) -> str:
    return f"http://{address}:{spec['ports'][colour]}"


# --- the plan of a run --------------------------------------------------------------------------------------------

def _hosts_view(hosts: Mapping[str, Mapping[str, Any]] | Sequence[str]) -> dict[str, dict[str, Any]]:
    if isinstance(hosts, Mapping):
        return {name: {"address": "127.0.0.1", **dict(facts)} for name, facts in hosts.items()}
    return {name: {"address": "127.0.0.1"} for name in hosts}


def _service_servers(observed: Mapping[str, Any], service: str) -> dict[str, Any]:
    return dict((observed.get("servers") or {}).get(backend(service)) or {})


def _instance(service: str, colour: str, host: str, image: str, version: str, release: str) -> dict[str, Any]:
    return {"service": service, "colour": colour, "host": host, "image": image, "version": version,
            "release": release}


def _gate_target(service: str, spec: Mapping[str, Any], colour: str, host: str, hosts: Mapping[str, Any],
                 gates: list[dict[str, Any]], context: Mapping[str, Any]) -> dict[str, Any]:
    return {"service": service, "host": host, "colour": colour,
            "url": instance_url(spec, colour, hosts[host]["address"]), "gates": gates,
            "context": {**context, "colour": colour, "host": host}}


def plan_deploy(request: Mapping[str, Any], observed: Mapping[str, Any]) -> dict[str, Any]:
    """Plan a deploy (or a refresh, or the gated part of a rollback) of every service of the request.

    `request`: entry, strategy, release, services, catalogue, hosts ({host: {address}}), colours, targets
    ({service: {version, digest, ref}}), golden_dir, readback_url, canary_steps and canary_analysis (the engine's
    defaults), rolling_serial, rolling_max_fail_percentage, abort_scope, scale_down_delay, now (epoch seconds).
    `observed`: servers ({backend: {server: state}} from HAProxy), instances (summarise_instances), record
    (state.json's services).

    A service whose traffic is split, or whose rolling hosts cannot be reached beyond its failure budget, is a
    refusal of the whole run before anything changes; the others are planned."""
    entry = request.get("entry", "deploy")
    strategy = request.get("strategy", "bluegreen")
    catalogue = request["catalogue"]
    hosts = _hosts_view(request["hosts"])
    host_names = list(hosts)
    colours = list(request.get("colours") or COLOURS)
    release = request["release"]
    golden_dir, readback_url = request.get("golden_dir", ""), request.get("readback_url", "")
    instances = observed.get("instances") or {}
    plan: dict[str, Any] = {"entry": entry, "strategy": strategy, "release": release,
                            "abort_scope": request.get("abort_scope", "run"), "hosts": host_names,
                            "addresses": {host: facts["address"] for host, facts in hosts.items()},
                            "colours": colours, "services": {}, "refusals": [], "start": [], "reap": []}
    stages: dict[str, list[dict[str, Any]]] = {}
    first_release: list[str] = []
    rolling_services: list[str] = []
    for service in request["services"]:
        spec = catalogue[service]
        target = (request.get("targets") or {}).get(service)
        if not target:
            # A refresh of a service that was never deployed has nothing to refresh.
            plan["services"][service] = {"service": service, "action": "none", "target": {}, "state": "new",
                                         "live_colour": "", "never_deployed": True}
            continue
        status = service_status(service, colours=colours, hosts=host_names, servers_state=_service_servers(
            observed, service), instances=instances.get(service) or {})
        entry_plan: dict[str, Any] = {
            "service": service, "strategy": strategy, "target": dict(target), **status,
            "from": {"colour": status["live_colour"], "version": status["from_version"],
                     "digest": status["from_digest"]},
            "stop_timeout": spec.get("stop_timeout", 60),
        }
        plan["services"][service] = entry_plan
        if status["state"] == "split":
            plan["refusals"].append(
                f"service {service}: both colours take traffic ({status['weights']}); an earlier switch was "
                f"interrupted. Run playbooks/rollback.yml or set the weights by hand before deploying.")
            entry_plan["action"] = "refused"
            continue
        if status["already_live"]:
            entry_plan["action"] = "none"
            _plan_reap(plan, request, observed, service, spec, status)
            continue
        context = {"strategy": strategy if entry == "deploy" else entry, "version": target["version"]}
        gates = fill_gates(spec.get("gates") or [], golden_dir, readback_url)
        if strategy == "rolling" and status["state"] == "live":
            _plan_rolling(plan, {**request, "instances": instances}, entry_plan, spec, hosts, gates, context)
            rolling_services.append(service)
            continue
        new_colour = status["idle_colour"]
        entry_plan.update({
            "action": "reuse" if status["idle_reusable"] else "start",
            "new_colour": new_colour,
            "new_servers": servers(service, new_colour, host_names),
            "gates": [_gate_target(service, spec, new_colour, host, hosts, gates, context) for host in host_names],
            "restore": restore_weights(service, host_names, colours, status["live_colour"])
            if status["live_colour"] else dict.fromkeys(servers(service, new_colour, host_names), 0),
        })
        if not status["idle_reusable"]:
            plan["start"] += [_instance(service, new_colour, host, target["ref"], target["version"], release)
                              for host in host_names]
        if status["state"] == "new":
            first_release.append(service)
            stages[service] = [{"setWeight": 100, "beats": []}]
        elif strategy == "canary":
            stages[service] = parse_steps((spec.get("canary") or {}).get("steps") or request.get("canary_steps"),
                                          f"services.{service}.canary.steps")
        else:
            stages[service] = [{"setWeight": 100, "beats": []}]
    plan["todo"] = [service for service, entry_plan in plan["services"].items()
                    if entry_plan["action"] not in ("none", "refused")]
    plan["rounds"] = _traffic_rounds(plan, request, stages, first_release) if stages else []
    if rolling_services:
        plan["rounds"] += _rolling_rounds(plan, rolling_services)
    plan["analysis_defaults"] = request.get("canary_analysis") or {}
    return plan


def _plan_reap(plan: dict[str, Any], request: Mapping[str, Any], observed: Mapping[str, Any], service: str,
               spec: Mapping[str, Any], status: Mapping[str, Any]) -> None:
    """The old colour of an already-live service goes once its scale-down delay has passed and HAProxy sends it
    nothing: the instances that exist of it are listed to be removed."""
    live = ((observed.get("record") or {}).get(service) or {}).get("live") or {}
    if not live.get("colour") or live["colour"] != status["live_colour"]:
        return
    if int(live.get("retire_previous_after") or 0) > int(request.get("now", 0)):
        return
    old = other_colour(live["colour"], plan["colours"])
    found = ((observed.get("instances") or {}).get(service) or {}).get(old) or {}
    for host in plan["hosts"]:
        if (found.get(host) or {}).get("exists") and not (found.get(host) or {}).get("unreachable"):
            plan["reap"].append({"service": service, "colour": old, "host": host,
                                 "stop_timeout": spec.get("stop_timeout", 60)})


def _traffic_rounds(plan: dict[str, Any], request: Mapping[str, Any], stages: Mapping[str, list[dict[str, Any]]],
                    first_release: Sequence[str]) -> list[dict[str, Any]]:
    """Blue-green: one round per dependency wave, each gating its services and then moving them. Canary: every
    service gated together (a service that calls others is judged under the same split as its users), then the
    aligned rounds of their steps; first releases that others' gates need go live in rounds of their own first."""
    services = list(stages)
    depends = gate_dependencies(services, request["catalogue"], request.get("readback_url", ""), first_release,
                                plan["strategy"])
    waves = dependency_waves(services, depends)

    def wave_rounds(members_of: Sequence[str]) -> list[dict[str, Any]]:
        rounds = []
        for wave in sorted({waves[service] for service in members_of}):
            members = [service for service in members_of if waves[service] == wave]
            rounds.append({"gate": members, "weights": dict.fromkeys(members, 100), "beats": []})
        return rounds

    if plan["strategy"] != "canary":
        rounds = wave_rounds(services)
    else:
        needed = {other for needs in depends.values() for other in needs}
        early = [service for service in services if service in first_release and service in needed]
        rest = [service for service in services if service not in early]
        rounds = wave_rounds(early)
        steps = plan_rounds({service: stages[service] for service in rest},
                            [service for service in first_release if service in rest])
        if steps:
            steps[0]["gate"] = rest
        rounds += steps
    return [{**round_, "index": index} for index, round_ in enumerate(rounds)]


def _plan_rolling(plan: dict[str, Any], request: Mapping[str, Any], entry_plan: dict[str, Any],
                  spec: Mapping[str, Any], hosts: Mapping[str, Any], gates: list[dict[str, Any]],
                  context: Mapping[str, Any]) -> None:
    service, colour = entry_plan["service"], entry_plan["live_colour"]
    host_names = list(hosts)
    found = ((request.get("instances") or {}).get(service) or {}).get(colour) or {}
    settings = rolling_settings(spec, request.get("rolling_serial", ""), request.get("rolling_max_fail_percentage", ""))
    unreachable = [{"host": host, "why": f"unreachable: {(found.get(host) or {}).get('why', '')}"}
                   for host in host_names if (found.get(host) or {}).get("unreachable")]
    todo = [host for host in host_names if (found.get(host) or {}).get("drift") and
            not (found.get(host) or {}).get("unreachable")]
    size = batch_size(settings["serial"], len(host_names))
    before = {host: {"image": (found.get(host) or {}).get("image", ""),
                     "version": (found.get(host) or {}).get("version", ""),
                     "release": (found.get(host) or {}).get("release", ""),
                     "weight": entry_plan["weights"].get(host_server(service, colour, host, host_names), 100)}
              for host in host_names}
    entry_plan.update({
        "action": "rolling", "new_colour": colour, "ports": dict(spec["ports"]), "rolling": {
            **settings, "size": size, "todo": todo, "batches": rolling_batches(todo, size), "before": before,
            "unreachable": unreachable},
        "gate_specs": gates, "gate_context": dict(context),
        "restore": {name: int(before[host]["weight"] or 100) for host in host_names
                    if not (found.get(host) or {}).get("unreachable")
                    for name in [host_server(service, colour, host, host_names)]},
    })
    if not todo:
        entry_plan["action"] = "none"
        entry_plan["already_live"] = True
    elif not within_budget(len(unreachable), settings["max_fail_percentage"], len(host_names)):
        entry_plan["preflight_failure"] = (
            f"{len(unreachable)} of {len(host_names)} host(s) cannot be reached (max_fail_percentage "
            f"{settings['max_fail_percentage']}): {', '.join(item['host'] for item in unreachable)}; no host was "
            f"touched")


def _rolling_rounds(plan: dict[str, Any], services: Sequence[str]) -> list[dict[str, Any]]:
    """Batch k of every rolling service in round k: drained, replaced, gated and put back together."""
    batches = {service: plan["services"][service]["rolling"]["batches"] for service in services
               if plan["services"][service]["action"] == "rolling"}
    count = max((len(items) for items in batches.values()), default=0)
    return [{"index": index, "batch": {service: items[index] for service, items in batches.items()
                                       if index < len(items)}, "weights": {}, "beats": []}
            for index in range(count)]


def plan_rollback(request: Mapping[str, Any], observed: Mapping[str, Any]) -> dict[str, Any]:
    """Plan a rollback of every service of the request.

    Per service, from the record (state.json and history) and HAProxy: traffic split by a frozen or interrupted
    run goes back to the colour recorded as live (``restore``); otherwise, unless `restore_only`, the target is
    the previous release (or the last successful one of `to_version`). When the previous release's colour is the
    idle one and HAProxy sees all its servers UP it is a ``fast`` candidate: checked (its /version answers the
    recorded version and digest, observed["checks"]) and switched in one runtime-API batch with the others, no
    gate run again. Otherwise it is a gated deploy of the previous digest (``deploy``). A service with nothing to
    return to is a refusal of the whole run before anything changes."""
    catalogue = request["catalogue"]
    host_names = list(_hosts_view(request["hosts"]))
    colours = list(request.get("colours") or COLOURS)
    record = observed.get("record") or {}
    history = observed.get("history") or {}
    checks = observed.get("checks")
    to_version = request.get("to_version", "")
    plan: dict[str, Any] = {"entry": "rollback", "strategy": "bluegreen", "release": request["release"],
                            "abort_scope": request.get("abort_scope", "run"), "hosts": host_names,
                            "colours": colours, "services": {}, "refusals": [], "fast": {}, "deploy": {},
                            "checks": []}
    for service in request["services"]:
        servers_state = _service_servers(observed, service)
        weights = weights_of(servers_state)
        live = live_colours(weights, service, colours, host_names)
        recorded = record.get(service) or {}
        entry_plan: dict[str, Any] = {"service": service, "weights": weights, "action": "none"}
        plan["services"][service] = entry_plan
        if len(live) > 1:
            live_colour = (recorded.get("live") or {}).get("colour", "")
            if live_colour not in colours:
                plan["refusals"].append(f"service {service}: traffic is split ({weights}) and no live colour is "
                                        f"recorded in {request.get('state_dir', 'the state directory')}; set the "
                                        f"weights by hand.")
                entry_plan["action"] = "refused"
                continue
            entry_plan.update({"action": "restore", "live_colour": live_colour,
                               "to": {"colour": live_colour, "version": recorded["live"].get("version", ""),
                                      "digest": recorded["live"].get("digest", "")},
                               "weights_after": restore_weights(service, host_names, colours, live_colour),
                               "remove": [{"service": service, "colour": other_colour(live_colour, colours),
                                           "host": host,
                                           "stop_timeout": (catalogue.get(service) or {}).get("stop_timeout", 60)}
                                          for host in host_names]})
            plan["fast"][service] = entry_plan["weights_after"]
            continue
        if request.get("restore_only"):
            continue
        target = _rollback_target(service, recorded, history.get(service) or [], to_version, request)
        if target is None:
            plan["refusals"].append(
                f"service {service}: " + (f"no successful release of version {to_version} in the history"
                                          if to_version else "no previous release recorded")
                + f" in {request.get('state_dir', 'the state directory')}; nothing was changed.")
            entry_plan["action"] = "refused"
            continue
        live_colour = live[0] if live else ""
        live_record = recorded.get("live") or {}
        entry_plan.update({"target": target, "live_colour": live_colour,
                           "from": {"colour": live_colour, "version": live_record.get("version", ""),
                                    "digest": live_record.get("digest", "")}})
        if live_colour and live_record.get("colour") == live_colour and live_record.get("digest") == target["digest"]:
            entry_plan["action"] = "none"
            continue
        idle_colour = other_colour(live_colour, colours)
        previous_colour = (recorded.get("previous") or {}).get("colour") if not to_version else target.get("colour")
        idle_servers = servers(service, idle_colour, host_names)
        candidate = (bool(live_colour) and previous_colour == idle_colour
                     and all((servers_state.get(name) or {}).get("up") for name in idle_servers))
        entry_plan.update({"idle_colour": idle_colour, "new_colour": idle_colour,
                           "to": {"colour": idle_colour, "version": target["version"], "digest": target["digest"]}})
        if candidate:
            hosts = _hosts_view(request["hosts"])
            plan["checks"] += [{"service": service, "host": host, "colour": idle_colour,
                                "url": _check_url(catalogue.get(service) or {}, service, idle_colour, host, hosts,
                                                  host_names, servers_state),
                                "gates": [{"name": "warm-version", "type": "version", "version": target["version"],
                                           "digest": target["digest"], "timeout": 2}],
                                "context": {"strategy": "rollback", "colour": idle_colour, "host": host}}
                               for host in host_names]
        verified = candidate and checks is not None and all(
            result.get("passed") for result in checks if result.get("service") == service) and any(
            result.get("service") == service for result in checks)
        if verified:
            entry_plan["action"] = "fast"
            entry_plan["weights_after"] = step_weights(service, host_names, colours, idle_colour, 100)
            entry_plan["restore"] = restore_weights(service, host_names, colours, live_colour)
            plan["fast"][service] = entry_plan["weights_after"]
        elif candidate and checks is None:
            entry_plan["action"] = "check"
        else:
            entry_plan["action"] = "deploy"
            entry_plan["why_gated"] = _why_gated(candidate, live_colour, previous_colour, idle_colour, checks,
                                                 service)
            plan["deploy"][service] = target
    plan.update({"start": [], "rounds": [], "reap": [],
                 "addresses": {host: facts["address"] for host, facts in _hosts_view(request["hosts"]).items()}})
    if plan["deploy"] and observed.get("instances") is not None:
        # The services that cannot switch back to a warm colour: a gated blue-green deploy of the previous digest.
        gated = plan_deploy({**request, "entry": "rollback", "strategy": "bluegreen", "services": list(plan["deploy"]),
                             "targets": plan["deploy"]}, observed)
        for service in plan["deploy"]:
            gated["services"][service]["why_gated"] = plan["services"][service].get("why_gated", "")
            plan["services"][service] = gated["services"][service]
        plan.update({"start": gated["start"], "rounds": gated["rounds"]})
        plan["refusals"] += gated["refusals"]
    plan["todo"] = [service for service, entry_plan in plan["services"].items()
                    if entry_plan["action"] not in ("none", "refused")]
    return plan


def _check_url(spec: Mapping[str, Any], service: str, colour: str, host: str, hosts: Mapping[str, Any],
               host_names: Sequence[str], servers_state: Mapping[str, Mapping[str, Any]]) -> str:
    """Where a warm instance answers: its catalogue port on its host's address, or, where the run has no
    configuration loaded (the fast rollback), the address and port HAProxy itself sends its traffic to."""
    if (spec.get("ports") or {}).get(colour):
        return instance_url(spec, colour, hosts[host]["address"])
    found = servers_state.get(host_server(service, colour, host, host_names)) or {}
    return f"http://{found.get('address', hosts[host]['address'])}:{found.get('port', 0)}"


def _why_gated(candidate: bool, live_colour: str, previous_colour: str | None, idle_colour: str,
               checks: Sequence[Mapping[str, Any]] | None, service: str) -> str:
    if not live_colour:
        return "no colour takes traffic"
    if previous_colour != idle_colour:
        return f"the previous release is not on the idle colour {idle_colour}"
    if not candidate:
        return f"HAProxy does not see every {idle_colour} server UP (the warm colour is gone)"
    failed = [result for result in checks or [] if result.get("service") == service and not result.get("passed")]
    return "; ".join(str(result.get("msg", "the warm check failed")) for result in failed) or "the warm check failed"


def _rollback_target(service: str, recorded: Mapping[str, Any], history: Sequence[Mapping[str, Any]],
                     to_version: str, request: Mapping[str, Any]) -> dict[str, Any] | None:
    if to_version:
        named = [event for event in history if event.get("result") == "success"
                 and event.get("version") == to_version and event.get("digest")]
        if not named:
            return None
        last = named[-1]
        default_image = f"{request.get('namespace', 'xlerobot')}/{service}"
        image = (request["catalogue"].get(service) or {}).get("image", default_image)
        return {"version": last["version"], "digest": last["digest"],
                "ref": f"{request.get('registry', '')}/{image}@{last['digest']}",
                "colour": (last.get("to") or {}).get("colour", "")}
    previous = recorded.get("previous") or {}
    if not previous.get("digest"):
        return None
    return {"version": previous.get("version", ""), "digest": previous["digest"], "ref": previous.get("image", "")}


def plan_reap(request: Mapping[str, Any], observed: Mapping[str, Any]) -> dict[str, Any]:
    """The old colours of `services` whose scale-down delay has passed and to which HAProxy sends nothing."""
    host_names = list(_hosts_view(request["hosts"]))
    colours = list(request.get("colours") or COLOURS)
    plan: dict[str, Any] = {"entry": "reap", "release": request.get("release", ""), "hosts": host_names,
                            "colours": colours, "services": {}, "reap": [], "refusals": [], "todo": []}
    for service in request["services"]:
        status = service_status(service, colours=colours, hosts=host_names,
                                servers_state=_service_servers(observed, service),
                                instances=(observed.get("instances") or {}).get(service) or {})
        plan["services"][service] = {"service": service, "action": "none", **status}
        if status["state"] == "live":
            _plan_reap(plan, request, observed, service, request["catalogue"][service], status)
    return plan


# --- the run's progress: what the task files report back, folded in --------------------------------------------

def new_progress(plan: Mapping[str, Any], now: float) -> dict[str, Any]:
    """Every service of the run starts with an empty record of its own."""
    return {service: {"timeline": [], "gates": [], "checks": [], "moved": False, "failure": None, "step": "plan",
                      "result": None, "started_at": utc_text(now), "rolling": {"done": [], "failed": [],
                                                                               "current": [], "touched": []}}
            for service in plan["services"]}


def _failure(progress: dict[str, Any], service: str, step: str, reason: str, at: float | None = None) -> None:
    if not progress[service]["failure"]:
        progress[service]["failure"] = reason
        progress[service]["step"] = step
        if at is not None:
            progress[service]["failed_at"] = at


def note_step(progress: Mapping[str, Any], services: Sequence[str], step: str) -> dict[str, Any]:
    """Which step the services are at, for the messages and the record of an abort."""
    updated = copy.deepcopy(dict(progress))
    for service in services:
        if service in updated and not updated[service]["failure"]:
            updated[service]["step"] = step
    return updated


def note_gates(progress: Mapping[str, Any], results: Sequence[Mapping[str, Any]], key: str = "gates",
               ) -> dict[str, Any]:
    """Gate results (speech_gate's per-target results) into each service's record; the first failure of a
    service is its failure."""
    updated = copy.deepcopy(dict(progress))
    for result in results:
        service = result["service"]
        updated[service][key] += [{**gate, "host": result.get("host", "")} for gate in result.get("results") or []]
        if not result.get("passed") and key == "gates":
            _failure(updated, service, "gates", str(result.get("msg") or "the gates did not pass"),
                     result.get("finished_at"))
    return updated


def note_start_failure(progress: Mapping[str, Any], service: str, reason: str) -> dict[str, Any]:
    updated = copy.deepcopy(dict(progress))
    _failure(updated, service, "start", reason)
    return updated


def note_failure(progress: Mapping[str, Any], services: Sequence[str], step: str, reason: str) -> dict[str, Any]:
    """A failure that is not a gate's, an analysis' or an instance's: attributed to every service named."""
    updated = copy.deepcopy(dict(progress))
    for service in services:
        _failure(updated, service, step, reason)
    return updated


def note_weights(progress: Mapping[str, Any], round_: Mapping[str, Any], result: Mapping[str, Any],
                 services_moved: Sequence[str], now: float, spec_of: Mapping[str, Any] | None = None,
                 ) -> dict[str, Any]:
    """A weights batch (haproxy_traffic's result per backend) into the timeline of each service it moved."""
    updated = copy.deepcopy(dict(progress))
    after = result.get("backends") or {}
    for service in services_moved:
        weights = (after.get(backend(service)) or {}).get("weights") or {}
        spec = (spec_of or {}).get(service) or {"setWeight": round_.get("weights", {}).get(service)}
        updated[service]["timeline"].append({"step": len(updated[service]["timeline"]) + 1, "spec": spec,
                                             "at": utc_text(now), "weights": weights})
        updated[service]["moved"] = True
    return updated


def note_analyses(progress: Mapping[str, Any], results: Sequence[Mapping[str, Any]], now: float) -> dict[str, Any]:
    """Analysis results (canary_analysis' per-service results) into the timelines; a phase other than SUCCESSFUL
    is the service's failure."""
    updated = copy.deepcopy(dict(progress))
    for result in results:
        service = result["service"]
        phase = result.get("phase", "ERROR")
        updated[service]["timeline"].append({
            "step": len(updated[service]["timeline"]) + 1, "spec": {"analysis": result.get("spec") or {}},
            "at": utc_text(now), "analysis": {"phase": phase, "measurements": result.get("measurements") or [],
                                              "message": result.get("message", "")}})
        if phase != "SUCCESSFUL":
            step = (f"step {result['step']} (analysis, round {result.get('round', '?')})" if result.get("step")
                    else f"analysis at round {result.get('round', '?')}")
            _failure(updated, service, step,
                     f"canary analysis of {service}: {phase}: {result.get('message', '')}", result.get("finished_at"))
    return updated


def note_pause(progress: Mapping[str, Any], services: Sequence[str], seconds: float, now: float) -> dict[str, Any]:
    updated = copy.deepcopy(dict(progress))
    for service in services:
        updated[service]["timeline"].append({"step": len(updated[service]["timeline"]) + 1,
                                             "spec": {"pause": {"duration": seconds}}, "at": utc_text(now)})
    return updated


def restarted_instances(plan: Mapping[str, Any], baseline: Mapping[str, Any], results: Sequence[Mapping[str, Any]],
                        ) -> dict[str, list[str]]:
    """New instances that restarted (crashed) or vanished since their gates: {service: [host (why)]}. A crashed
    instance that Docker restarted answers again, and its fresh counters say nothing of the requests it dropped;
    its restart count does."""
    found: dict[str, list[str]] = {}
    for result in results:
        item = result.get("item") or {}
        service, host = str(item.get("service", "")), str(item.get("host", ""))
        before = int(((baseline.get(service) or {}).get(host)) or 0)
        if not result.get("exists"):
            found.setdefault(service, []).append(f"{host} (gone)")
            continue
        count = int((result.get("container") or {}).get("RestartCount", 0) or 0)
        if count > before:
            found.setdefault(service, []).append(f"{host} (restarted {count - before} time(s))")
    return found


def restart_baseline(results: Sequence[Mapping[str, Any]]) -> dict[str, dict[str, int]]:
    baseline: dict[str, dict[str, int]] = {}
    for result in results:
        item = result.get("item") or {}
        count = int((result.get("container") or {}).get("RestartCount", 0) or 0) if result.get("exists") else 0
        baseline.setdefault(str(item.get("service", "")), {})[str(item.get("host", ""))] = count
    return baseline


def note_restarts(progress: Mapping[str, Any], plan: Mapping[str, Any], restarted: Mapping[str, Sequence[str]],
                  prefix: str = "xl") -> dict[str, Any]:
    updated = copy.deepcopy(dict(progress))
    for service, where in restarted.items():
        entry = plan["services"][service]
        name = container(service, entry["new_colour"], prefix)
        _failure(updated, service, updated[service]["step"],
                 f"instance {name} of version {entry['target']['version']} is not running steadily on "
                 f"{', '.join(where)} since its gates passed: it crashed while taking traffic")
    return updated


def failed(progress: Mapping[str, Any], among: Sequence[str] | None = None) -> list[str]:
    """Services of the run that failed and have not been aborted yet."""
    return [service for service, record in progress.items()
            if record["failure"] and not record["result"] and (among is None or service in among)]


def active(plan: Mapping[str, Any], progress: Mapping[str, Any], among: Sequence[str] | None = None) -> list[str]:
    """Services still being released: planned for an action, not failed, not aborted."""
    return [service for service in (among if among is not None else plan.get("todo") or [])
            if service in progress and not progress[service]["failure"] and not progress[service]["result"]]


# --- rolling progress --------------------------------------------------------------------------------------------

def rolling_batch_step(plan: Mapping[str, Any], service: str, round_index: int) -> str:
    batches = plan["services"][service]["rolling"]["batches"]
    batch = batches[round_index]
    return f"batch {round_index + 1}/{len(batches)} ({', '.join(batch)})"


def note_rolling_gates(progress: Mapping[str, Any], plan: Mapping[str, Any], round_index: int,
                       reachable: Mapping[str, Sequence[str]], lost: Mapping[str, Sequence[Mapping[str, str]]],
                       results: Sequence[Mapping[str, Any]], now: float) -> dict[str, Any]:
    """Judge a rolling batch of every service in it: hosts whose gates failed, or lost since the run began, count
    against max_fail_percentage; beyond it the service fails (and is aborted), within it those hosts go back on
    the previous version and the rest count as done."""
    updated = copy.deepcopy(dict(progress))
    for service in (plan.get("rounds") or [])[round_index].get("batch", {}):
        entry = plan["services"][service]
        rolling = entry["rolling"]
        record = updated[service]
        own = [result for result in results if result.get("service") == service]
        record["gates"] += [{**gate, "host": result.get("host", "")} for result in own
                            for gate in result.get("results") or []]
        batch_failed = [dict(item) for item in lost.get(service) or []]
        batch_failed += [{"host": result["host"], "why": str(result.get("msg") or "the gates did not pass")}
                         for result in own if not result.get("passed")]
        current = list(reachable.get(service) or [])
        record["rolling"]["failed"] += batch_failed
        record["rolling"]["done"] += [host for host in current if host not in {f["host"] for f in batch_failed}]
        record["rolling"]["batch_failed"] = batch_failed
        record["timeline"].append({"step": round_index + 1, "spec": {"hosts": rolling["batches"][round_index]},
                                   "failed": batch_failed, "at": utc_text(now)})
        total = len(plan["hosts"])
        failed_count = len(record["rolling"]["failed"]) + len(rolling["unreachable"])
        if not within_budget(failed_count, rolling["max_fail_percentage"], total):
            whys = [item["why"] for item in rolling["unreachable"] + record["rolling"]["failed"]]
            _failure(updated, service, rolling_batch_step(plan, service, round_index),
                     f"{failed_count} of {total} host(s) failed (max_fail_percentage {rolling['max_fail_percentage']}):"
                     f" {'; '.join(whys)}")
    return updated


def rolling_put_back(plan: Mapping[str, Any], progress: Mapping[str, Any], round_index: int) -> list[dict[str, Any]]:
    """Instances that go back on the previous version after a batch: hosts whose gates failed, within budget."""
    instances = []
    for service in (plan.get("rounds") or [])[round_index].get("batch", {}):
        record = progress[service]
        if record["failure"]:
            continue
        entry = plan["services"][service]
        for item in record["rolling"].get("batch_failed") or []:
            before = entry["rolling"]["before"][item["host"]]
            if before["image"] and not item["why"].startswith("unreachable"):
                instances.append(_instance(service, entry["live_colour"], item["host"], before["image"],
                                           before["version"], before["release"]))
    return instances


def rolling_weights_back(plan: Mapping[str, Any], progress: Mapping[str, Any], round_index: int,
                         reachable: Mapping[str, Sequence[str]]) -> dict[str, dict[str, int]]:
    """The batch's reachable hosts back in rotation, for the services that did not fail."""
    weights: dict[str, dict[str, int]] = {}
    for service, hosts in reachable.items():
        if progress[service]["failure"]:
            continue
        entry = plan["services"][service]
        weights[service] = put_back_weights(service, entry["live_colour"], hosts, plan["hosts"], entry["weights"])
    return weights


# --- the abort: the one way back, for every strategy ------------------------------------------------------------

def abort_services(plan: Mapping[str, Any], progress: Mapping[str, Any], scope: str) -> list[str]:
    """Who an abort returns: with scope 'run', every service the run planned an action for (it may have moved,
    started or reused instances); with scope 'service', only those that failed."""
    failed_now = failed(progress)
    if scope == "service":
        return failed_now
    return [service for service in plan.get("todo") or [] if not progress[service]["result"]]


def abort_weights(plan: Mapping[str, Any], services: Sequence[str]) -> dict[str, dict[str, int]]:
    """Traffic of the aborted services back where it was before the run: all of it on the live colour (a first
    release: none on the new colour). A rolling service's batch stays drained until its hosts are restored."""
    return {service: dict(plan["services"][service].get("restore") or {}) for service in services
            if plan["services"][service].get("action") != "rolling"}


def abort_instances(plan: Mapping[str, Any], progress: Mapping[str, Any], services: Sequence[str],
                    ) -> dict[str, list[dict[str, Any]]]:
    """What an abort does to instances: the new colour's instances of blue-green and canary services go
    ('remove'); a rolling service's hosts touched so far go back on the version each ran before ('restore')."""
    remove: list[dict[str, Any]] = []
    restore: list[dict[str, Any]] = []
    for service in services:
        entry = plan["services"][service]
        if entry.get("action") == "rolling":
            record = progress[service]["rolling"]
            touched = list(dict.fromkeys(record["done"] + record["current"]
                                         + [item["host"] for item in record.get("batch_failed") or []
                                            if not item["why"].startswith("unreachable")]))
            for host in touched:
                before = entry["rolling"]["before"][host]
                if before["image"]:
                    restore.append(_instance(service, entry["live_colour"], host, before["image"],
                                             before["version"], before["release"]))
        elif entry.get("new_colour"):
            remove += [{"service": service, "colour": entry["new_colour"], "host": host,
                        "stop_timeout": 10} for host in plan["hosts"]]
    return {"remove": remove, "restore": restore}


def note_abort(progress: Mapping[str, Any], plan: Mapping[str, Any], services: Sequence[str], *, frozen: bool,
               traffic: Mapping[str, Any] | None, reason: str, now: float,
               weights_left: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The aborted services' records: result aborted (or frozen), the step and the reason, the restored weights in
    the timeline (so the report's plot follows the traffic to the end). A service aborted because another one
    failed names that one."""
    updated = copy.deepcopy(dict(progress))
    first = next((service for service in services if updated[service]["failure"]), None)
    for service in services:
        record = updated[service]
        if not record["failure"]:
            record["failure"] = (f"the run was aborted because {first} failed: {updated[first]['failure']}"
                                 if first else reason or "the run was aborted")
            record["step"] = record["step"] or "abort"
        record["result"] = "frozen" if frozen else "aborted"
        entry = plan["services"][service]
        if entry.get("action") == "rolling" and not frozen:
            rolling = record["rolling"]
            back = {item["host"] for item in rolling["failed"] + (rolling.get("batch_failed") or [])
                    if not item["why"].startswith("unreachable")} | set(rolling["done"]) | set(rolling["current"])
            record["rolling"]["restored"] = [host for host in plan["hosts"] if host in back
                                             and entry["rolling"]["before"][host]["image"]]
        if frozen:
            record["weights_left"] = ((weights_left or {}).get(backend(service)) or {}).get("weights", {})
        after = ((traffic or {}).get("backends") or {}).get(backend(service)) or {}
        record["traffic_restored"] = bool(after.get("changed"))
        if after.get("weights") and not frozen:
            record["timeline"].append({"step": len(record["timeline"]) + 1, "spec": {"abort": True},
                                       "at": utc_text(now), "weights": after["weights"]})
    return updated


# --- the record: events and live releases, written once per run -------------------------------------------------

def run_record(plan: Mapping[str, Any], progress: Mapping[str, Any], *, environment: str, started_at: str,
               now: float, scale_down_delay: int, weights_left: Mapping[str, Any] | None = None,
               ) -> dict[str, Any]:
    """What the run writes, once: an event for every service it acted on (success, aborted or frozen) and the
    new live release of every service it moved to success. {events: [...], live: {service: release}}."""
    events = []
    live: dict[str, dict[str, Any]] = {}
    at = utc_text(now)
    for service in plan.get("todo") or []:
        entry = plan["services"][service]
        record = progress[service]
        target = entry.get("target") or {}
        result = record["result"] or ("success" if not record["failure"] else "aborted")
        action = plan["entry"]
        strategy = _event_strategy(plan, entry)
        event: dict[str, Any] = {
            "action": action, "strategy": strategy, "result": result, "release": plan["release"],
            "environment": environment, "service": service, "version": target.get("version", ""),
            "digest": target.get("digest", ""),
            "from": {"colour": (entry.get("from") or {}).get("colour", entry.get("live_colour", "")),
                     "version": (entry.get("from") or {}).get("version", "")},
            "to": {"colour": entry.get("new_colour") or (entry.get("to") or {}).get("colour", ""),
                   "version": target.get("version", "")},
            "steps": record["timeline"], "gates": record["gates"], "started_at": record.get("started_at") or started_at,
            "at": at,
        }
        if entry.get("action") in ("reuse", "fast"):
            event["reused_warm_instance"] = True
        elif entry.get("action") in ("start", "deploy"):
            event["reused_warm_instance"] = False
        if record["checks"]:
            event["checks"] = record["checks"]
        if entry.get("action") == "fast":
            event["gates_skipped"] = "the warm colour served production before; its /version was checked instead"
        if entry.get("action") == "restore":
            event.update({"strategy": "restore", "version": (entry.get("to") or {}).get("version", ""),
                          "digest": (entry.get("to") or {}).get("digest", ""), "weights_before": entry["weights"],
                          "to": {"colour": entry["live_colour"],
                                 "version": (entry.get("to") or {}).get("version", "")}})
        if entry.get("action") == "rolling":
            rolling = record["rolling"]
            event.update({"to": {"colour": entry["live_colour"], "version": target.get("version", "")},
                          "updated_hosts": rolling["done"],
                          "hosts_left_on_previous": entry["rolling"]["unreachable"] + rolling["failed"]})
            if result != "success":
                event["failed_hosts"] = entry["rolling"]["unreachable"] + rolling["failed"]
                event["restored_hosts"] = rolling.get("restored", [])
        if result != "success":
            event.update({"step": record["step"], "reason": record["failure"],
                          "traffic_restored": bool(record.get("traffic_restored"))})
            if record.get("failed_at"):
                event["failed_at"] = record["failed_at"]
            if result == "frozen":
                event["weights_left"] = record.get("weights_left", {})
        events.append(event)
        if result == "success" and entry.get("action") != "restore":
            colour = event["to"]["colour"]
            retire = int(now) if entry.get("action") == "rolling" else int(now) + int(scale_down_delay)
            live[service] = {"colour": colour, "version": target.get("version", ""), "digest": target.get("digest", ""),
                             "image": target.get("ref", ""), "release": plan["release"], "at": at,
                             "retire_previous_after": retire}
    return {"events": events, "live": live}


def _event_strategy(plan: Mapping[str, Any], entry: Mapping[str, Any]) -> str:
    if entry.get("action") == "rolling":
        return "rolling"
    if entry.get("state") == "new" and plan.get("strategy") == "rolling":
        return "rolling"
    return str(plan.get("strategy") or "bluegreen")


def retire_now(plan: Mapping[str, Any], progress: Mapping[str, Any], scale_down_delay: int) -> list[dict[str, Any]]:
    """With a scale-down delay of 0 the old colour of every service that moved to success goes at once."""
    if int(scale_down_delay) != 0:
        return []
    retired = []
    for service in plan.get("todo") or []:
        entry, record = plan["services"][service], progress[service]
        if record["result"] or record["failure"] or entry.get("action") not in ("start", "reuse", "fast", "deploy"):
            continue
        if entry.get("live_colour"):
            retired += [{"service": service, "colour": entry["live_colour"], "host": host,
                         "stop_timeout": entry.get("stop_timeout", 60)} for host in plan["hosts"]]
    return retired


def summary_lines(plan: Mapping[str, Any], progress: Mapping[str, Any] | None = None, check_mode: bool = False,
                  scale_down_delay: int = 300) -> list[str]:
    """The plan, or the outcome, in words: one line per service. In check mode every line says what would be done."""
    lines = []
    would = "would " if check_mode else ""
    for service, entry in plan["services"].items():
        target = entry.get("target") or {}
        version = target.get("version", "")
        record = (progress or {}).get(service) or {}
        if entry["action"] == "refused":
            continue
        if entry["action"] == "none":
            if plan["entry"] == "rollback":
                lines.append(f"{service}: nothing to roll back")
            elif plan["entry"] == "reap":
                lines.append(f"{service}: no old colour due for retirement")
            else:
                where = entry.get("live_colour", "")
                lines.append(f"{service} {version} ({target.get('digest', '')}) is already live on {where}; "
                             f"nothing to do.")
            continue
        if record.get("result") in ("aborted", "frozen"):
            continue
        if entry["action"] == "rolling":
            rolling = entry["rolling"]
            done = record.get("rolling", {}).get("done", rolling["todo"]) if progress else rolling["todo"]
            text = (f"{service} {version}: {would}roll over {', '.join(done)} of {entry['live_colour']} in "
                    f"{len(rolling['batches'])} batch(es) of {rolling['size']}")
            left = (record.get("rolling") or {}).get("failed") or []
            if progress and (left or rolling["unreachable"]):
                names = [item["host"] for item in rolling["unreachable"] + left]
                text += (f"; {', '.join(names)} kept {entry['from']['version']} (gates failed or unreachable, see the"
                         f" report; within max_fail_percentage {rolling['max_fail_percentage']})")
            lines.append(text + ".")
        elif entry["action"] == "restore":
            lines.append(f"{service}: {would}return all traffic to the recorded live colour {entry['live_colour']} "
                         f"({entry['to']['version']}) and {would}remove the other colour's instances")
        elif entry["action"] in ("fast", "check") and (check_mode or not progress):
            lines.append(f"{service}: {would}switch back to the warm {entry['new_colour']} ({version}) in one "
                         f"runtime-API batch, after checking its /version; no gate runs again")
        elif entry["action"] == "fast":
            lines.append(f"{service} {version} is live again on the warm {entry['new_colour']} (its /version checked, "
                         f"switched back with the others in one runtime-API batch, no gate run again); "
                         f"{entry['live_colour']} ({(entry.get('from') or {}).get('version', '')}) stays warm for "
                         f"{scale_down_delay} s.")
        else:
            how = ("reuse the warm instances" if entry["action"] == "reuse" else
                   f"start {entry['new_colour']} instances on {', '.join(plan['hosts'])}")
            # On the version already live, say what made the live instances not the target (settings, GPUs,
            # secrets): otherwise a redeploy of the same version reads as a mistake.
            why = ""
            if entry.get("live_colour") and (entry.get("from") or {}).get("version") == version and \
                    entry.get("live_reasons"):
                why = f" (the live instances are not the target: {'; '.join(entry['live_reasons'])})"
            if check_mode:
                steps = _steps_text(plan, service)
                lines.append(f"{service} {version}: would {how}, gate them, then set the weights {steps}{why}")
            else:
                old = entry.get("live_colour") or ""
                first = (f"nothing was serving (no instance of {entry['live_removed']}, where HAProxy sent the "
                         f"traffic, on any host)" if entry.get("live_removed") else "first release of this service")
                tail = (first if not old else
                        f"{old} ({entry['from'].get('version') or 'no instance was running'}) "
                        + ("retired" if int(scale_down_delay) == 0
                           else f"stays warm for {scale_down_delay} s for an instant rollback"))
                reused = ", warm instance reused" if entry["action"] in ("reuse",) else ""
                lines.append(f"{service} {version} is live on {entry['new_colour']}{reused}; {tail}{why}.")
    for service in plan.get("reap") or []:
        lines.append(f"{service['service']}: {would}retire the old colour {service['colour']} on {service['host']}")
    return lines


def _steps_text(plan: Mapping[str, Any], service: str) -> str:
    parts = []
    for round_ in plan.get("rounds") or []:
        if service in round_.get("weights", {}):
            parts.append(f"{round_['weights'][service]} %")
        for beat in round_.get("beats") or []:
            if beat["pause"]:
                parts.append(f"pause {beat['pause']:g} s")
            if service in beat["analyses"]:
                parts.append("analysis")
    return " -> ".join(parts) or "(none)"


# --- abort requests: playbooks/abort.yml and the running run ----------------------------------------------------

def abort_path(state_dir: str) -> str:
    return os.path.join(state_dir, ABORT_FILE)


def abort_requested(state_dir: str, release: str) -> dict[str, Any] | None:
    """The abort request for `release` (who asked, when, why), or None. A request for another release (left by an
    abort of a run that ended) does not concern it."""
    try:
        with open(abort_path(state_dir), encoding="utf-8") as handle:
            request = json.load(handle)
    except (OSError, ValueError):
        return None
    return request if isinstance(request, dict) and request.get("release") == release else None


def request_abort(state_dir: str, release: str, by: str, reason: str = "", now: float | None = None) -> dict[str, Any]:
    """Ask the run of `release` to stop: written atomically, 0600, beside the deploy lock."""
    request = {"release": release, "by": by, "reason": reason,
               "at": utc_text(now if now is not None else datetime.datetime.now(datetime.UTC).timestamp())}
    handle, tmp = tempfile.mkstemp(dir=state_dir, prefix=".abort-")
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as out:
            json.dump(request, out)
        os.chmod(tmp, 0o600)
        os.replace(tmp, abort_path(state_dir))
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return request


def clear_abort(state_dir: str, keep_release: str | None = None) -> bool:
    """Remove an abort request, except one for `keep_release`. True when one was removed."""
    path = abort_path(state_dir)
    try:
        with open(path, encoding="utf-8") as handle:
            current = json.load(handle)
    except (OSError, ValueError):
        current = None
    if current is None and not os.path.exists(path):
        return False
    if keep_release and isinstance(current, dict) and current.get("release") == keep_release:
        return False
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)
    return True


def abort_message(request: Mapping[str, Any]) -> str:
    why = f": {request['reason']}" if request.get("reason") else ""
    return f"aborted by {request.get('by', 'someone')} at {request.get('at', '?')} (playbooks/abort.yml){why}"


@contextlib.contextmanager
def traffic_guard(state_dir: str | None) -> Iterator[None]:
    """Held while traffic moves: a run's own moves and playbooks/abort.yml's return of the traffic never
    interleave, so a run cannot move traffic again after an abort returned it."""
    if not state_dir:
        yield
        return
    os.makedirs(state_dir, mode=0o750, exist_ok=True)
    fd = os.open(os.path.join(state_dir, TRAFFIC_LOCK_FILE), os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


def finite(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


# --- what the task files hand to the modules ------------------------------------------------------------------

def gate_targets(plan: Mapping[str, Any], progress: Mapping[str, Any], services: Sequence[str]) -> list[dict[str, Any]]:
    """The gate targets of the services still being released among `services`."""
    return [target for service in active(plan, progress, services)
            for target in plan["services"][service].get("gates") or []]


def round_weights(plan: Mapping[str, Any], progress: Mapping[str, Any], round_: Mapping[str, Any],
                  ) -> dict[str, dict[str, int]]:
    """The weights of one round for the services still being released: {service: {server: weight}}."""
    weights = {}
    for service, weight in (round_.get("weights") or {}).items():
        if service not in active(plan, progress, [service]):
            continue
        entry = plan["services"][service]
        weights[service] = step_weights(service, plan["hosts"], plan["colours"], entry["new_colour"], int(weight))
    return weights


def beat_analyses(plan: Mapping[str, Any], progress: Mapping[str, Any], beat: Mapping[str, Any],
                  defaults: Mapping[str, Any], catalogue: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The analyses of one beat for the services still being released: each service's new colour against its
    live colour, its settings layered (the defaults, the service's canary.analysis, the step's own). A first
    release has no baseline and nothing to be judged against; it is not analysed."""
    analyses = []
    for service, step_analysis in (beat.get("analyses") or {}).items():
        entry = plan["services"][service]
        if service not in active(plan, progress, [service]) or not entry.get("live_colour"):
            continue
        layered = layered_analysis(defaults, ((catalogue.get(service) or {}).get("canary") or {}).get("analysis"),
                                   step_analysis)
        analyses.append({"service": service, "canary": entry["new_colour"], "baseline": entry["live_colour"],
                         "metrics": layered["metrics"], "window": layered.get("window", "1m"),
                         "count": int(layered.get("count", 3)), "interval": float(layered.get("interval", 10))})
    return analyses


def new_instance_items(plan: Mapping[str, Any], progress: Mapping[str, Any], services: Sequence[str] | None = None,
                       prefixes: Mapping[str, str] | None = None) -> list[dict[str, Any]]:
    """The new instances of the services still being released (blue-green and canary), one item per host, for an
    inspection loop."""
    items = []
    for service in active(plan, progress, services):
        entry = plan["services"][service]
        if entry.get("action") not in ("start", "reuse"):
            continue
        items += [{"service": service, "colour": entry["new_colour"], "host": host,
                   "name": container(service, entry["new_colour"], (prefixes or {}).get(host, "xl"))}
                  for host in plan["hosts"]]
    return items


def instance_items(services: Sequence[str], colours: Sequence[str], hosts: Sequence[str],
                   prefixes: Mapping[str, str] | None = None) -> list[dict[str, Any]]:
    """Every instance a run may find of `services`: each colour on each host."""
    return [{"service": service, "colour": colour, "host": host,
             "name": container(service, colour, (prefixes or {}).get(host, "xl"))}
            for service in services for colour in colours for host in hosts]


def run_annotation(plan: Mapping[str, Any]) -> dict[str, Any]:
    """What the lock says of the run, for playbooks/abort.yml: its services and strategy, and the one batch that
    returns their traffic to where it was before the run (a rolling service's is empty: its drained batch stays
    out of rotation until the run restores its hosts)."""
    services = list(plan.get("todo") or [])
    return {"entry": plan["entry"], "strategy": plan.get("strategy", ""), "services": services,
            "restore": by_backend(abort_weights(plan, services))}


def rolling_batch(plan: Mapping[str, Any], progress: Mapping[str, Any], round_: Mapping[str, Any],
                  ) -> dict[str, list[str]]:
    """The hosts of one rolling round, for the services still being released."""
    return {service: list(hosts) for service, hosts in (round_.get("batch") or {}).items()
            if service in active(plan, progress, [service])}


def note_rolling_current(progress: Mapping[str, Any], reachable: Mapping[str, Sequence[str]]) -> dict[str, Any]:
    """The hosts a rolling round is replacing now, kept so that an abort knows which ones it touched."""
    updated = copy.deepcopy(dict(progress))
    for service, hosts in reachable.items():
        updated[service]["rolling"]["current"] = list(hosts)
    return updated


def rolling_replace(plan: Mapping[str, Any], reachable: Mapping[str, Sequence[str]]) -> list[dict[str, Any]]:
    """The new instances of a rolling round: the live colour, in place, on the batch's reachable hosts."""
    instances = []
    for service, hosts in reachable.items():
        entry = plan["services"][service]
        instances += [_instance(service, entry["live_colour"], host, entry["target"]["ref"],
                                entry["target"]["version"], plan["release"]) for host in hosts]
    return instances


def rolling_gate_targets(plan: Mapping[str, Any], reachable: Mapping[str, Sequence[str]]) -> list[dict[str, Any]]:
    """The gate targets of a rolling round: the replaced instances of the batch's reachable hosts."""
    targets = []
    hosts = {host: {"address": address} for host, address in (plan.get("addresses") or {}).items()}
    for service, names in reachable.items():
        entry = plan["services"][service]
        spec = {"ports": entry["ports"]}
        targets += [_gate_target(service, spec, entry["live_colour"], host, hosts, entry["gate_specs"],
                                 entry["gate_context"]) for host in names]
    return targets


def failure_messages(plan: Mapping[str, Any], progress: Mapping[str, Any]) -> list[str]:
    """One sentence per aborted or frozen service: what failed, where, why, and where its traffic is now."""
    messages = []
    for service in plan.get("todo") or []:
        record = progress[service]
        if record["result"] not in ("aborted", "frozen"):
            continue
        entry = plan["services"][service]
        version = (entry.get("target") or {}).get("version", "")
        what = (f"{_event_strategy(plan, entry)} deploy" if plan["entry"] == "deploy" else plan["entry"])
        text = f"{what} of {service} {version} aborted at step '{record['step']}': {record['failure']}."
        live, new = entry.get("live_colour", ""), entry.get("new_colour", "")
        from_version = (entry.get("from") or {}).get("version", "")
        if record["result"] == "frozen":
            if entry.get("action") == "rolling":
                done = ", ".join(record["rolling"]["done"]) or "none updated"
                text += f" Frozen (rollback=false): hosts left as they were ({done} on {version})."
            else:
                text += (f" Frozen (rollback=false): traffic left as it was at the failure "
                         f"({record.get('weights_left', {})}) and the {new} instance left running; finish with "
                         f"playbooks/rollback.yml or a new deploy.")
        elif entry.get("action") == "rolling":
            back = record["rolling"].get("restored") or []
            if back:
                text += (f" {', '.join(back)} {'is' if len(back) == 1 else 'are'} back on {from_version}; every "
                         f"{live} server takes traffic again.")
            else:
                text += f" No host was changed; traffic stays on {live} ({from_version})."
        elif entry.get("action") in ("restore",):
            text += " Traffic stays where it was."
        elif live:
            text += f" Traffic stays on {live} ({from_version}); the {new} instance was removed."
        else:
            text += f" No traffic had been served by this service; the {new} instance was removed."
        messages.append(text)
    return messages


# --- observations and small views for the task files ----------------------------------------------------------

def observed(servers_result: Mapping[str, Any], record_result: Mapping[str, Any],
             instances: Mapping[str, Any] | None = None, checks: Sequence[Mapping[str, Any]] | None = None,
             ) -> dict[str, Any]:
    """What the observe tasks registered, as the planners read it: HAProxy's servers per backend, the record per
    service, each service's history, the instance summaries and the warm checks (None: not run yet)."""
    history: dict[str, list[dict[str, Any]]] = {}
    for event in record_result.get("history") or []:
        history.setdefault(event.get("service", ""), []).append(event)
    backends = servers_result.get("backends") or {}
    return {"servers": {name: item.get("servers") or {} for name, item in backends.items()},
            "record": (record_result.get("state") or {}).get("services") or {}, "history": history,
            "instances": instances, "checks": checks}


def targets_from_manifests(results: Sequence[Mapping[str, Any]], version: str, registry: str,
                           catalogue: Mapping[str, Any]) -> dict[str, dict[str, str]]:
    """The registry's answers (uri HEAD of each service's manifest) as each service's target: version, digest and
    the reference by digest every instance is started from."""
    targets = {}
    for result in results:
        service = result["item"]
        digest = result.get("docker_content_digest") or ""
        if not digest.startswith("sha256:"):
            raise ReleaseError(f"the registry {registry} gave service {service} no digest for {version}")
        targets[service] = {"version": version, "digest": digest,
                            "ref": f"{registry}/{catalogue[service]['image']}@{digest}"}
    return targets


def live_targets(services_record: Mapping[str, Any], services: Sequence[str]) -> dict[str, dict[str, str]]:
    """A refresh's targets: the live release each service has on record (a service never deployed has none)."""
    targets = {}
    for service in services:
        live = (services_record.get(service) or {}).get("live") or {}
        if live.get("image") and live.get("digest"):
            targets[service] = {"version": live.get("version", ""), "digest": live["digest"], "ref": live["image"]}
    return targets


def final_weights(plan: Mapping[str, Any]) -> dict[str, dict[str, int]]:
    """The weights the run ends with when everything passes, per backend (what check mode shows as a diff)."""
    weights: dict[str, dict[str, int]] = {}
    for service in plan.get("todo") or []:
        entry = plan["services"][service]
        if entry.get("weights_after"):
            weights[service] = dict(entry["weights_after"])
        elif entry.get("action") in ("start", "reuse"):
            weights[service] = step_weights(service, plan["hosts"], plan["colours"], entry["new_colour"], 100)
    return by_backend(weights)


def note_preflight(progress: Mapping[str, Any], plan: Mapping[str, Any]) -> dict[str, Any]:
    """Failures the plan found before anything changed that belong to the act (a rolling service whose
    unreachable hosts exceed its failure budget), as failures of those services."""
    updated = copy.deepcopy(dict(progress))
    for service, entry in plan["services"].items():
        if entry.get("preflight_failure"):
            _failure(updated, service, "preflight", entry["preflight_failure"])
    return updated


def restore_removals(plan: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The other colour's instances of every service whose split traffic a rollback returns."""
    return [item for service in plan.get("todo") or [] for item in plan["services"][service].get("remove") or []]


def rolling_hosts(plan: Mapping[str, Any], progress: Mapping[str, Any], round_: Mapping[str, Any],
                  pings: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """A rolling round's hosts that answered the ping, and those lost since the run began, per service."""
    lost_hosts = {result.get("item"): str(result.get("msg", "")) for result in pings if result.get("unreachable")}
    reachable: dict[str, list[str]] = {}
    lost: dict[str, list[dict[str, str]]] = {}
    for service, hosts in rolling_batch(plan, progress, round_).items():
        reachable[service] = [host for host in hosts if host not in lost_hosts]
        lost[service] = [{"host": host, "why": f"unreachable: {lost_hosts[host]}"} for host in hosts
                         if host in lost_hosts]
    return {"reachable": reachable, "lost": lost}


def note_rolling_step(progress: Mapping[str, Any], plan: Mapping[str, Any], round_index: int) -> dict[str, Any]:
    updated = copy.deepcopy(dict(progress))
    for service in (plan.get("rounds") or [])[round_index].get("batch") or {}:
        if not updated[service]["failure"]:
            updated[service]["step"] = rolling_batch_step(plan, service, round_index)
    return updated


def note_batch_weights(progress: Mapping[str, Any], result: Mapping[str, Any]) -> dict[str, Any]:
    """The weights a rolling batch went back into rotation with, on that batch's timeline entry."""
    updated = copy.deepcopy(dict(progress))
    for name, moved in (result.get("backends") or {}).items():
        service = name.removeprefix("be_")
        if service in updated and updated[service]["timeline"]:
            updated[service]["timeline"][-1]["weights"] = moved.get("weights") or {}
    return updated


def restored_targets(plan: Mapping[str, Any], progress: Mapping[str, Any], services: Sequence[str],
                     catalogue: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The liveness and readiness gates of the rolling hosts an abort put back on their previous version."""
    targets = []
    hosts = {host: {"address": address} for host, address in (plan.get("addresses") or {}).items()}
    for item in abort_instances(plan, progress, services)["restore"]:
        spec = catalogue[item["service"]]
        gates = [gate for gate in spec.get("gates") or [] if gate.get("type") in ("liveness", "readiness")]
        targets.append(_gate_target(item["service"], spec, item["colour"], item["host"], hosts, gates,
                                    {"strategy": "rolling abort"}))
    return targets


def rolling_restore(plan: Mapping[str, Any], services: Sequence[str]) -> dict[str, dict[str, int]]:
    """Every reachable server of an aborted rolling service's live colour back at its weight before the run."""
    return {service: dict(plan["services"][service].get("restore") or {}) for service in services
            if plan["services"][service].get("action") == "rolling"}


def inspections(host_results: Sequence[Mapping[str, Any]], items: Sequence[Mapping[str, Any]],
                ) -> list[dict[str, Any]]:
    """docker_instances results of a loop over hosts, as one result per instance item ({service, colour, host,
    name}): what docker_container_info returns, with the item, or the host's unreachability."""
    by_host = {result.get("item"): result for result in host_results}
    found = []
    for item in items:
        result = by_host.get(item["host"]) or {}
        if result.get("unreachable"):
            found.append({"item": dict(item), "unreachable": True, "msg": str(result.get("msg", ""))})
            continue
        container = (result.get("containers") or {}).get(item["name"]) or {}
        found.append({"item": dict(item), "exists": bool(container.get("exists")),
                      **({"container": container["container"]} if container.get("exists") else {})})
    return found
