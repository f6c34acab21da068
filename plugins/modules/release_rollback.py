#!/usr/bin/python
# Copyright: XleRobot deploy authors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
---
module: release_rollback
short_description: Switch services back to their warm previous release in one HAProxy runtime-API batch
description:
  - The fast path of C(playbooks/rollback.yml), in one process on the gateway host, so that traffic is back
    within about a second of the command's start. It takes the environment's deploy lock (after breaking a lock
    left by an interrupted run, when asked), reads the record and HAProxy's servers, and plans the rollback with
    the release engine's planner (C(xl_release.plan_rollback)).
  - A service whose traffic is split by a frozen or interrupted run goes back to the colour recorded as live. A
    service whose previous release is on the idle colour, with every server of it UP in HAProxy, has its warm
    instances asked for C(/version) (side by side); when each answers the recorded version and an image of the
    recorded digest, it is switched back with the others in one runtime-API batch, read back and undone on any
    error, and no gate runs again (the warm colour served production before).
  - Every other service is left alone and returned in RV(remaining) with why; the playbook then rolls it back
    through the release engine, as a gated blue-green deploy of the previous digest.
  - The state and history are written once for the services switched, and the weights into the HAProxy
    configuration; the deploy reports follow in the playbook.
options:
  state_dir:
    description: The environment's deploy state directory on the gateway host.
    type: path
    required: true
  socket:
    description: HAProxy admin socket.
    type: path
    required: true
  config_file:
    description: HAProxy configuration file, whose server weights are rewritten to the switched traffic.
    type: path
  services:
    description: Services to roll back; empty, every service the record knows.
    type: list
    elements: str
    default: []
  hosts:
    description: The speech hosts, each with the C(address) the gateway reaches it on.
    type: dict
    required: true
  colours:
    description: The two colours.
    type: list
    elements: str
    default: [blue, green]
  to_version:
    description: Return to the last successful release of this version instead of the previous one.
    type: str
    default: ""
  restore_only:
    description: Only return split traffic to the recorded live colour; never switch to an older release.
    type: bool
    default: false
  break_lock:
    description: Remove a deploy lock left by an interrupted run first.
    type: bool
    default: false
  release:
    description: Release id of this rollback (the lock is taken for it); empty, one is made (C(<UTC time>-rollback)).
    type: str
    default: ""
  environment:
    description: Environment name recorded with the events.
    type: str
    default: local
  registry:
    description: Registry of the images (the reference of a named version's image).
    type: str
    default: ""
  scale_down_delay:
    description: Seconds the colour switched away from stays warm (recorded for the reaper).
    type: int
    default: 300
  keep_lock:
    description: Keep the lock when services remain for the gated path, which takes it for the same release.
    type: bool
    default: true
attributes:
  check_mode:
    support: full
    details: In check mode it plans and checks the warm colours, says what it would switch, and changes nothing.
  diff_mode:
    support: full
  idempotent:
    support: partial
    details: A rollback switches between two releases; run twice it switches back again, as a rollback should.
author:
  - XleRobot deploy authors
"""

EXAMPLES = r"""
- name: Switch every service back to its warm previous colour
  release_rollback:
    state_dir: /var/lib/xlerobot/state
    socket: /run/haproxy/admin.sock
    config_file: /etc/haproxy/haproxy.cfg
    hosts: {localhost: {address: 127.0.0.1}}
    release: 20261203T120000Z-rollback
  register: fast
"""

RETURN = r"""
switched:
  description: Services whose traffic moved (back to a warm colour, or a split returned to the live colour).
  returned: always
  type: list
  elements: str
remaining:
  description: Services the fast path could not take, each with why; the release engine rolls them back with gates.
  returned: always
  type: dict
events:
  description: The history events written, one per switched service (the deploy reports are made of them).
  returned: always
  type: list
  elements: dict
removals:
  description: Instances of the other colour of a returned split, for the playbook to remove.
  returned: always
  type: list
  elements: dict
lines:
  description: What was done (or would be done, in check mode), one line per service, the services left to the
    gated path with why.
  returned: always
  type: list
  elements: str
release:
  description: Release id of the rollback.
  returned: always
  type: str
lock_kept:
  description: Whether the lock is still held for RV(remaining).
  returned: always
  type: bool
"""

import getpass
import os
import time

from ansible.module_utils.basic import AnsibleModule
from ansible.module_utils.xl_gates import run_targets
from ansible.module_utils.xl_haproxy import HaproxyError, all_backends_state, apply_batch, persist_weights
from ansible.module_utils.xl_lock import LockError, LockHeld, acquire, break_lock, release
from ansible.module_utils.xl_release import (
    ReleaseError,
    backend,
    by_backend,
    new_progress,
    note_gates,
    note_weights,
    plan_rollback,
    release_id,
    run_record,
    summary_lines,
    traffic_guard,
)
from ansible.module_utils.xl_state import StateError, load_state, read_history, record_run


def _user():
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return f"uid {os.getuid()}"


def _observed(params, state, services):
    history = {}
    for event in read_history(params["state_dir"]):
        history.setdefault(event.get("service", ""), []).append(event)
    servers = all_backends_state(params["socket"], [backend(service) for service in services])
    return {"servers": servers, "record": state["services"], "history": history, "instances": None}


def _checked(targets):
    """The warm colours' /version checks; one that fails is asked once more half a second later, so that one
    answer lost on a busy host does not send its service down the gated path (minutes instead of seconds)."""
    if not targets:
        return []
    checks = run_targets(targets, concurrency=8)
    again = [target for target, check in zip(targets, checks, strict=True) if not check.get("passed")]
    if not again:
        return checks
    time.sleep(0.5)
    retried = iter(run_targets(again, concurrency=8))
    return [check if check.get("passed") else next(retried) for check in checks]


def main():
    module = AnsibleModule(
        argument_spec=dict(
            state_dir=dict(type="path", required=True),
            socket=dict(type="path", required=True),
            config_file=dict(type="path"),
            services=dict(type="list", elements="str", default=[]),
            hosts=dict(type="dict", required=True),
            colours=dict(type="list", elements="str", default=["blue", "green"]),
            to_version=dict(type="str", default=""),
            restore_only=dict(type="bool", default=False),
            break_lock=dict(type="bool", default=False),
            release=dict(type="str", default=""),
            environment=dict(type="str", default="local"),
            registry=dict(type="str", default=""),
            scale_down_delay=dict(type="int", default=300),
            keep_lock=dict(type="bool", default=True),
        ),
        supports_check_mode=True,
    )
    params = module.params
    started = time.time()
    params["release"] = params["release"] or release_id("rollback")
    state_dir = params["state_dir"]
    locked = False
    try:
        state = load_state(state_dir)
        services = params["services"] or sorted(state["services"])
        unknown = [service for service in services if service not in state["services"]]
        if unknown:
            module.fail_json(msg=f"invalid rollback request: no release of {unknown} is recorded in {state_dir} "
                                 f"(recorded: {sorted(state['services'])}); nothing was changed.")
        if not module.check_mode:
            if params["break_lock"]:
                break_lock(state_dir)
            acquire(state_dir, _user(), params["release"], f"rollback of {','.join(services)}"
                    + (f" to {params['to_version']}" if params["to_version"] else ""))
            locked = True
        request = {"entry": "rollback", "release": params["release"], "services": services, "catalogue": {},
                   "hosts": params["hosts"], "colours": params["colours"], "to_version": params["to_version"],
                   "restore_only": params["restore_only"], "registry": params["registry"], "state_dir": state_dir,
                   "now": started}
        observed = _observed(params, state, services)
        plan = plan_rollback(request, observed)
        if plan["refusals"]:
            raise ReleaseError(" ".join(plan["refusals"]))
        checks = _checked(plan["checks"])
        plan = plan_rollback(request, {**observed, "checks": checks})
        fast = {service: weights for service, weights in plan["fast"].items()}
        remaining = {service: entry.get("why_gated", "") for service, entry in plan["services"].items()
                     if entry["action"] in ("deploy", "check")}
        progress = new_progress(plan, started)
        progress = note_gates(progress, [check for check in checks if check["service"] in fast], "checks")
        moved = {"changed": False, "backends": {}}
        with traffic_guard(state_dir):
            if fast:
                moved = apply_batch(params["socket"], by_backend(fast), wait_up_timeout=5,
                                    check_mode=module.check_mode)
                if moved["changed"] and not module.check_mode and params["config_file"]:
                    persist_weights(params["config_file"], {name: item["after"]
                                                           for name, item in moved["backends"].items()})
        progress = note_weights(progress, {}, {"backends": {name: {"weights": item["after"]}
                                                            for name, item in moved["backends"].items()}},
                                list(fast), time.time())
        switched_plan = {**plan, "todo": list(fast),
                         "services": {service: plan["services"][service] for service in fast}}
        record = run_record(switched_plan, progress, environment=params["environment"],
                            started_at=progress[services[0]]["started_at"] if services else "", now=time.time(),
                            scale_down_delay=params["scale_down_delay"])
        if fast and not module.check_mode:
            record_run(state_dir, record["live"], record["events"])
        removals = [item for service in fast for item in plan["services"][service].get("remove") or []]
        lines = summary_lines(switched_plan, None if module.check_mode else progress, module.check_mode,
                              params["scale_down_delay"])
        lines += [f"{service}: no warm colour to switch back to ({why}); rolled back with gates below"
                  for service, why in remaining.items()]
        keep = bool(remaining) and params["keep_lock"]
        if locked and not keep:
            release(state_dir, params["release"])
            locked = False
    except LockHeld as exc:
        module.fail_json(msg=str(exc), switched=[], remaining={}, release=params["release"])
    except (ReleaseError, LockError, HaproxyError, StateError, OSError) as exc:
        if locked:
            release(state_dir, params["release"])
        module.fail_json(msg=f"rollback in {state_dir}: {exc}", switched=[], remaining={})
    module.exit_json(changed=bool(fast) and moved["changed"], release=params["release"], switched=sorted(fast),
                     remaining=remaining,
                     events=record["events"], removals=removals, lines=lines, lock_kept=keep,
                     diff={"before": {name: item["before"] for name, item in moved["backends"].items()},
                           "after": {name: item["after"] for name, item in moved["backends"].items()}})


if __name__ == "__main__":
    main()
