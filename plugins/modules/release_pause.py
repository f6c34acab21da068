#!/usr/bin/python
# Copyright: XleRobot deploy authors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
---
module: release_pause
short_description: The pause of a canary step, cut short by an abort request
description:
  - Waits O(seconds), the way C(ansible.builtin.wait_for) with a timeout does, but looks for an abort request of
    the run (left by C(playbooks/abort.yml) in O(state_dir)) every fraction of a second and fails as soon as one
    names O(release), so an aborted canary stops in its pause rather than after it.
  - Changes nothing.
options:
  seconds:
    description: How long to pause.
    type: float
    required: true
  state_dir:
    description: The deploy state directory where C(playbooks/abort.yml) leaves its request.
    type: path
    required: true
  release:
    description: Release id of the run that pauses.
    type: str
    required: true
  poll:
    description: Seconds between two looks for an abort request.
    type: float
    default: 0.2
attributes:
  check_mode:
    support: full
    details: In check mode it does not wait.
  diff_mode:
    support: none
  idempotent:
    support: full
author:
  - XleRobot deploy authors
"""

EXAMPLES = r"""
- name: Pause the canary step for 30 s unless the run is aborted
  release_pause:
    seconds: 30
    state_dir: /var/lib/xlerobot/state
    release: 20261203T120000Z-1.1.0
"""

RETURN = r"""
waited:
  description: Seconds the pause lasted.
  returned: always
  type: float
aborted:
  description: The abort request that ended the pause (who, when, why), when one did.
  returned: when the run was aborted
  type: dict
"""

import time

from ansible.module_utils.basic import AnsibleModule
from ansible.module_utils.xl_release import abort_message, abort_requested


def main():
    module = AnsibleModule(
        argument_spec=dict(
            seconds=dict(type="float", required=True),
            state_dir=dict(type="path", required=True),
            release=dict(type="str", required=True),
            poll=dict(type="float", default=0.2),
        ),
        supports_check_mode=True,
    )
    params = module.params
    if params["seconds"] < 0:
        module.fail_json(msg=f"seconds must be >= 0, got {params['seconds']}")
    if module.check_mode:
        module.exit_json(changed=False, waited=0.0)
    started = time.monotonic()
    deadline = started + params["seconds"]
    while True:
        request = abort_requested(params["state_dir"], params["release"])
        if request:
            module.fail_json(msg=f"the run was {abort_message(request)}", aborted=request,
                             waited=round(time.monotonic() - started, 3))
        left = deadline - time.monotonic()
        if left <= 0:
            break
        time.sleep(min(max(params["poll"], 0.01), left))
    module.exit_json(changed=False, waited=round(time.monotonic() - started, 3))


if __name__ == "__main__":
    main()
