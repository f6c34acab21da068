#!/usr/bin/python
# Copyright: XleRobot deploy authors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
---
module: deploy_state
short_description: Read or record what is live per service, with an append-only deploy history
description:
  - Keeps C(state.json) (the live and previous release per service) and C(history.jsonl) (one JSON
    object per deploy event) in O(state_dir) on the gateway host.
  - The live traffic split itself is always read from HAProxy; this file remembers what a rollback
    returns to and what every deploy did.
options:
  state_dir:
    description: Directory holding the state and history files.
    type: path
    required: true
  service:
    description: Service whose state is read or recorded. Omit to read all services.
    type: str
  live:
    description:
      - Record this as the live release of O(service) (keys C(colour), C(version), C(image), C(digest),
        C(release), C(at)). The release it replaces becomes C(previous).
    type: dict
  event:
    description: Append this event to the history (a C(service) key is added when missing).
    type: dict
  run:
    description:
      - What a run of the release engine records once at its end, for several services at a time - C(live), a
        mapping of service to its new live release (as O(live)), and C(events), a list of history events each
        naming its C(service). The state file is written once.
    type: dict
attributes:
  check_mode:
    support: full
  diff_mode:
    support: full
  idempotent:
    support: partial
    details: Recording the same live release again changes nothing; every O(event) is appended.
author:
  - XleRobot deploy authors
"""

EXAMPLES = r"""
- name: Remember green 1.1.0 as live
  deploy_state:
    state_dir: /var/lib/xlerobot/local
    service: asr
    live: {colour: green, version: 1.1.0, digest: "sha256:...", release: 20261127T120000-1.1.0}
    event: {action: promote, strategy: bluegreen, result: success}

- name: Read the state
  deploy_state:
    state_dir: /var/lib/xlerobot/local
    service: asr
  register: asr_state
"""

RETURN = r"""
state:
  description: State of O(service) after the task (all services when O(service) is omitted).
  returned: always
  type: dict
history:
  description: The history events of O(service), oldest first (only when reading).
  returned: when neither O(live) nor O(event) is given
  type: list
  elements: dict
"""

from ansible.module_utils.basic import AnsibleModule
from ansible.module_utils.xl_state import (
    StateError,
    append_history,
    load_state,
    next_state,
    read_history,
    record_run,
    save_state,
)


def main():
    module = AnsibleModule(
        argument_spec=dict(
            state_dir=dict(type="path", required=True),
            service=dict(type="str"),
            live=dict(type="dict"),
            event=dict(type="dict"),
            run=dict(type="dict"),
        ),
        required_by={"live": "service", "event": "service"},
        mutually_exclusive=[("run", "service"), ("run", "live"), ("run", "event")],
        supports_check_mode=True,
    )
    params = module.params
    service = params["service"]
    try:
        if params["run"] is not None:
            run = record_run(params["state_dir"], params["run"].get("live") or {}, params["run"].get("events") or [],
                             check_mode=module.check_mode)
            module.exit_json(changed=run["changed"], state=run["after"],
                             diff={"before": run["before"], "after": run["after"]})
        state = load_state(params["state_dir"])
        if params["live"] is None and params["event"] is None:
            view = state["services"].get(service, {}) if service else state
            history = read_history(params["state_dir"], service)
            module.exit_json(changed=False, state=view, history=history)
        changed = False
        before = state["services"].get(service, {})
        after = before
        if params["live"] is not None:
            new_state = next_state(state, service, params["live"])
            after = new_state["services"][service]
            if after != before:
                changed = True
                if not module.check_mode:
                    save_state(params["state_dir"], new_state)
        if params["event"] is not None:
            changed = True
            if not module.check_mode:
                append_history(params["state_dir"], {"service": service, **params["event"]})
    except (StateError, OSError) as exc:
        module.fail_json(msg=f"deploy state for {service or 'all services'} in {params['state_dir']}: {exc}")
    module.exit_json(changed=changed, state=after, diff={"before": before, "after": after})


if __name__ == "__main__":
    main()
