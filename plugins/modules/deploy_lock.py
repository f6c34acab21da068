#!/usr/bin/python
# Copyright: XleRobot deploy authors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
---
module: deploy_lock
short_description: Take, release or break the deploy lock of one environment on the gateway host
description:
  - The lock is C(<state_dir>/deploy.lock), created atomically (C(O_CREAT|O_EXCL), mode 0600) and holding
    C(holder), C(pid), C(host), C(since) (UTC), C(release) and C(purpose).
  - V(acquired) takes the lock for O(release). If another release holds it, the task fails naming the holder,
    since when and how long ago, the release, and how to break it (C(-e break_lock=true)). Taking it again for
    the same release and holder changes nothing.
  - V(released) removes the lock only if it was taken for O(release); a lock of another release is left alone
    and the task fails. No lock at all is fine.
  - V(broken) removes the lock whoever holds it and returns what it held. A lock is never broken automatically,
    however old it is.
options:
  state_dir:
    description: The environment's state directory on the gateway host (created when missing).
    type: path
    required: true
  state:
    description:
      - V(acquired), V(released) or V(broken).
      - V(annotated) adds O(run) to the lock the release holds, for C(playbooks/abort.yml) to read.
    type: str
    required: true
    choices: [acquired, released, broken, annotated]
  release:
    description: Release id of the deploy taking or releasing the lock. Required for V(acquired) and V(released).
    type: str
  holder:
    description:
      - Who takes the lock, shown to whoever finds it taken.
      - Defaults to the user the module runs as on the gateway host (often C(root) with become), so playbooks
        should pass the operator's name.
    type: str
  run:
    description:
      - With O(state=annotated), what the run does (its services, strategy and the weights that return their
        traffic), stored in the lock.
    type: dict
  purpose:
    description: What the deploy does, shown to whoever finds the lock taken.
    type: str
    default: ""
attributes:
  check_mode:
    support: full
    details: Reports what would happen (including a failure when another release holds the lock); changes nothing.
  diff_mode:
    support: full
    details: Before and after are the lock's content (empty when there is no lock).
  idempotent:
    support: full
author:
  - XleRobot deploy authors
"""

EXAMPLES = r"""
- name: Take the deploy lock of this environment
  deploy_lock:
    state_dir: /var/lib/xlerobot/local
    state: acquired
    release: "{{ xl_release_id }}"
    holder: "{{ lookup('env', 'USER') }}"
    purpose: deploy asr 1.1.0

- name: Release it when the deploy ends
  deploy_lock:
    state_dir: /var/lib/xlerobot/local
    state: released
    release: "{{ xl_release_id }}"

- name: Break a lock left by a deploy that died
  deploy_lock:
    state_dir: /var/lib/xlerobot/local
    state: broken
  when: break_lock | default(false) | bool
"""

RETURN = r"""
lock:
  description: The lock's content after the task (what it would be, in check mode); empty when there is no lock.
  returned: always
  type: dict
  sample: {"holder": "alice", "pid": 4242, "host": "gw1", "since": "2026-11-28T12:00:00Z",
           "release": "20261128T120000-1.1.0", "purpose": "deploy asr 1.1.0"}
previous:
  description: The lock's content before the task; empty when there was none.
  returned: always
  type: dict
"""

import getpass
import os

from ansible.module_utils.basic import AnsibleModule
from ansible.module_utils.xl_lock import (
    LockError,
    LockHeld,
    acquire,
    annotate,
    break_lock,
    describe,
    holds,
    lock_path,
    new_lock,
    read,
    release,
)
from ansible.module_utils.xl_release import clear_abort


def _user():
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return f"uid {os.getuid()}"


def main():
    module = AnsibleModule(
        argument_spec=dict(
            state_dir=dict(type="path", required=True),
            state=dict(type="str", required=True, choices=["acquired", "released", "broken", "annotated"]),
            run=dict(type="dict"),
            release=dict(type="str"),
            holder=dict(type="str"),
            purpose=dict(type="str", default=""),
        ),
        required_if=[("state", "acquired", ["release"]), ("state", "released", ["release"]),
                     ("state", "annotated", ["release", "run"])],
        supports_check_mode=True,
    )
    params = module.params
    state_dir, wanted = params["state_dir"], params["state"]
    holder = params["holder"] or _user()
    before = None
    try:
        before = read(state_dir)
        if wanted == "acquired":
            if before is not None and not holds(before, params["release"], holder):
                raise LockHeld(describe(before, lock_path(state_dir)), before)
            if module.check_mode:
                after = before or new_lock(holder, params["release"], params["purpose"])
            else:
                after = acquire(state_dir, holder, params["release"], params["purpose"])
                # An abort request left for a run that has ended must not stop this one.
                clear_abort(state_dir, keep_release=params["release"])
        elif wanted == "annotated":
            after = before if module.check_mode else annotate(state_dir, params["release"], params["run"])
        elif wanted == "released":
            if before is not None and not holds(before, params["release"]):
                raise LockHeld(f"release {params['release']} cannot release the lock: "
                               f"{describe(before, lock_path(state_dir))}", before)
            if not module.check_mode:
                release(state_dir, params["release"])
                clear_abort(state_dir)
            after = None
        else:
            if not module.check_mode:
                before = break_lock(state_dir)
            after = None
    except LockHeld as exc:
        module.fail_json(msg=str(exc), lock=exc.holder, previous=exc.holder)
    except (LockError, OSError) as exc:
        module.fail_json(msg=f"deploy lock in {state_dir}: {exc}", lock=before or {}, previous=before or {})
    module.exit_json(changed=before != after, lock=after or {}, previous=before or {},
                     diff={"before": before or {}, "after": after or {}})


if __name__ == "__main__":
    main()
