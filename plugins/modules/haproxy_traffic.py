#!/usr/bin/python
# Copyright: XleRobot deploy authors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
---
module: haproxy_traffic
short_description: Read or shift live traffic between the servers of one HAProxy backend
description:
  - Talks to the HAProxy runtime API (the admin stats socket); never reloads HAProxy.
  - With O(weights), sets every listed server's weight in one runtime-API call. Servers that gain weight
    must first be reported UP by HAProxy's own health checks, otherwise nothing is changed and the task fails.
  - Servers are raised before others are lowered, so the backend never has zero capacity mid-switch.
  - Without O(weights), only reports the backend's servers (weight, health, maintenance, drain).
  - With O(batch), moves the traffic of several backends in one runtime-API call (every service of a release
    run together), reads it back and undoes the whole batch on any refusal or difference. With O(backends),
    reports several backends from one C(show servers state).
options:
  socket:
    description: Path of the HAProxy admin socket (C(stats socket ... level admin)).
    type: path
    required: true
  backend:
    description: Backend name, for example C(be_asr). One of O(backend), O(backends) and O(batch) is required.
    type: str
  weights:
    description: Target weight per server name, 0 to 256. Servers not listed keep their weight.
    type: dict
  backends:
    description: Backends to report, all from one C(show servers state).
    type: list
    elements: str
  batch:
    description:
      - "Target weights of several backends, C({backend: {server: weight}}), applied in one runtime-API call."
    type: dict
  state_dir:
    description:
      - With O(batch), the deploy state directory; the batch is applied under the lock C(playbooks/abort.yml)
        takes, so a run's move and an abort's return of the traffic never interleave.
    type: path
  config_file:
    description:
      - With O(batch) or O(weights), the HAProxy configuration file; the weights of the servers that moved are
        written into it after the move (only their C(weight) values change), so a restart or reload keeps them.
    type: path
  release:
    description:
      - With O(batch) and O(state_dir), the release id of the run moving the traffic; once an abort was requested
        for it, the batch is refused and nothing changes.
    type: str
  wait_up_timeout:
    description: Seconds to wait for servers gaining weight to be UP in HAProxy before switching.
    type: float
    default: 30
  fallback_config:
    description:
      - When only reading and the socket does not answer (HAProxy stopped), read the weights from this
        configuration file instead; RV(source) tells which was used.
    type: path
  wait_drained_timeout:
    description:
      - After switching, seconds to wait for servers at weight 0 to finish their in-flight requests.
      - V(0) does not wait.
    type: float
    default: 0
attributes:
  check_mode:
    support: full
  diff_mode:
    support: full
  idempotent:
    support: full
notes:
  - The switch is a runtime change; persist it in the HAProxy configuration as well so a restart keeps it.
author:
  - XleRobot deploy authors
"""

EXAMPLES = r"""
- name: Switch all ASR traffic to green
  haproxy_traffic:
    socket: /run/haproxy/admin.sock
    backend: be_asr
    weights:
      asr_green: 100
      asr_blue: 0
    wait_drained_timeout: 30

- name: Every service of a run to its new colour in one runtime-API call
  haproxy_traffic:
    socket: /run/haproxy/admin.sock
    batch:
      be_asr: {asr_blue: 0, asr_green: 100}
      be_tts: {tts_green: 0, tts_blue: 100}
    state_dir: /var/lib/xlerobot/state
    release: 20261203T120000Z-1.1.0

- name: Read the live weights
  haproxy_traffic:
    socket: /run/haproxy/admin.sock
    backend: be_asr
    fallback_config: /etc/haproxy/haproxy.cfg
  register: asr_traffic
"""

RETURN = r"""
servers:
  description: Every server of the backend after the task, with its state.
  returned: always
  type: dict
  sample: {"asr_blue": {"weight": 0, "up": true, "op_state": "RUNNING", "maintenance": false, "draining": false}}
weights:
  description: Weight per server after the task (0 for servers in maintenance).
  returned: always
  type: dict
  sample: {"asr_blue": 0, "asr_green": 100}
source:
  description: Where the state was read, C(runtime) or C(config) (see O(fallback_config)).
  returned: always
  type: str
live:
  description: Servers taking new requests after the task (weight above zero, not in maintenance).
  returned: always
  type: list
  elements: str
  sample: ["asr_green"]
commands:
  description: Runtime-API commands sent (or that would be sent in check mode).
  returned: always
  type: list
  elements: str
in_flight_left:
  description: Requests still in flight on lowered servers when the drain wait ended.
  returned: when O(wait_drained_timeout) is above zero and something changed
  type: dict
backends:
  description:
    - With O(backends), each backend's C(servers), C(weights) and C(live).
    - With O(batch), each backend's C(changed), C(commands), C(before) and C(weights) after the task, and
      C(in_flight_left) when a drain wait ran.
  returned: with O(backends) or O(batch)
  type: dict
"""

from ansible.module_utils.basic import AnsibleModule
from ansible.module_utils.xl_haproxy import (
    HaproxyError,
    all_backends_state,
    apply_batch,
    apply_weights,
    backend_state,
    config_weights,
    live_servers,
    persist_weights,
    wait_drained,
    wait_until_drained,
)
from ansible.module_utils.xl_release import abort_message, abort_requested, traffic_guard


def _read_from_config(module, path, backend):
    try:
        with open(path, encoding="utf-8") as handle:
            weights = config_weights(handle.read()).get(backend)
    except OSError as exc:
        module.fail_json(msg=f"backend {backend}: HAProxy does not answer and {path} cannot be read: {exc}")
    if weights is None:
        module.fail_json(msg=f"backend {backend}: HAProxy does not answer and {path} has no such backend")
    servers = {name: {"weight": weight, "up": False, "maintenance": False, "draining": False,
                      "op_state": "UNKNOWN"} for name, weight in weights.items()}
    module.exit_json(changed=False, servers=servers, weights=weights, source="config",
                     live=sorted(name for name, weight in weights.items() if weight > 0), commands=[])


def _weights(servers):
    return {name: (0 if srv["maintenance"] else srv["weight"]) for name, srv in sorted(servers.items())}


def _batch(module, params):
    batch = {name: {server: int(weight) for server, weight in (weights or {}).items()}
             for name, weights in params["batch"].items()}
    with traffic_guard(params["state_dir"]):
        if params["release"] and params["state_dir"]:
            request = abort_requested(params["state_dir"], params["release"])
            if request:
                module.fail_json(msg=f"traffic not moved: the run was {abort_message(request)}", backends={},
                                 aborted=True)
        result = apply_batch(params["socket"], batch, wait_up_timeout=params["wait_up_timeout"],
                             check_mode=module.check_mode)
        if result["changed"] and not module.check_mode and params["config_file"]:
            persist_weights(params["config_file"], {name: moved["after"] for name, moved in result["backends"].items()})
    backends = {}
    for name, moved in result["backends"].items():
        backends[name] = {"changed": moved["changed"], "commands": moved["commands"], "before": moved["before"],
                          "weights": moved["after"]}
    if result["changed"] and not module.check_mode and params["wait_drained_timeout"] > 0:
        lowered = {name: [server for server, weight in batch[name].items()
                          if weight == 0 and result["backends"][name]["before"].get(server)]
                   for name in batch}
        left = wait_drained(params["socket"], {name: names for name, names in lowered.items() if names},
                            params["wait_drained_timeout"])
        for name, counts in left.items():
            backends[name]["in_flight_left"] = counts
    module.exit_json(changed=result["changed"], backends=backends, commands=result["commands"],
                     diff={"before": {name: moved["before"] for name, moved in backends.items()},
                           "after": {name: moved["weights"] for name, moved in backends.items()}})


def main():
    module = AnsibleModule(
        argument_spec=dict(
            socket=dict(type="path", required=True),
            backend=dict(type="str"),
            backends=dict(type="list", elements="str"),
            batch=dict(type="dict"),
            state_dir=dict(type="path"),
            release=dict(type="str"),
            config_file=dict(type="path"),
            weights=dict(type="dict"),
            wait_up_timeout=dict(type="float", default=30.0),
            wait_drained_timeout=dict(type="float", default=0.0),
            fallback_config=dict(type="path"),
        ),
        required_one_of=[("backend", "backends", "batch")],
        mutually_exclusive=[("backend", "backends", "batch")],
        required_by={"weights": "backend"},
        supports_check_mode=True,
    )
    params = module.params
    try:
        if params["batch"] is not None:
            _batch(module, params)
        if params["backends"] is not None:
            state = all_backends_state(params["socket"], params["backends"])
            module.exit_json(changed=False, backends={name: {"servers": servers, "weights": _weights(servers),
                                                             "live": live_servers(servers)}
                                                      for name, servers in state.items()})
        if not params["weights"]:
            try:
                servers = backend_state(params["socket"], params["backend"])
            except HaproxyError:
                if not params["fallback_config"]:
                    raise
                _read_from_config(module, params["fallback_config"], params["backend"])
            module.exit_json(changed=False, servers=servers, weights=_weights(servers), source="runtime",
                             live=live_servers(servers), commands=[])
        weights = {name: int(value) for name, value in params["weights"].items()}
        result = apply_weights(params["socket"], params["backend"], weights,
                               wait_up_timeout=params["wait_up_timeout"], check_mode=module.check_mode)
        extra = {}
        if result["changed"] and not module.check_mode and params["wait_drained_timeout"] > 0:
            lowered = [name for name, weight in weights.items() if weight == 0]
            extra["in_flight_left"] = wait_until_drained(params["socket"], params["backend"], lowered,
                                                         params["wait_drained_timeout"])
        servers = backend_state(params["socket"], params["backend"])
        if result["changed"] and not module.check_mode and params["config_file"]:
            persist_weights(params["config_file"], {params["backend"]: _weights(servers)})
    except HaproxyError as exc:
        where = params["backend"] or ", ".join(sorted(params["batch"] or {})) or ", ".join(params["backends"] or [])
        module.fail_json(msg=f"backend {where}: {exc}")
    except ValueError as exc:
        module.fail_json(msg=f"weights: {exc}")
    except OSError as exc:
        where = params["backend"] or ", ".join(sorted(params["batch"] or {}))
        module.fail_json(msg=f"backend {where}: the weights moved but {params['config_file']} could not be "
                             f"written: {exc}")
    live = live_servers(servers) if not module.check_mode else sorted(
        name for name, weight in result["after"].items() if weight > 0)
    module.exit_json(changed=result["changed"], servers=servers, weights=result["after"], source="runtime",
                     live=live, commands=result["commands"],
                     diff={"before": result["before"], "after": result["after"]}, **extra)


if __name__ == "__main__":
    main()
