#!/usr/bin/python
# Copyright: XleRobot deploy authors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
---
module: release_abort
short_description: Stop the deploy or canary running in an environment, its traffic back on the live release now
description:
  - Reads the deploy lock in O(state_dir), which the running run annotates with its services and the weights that
    return their traffic; leaves an abort request for that run, and returns the traffic in one HAProxy runtime-API
    call, under the lock the run's own traffic moves take, so the run cannot move it again afterwards.
  - The running run notices the request in its next pause, analysis, gate poll or traffic move, removes its new
    instances and ends failed, naming who aborted it and when.
  - With no run in progress (no lock), nothing changes.
options:
  state_dir:
    description: The environment's deploy state directory on the gateway host.
    type: path
    required: true
  socket:
    description: Path of the HAProxy admin socket.
    type: path
    required: true
  by:
    description: Who aborts (an operator, or an AWX job and its user), recorded with the request.
    type: str
    required: true
  reason:
    description: Why, recorded with the request and shown in the run's failure.
    type: str
    default: ""
attributes:
  check_mode:
    support: full
    details: In check mode it says which run it would stop and which weights it would set, and changes nothing.
  diff_mode:
    support: full
  idempotent:
    support: partial
    details: A second abort of the same run sets no weight (they are already back) and writes the request again.
author:
  - XleRobot deploy authors
"""

EXAMPLES = r"""
- name: Stop the running canary now
  release_abort:
    state_dir: /var/lib/xlerobot/state
    socket: /run/haproxy/admin.sock
    by: alice
    reason: p95 on the dashboards
"""

RETURN = r"""
release:
  description: Release id of the run that was asked to stop; empty when none was running.
  returned: always
  type: str
run:
  description: What the lock said the run does (purpose, services, strategy).
  returned: when a run was found
  type: dict
backends:
  description: Per backend, the weights before and after, and whether they changed.
  returned: when a run was found
  type: dict
message:
  description: What was done, in words.
  returned: always
  type: str
"""

from ansible.module_utils.basic import AnsibleModule
from ansible.module_utils.xl_haproxy import HaproxyError, apply_batch, persist_weights
from ansible.module_utils.xl_lock import LockError, read
from ansible.module_utils.xl_release import request_abort, traffic_guard


def main():
    module = AnsibleModule(
        argument_spec=dict(
            state_dir=dict(type="path", required=True),
            socket=dict(type="path", required=True),
            by=dict(type="str", required=True),
            reason=dict(type="str", default=""),
            config_file=dict(type="path"),
        ),
        supports_check_mode=True,
    )
    params = module.params
    try:
        lock = read(params["state_dir"])
    except LockError as exc:
        module.fail_json(msg=str(exc), release="")
    if not lock or "unreadable" in lock:
        module.exit_json(changed=False, release="",
                         message=f"no deploy or rollback is running here (no lock in {params['state_dir']}); "
                                 f"nothing to abort")
    release = lock["release"]
    run = lock.get("run") or {}
    batch = run.get("restore") or {}
    try:
        with traffic_guard(params["state_dir"]):
            if not module.check_mode:
                request_abort(params["state_dir"], release, params["by"], params["reason"])
            moved = apply_batch(params["socket"], batch, wait_up_timeout=0, check_mode=module.check_mode) \
                if batch else {"changed": False, "backends": {}}
            if moved["changed"] and not module.check_mode and params["config_file"]:
                persist_weights(params["config_file"],
                                {name: item["after"] for name, item in moved["backends"].items()})
    except (HaproxyError, OSError) as exc:
        module.fail_json(msg=f"abort of {release}: the request was left for the run, but the traffic could not be "
                             f"returned: {exc}", release=release)
    backends = {name: {"changed": item["changed"], "before": item["before"], "weights": item["after"]}
                for name, item in moved["backends"].items()}
    would = "would " if module.check_mode else ""
    services = ", ".join(run.get("services") or []) or "its services"
    if batch:
        message = (f"{would}stop {release} ({lock.get('purpose', '')}): traffic of {services} "
                   f"{'would go' if module.check_mode else 'is'} back on the live release"
                   f"{'' if moved['changed'] else ' (it already was)'}; the run {would or 'will '}remove its new "
                   f"instances and end failed")
    else:
        message = (f"{would}stop {release} ({lock.get('purpose', '')}): it has not moved traffic it could be asked to "
                   f"return (or it replaces instances in place); the run {would or 'will '}end at its next step")
    module.exit_json(changed=True, release=release, run={"purpose": lock.get("purpose", ""),
                                                         "services": run.get("services") or [],
                                                         "strategy": run.get("strategy", "")},
                     backends=backends, message=message,
                     diff={"before": {name: item["before"] for name, item in backends.items()},
                           "after": {name: item["weights"] for name, item in backends.items()}})


if __name__ == "__main__":
    main()
