#!/usr/bin/python
# Copyright: XleRobot deploy authors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
---
module: haproxy_map
short_description: Read or set the entries of a map in a running HAProxy, without a reload
description:
  - Talks to the HAProxy runtime API (the admin stats socket). With O(entries), adds, changes and deletes map
    entries until the running map equals O(entries) - additions first, deletions last, so an entry that stays
    valid is never missing in between. Without O(entries), only reads.
  - Made for the gateway's API-key map, whose keys are hashes of credentials - the result and the diff name the
    values (client names) and counts only, never a key.
  - The change is a runtime change; write the map file as well so a reload or restart keeps it.
options:
  socket:
    description: Path of the HAProxy admin socket (C(stats socket ... level admin)).
    type: path
    required: true
  map:
    description: The map's file, as the configuration loads it (C(map(<file>)) converter).
    type: path
    required: true
  entries:
    description: Every entry the map must hold, key -> value. Keys and values have no spaces.
    type: dict
attributes:
  check_mode:
    support: full
  diff_mode:
    support: full
    details: Before and after are the sorted values (client names) and the number of entries, never keys.
  idempotent:
    support: full
seealso:
  - module: community.general.haproxy
author:
  - XleRobot deploy authors
"""

EXAMPLES = r"""
- name: Accept the old and the new key of each rotated client
  haproxy_map:
    socket: /run/haproxy/admin.sock
    map: /etc/haproxy/api_keys.map
    entries: "{{ old_hashes | combine(new_hashes) }}"
  no_log: true

- name: How many keys the gateway accepts
  haproxy_map:
    socket: /run/haproxy/admin.sock
    map: /etc/haproxy/api_keys.map
  register: key_map
"""

RETURN = r"""
count:
  description: Entries of the running map after the task (what it would hold, in check mode).
  returned: always
  type: int
  sample: 4
values:
  description: Sorted values of the entries after the task (duplicates kept, one per entry).
  returned: always
  type: list
  elements: str
  sample: ["dashboard", "robot-kitchen", "robot-kitchen"]
added:
  description: Values of the entries added.
  returned: always
  type: list
  elements: str
removed:
  description: Values of the entries deleted.
  returned: always
  type: list
  elements: str
"""

from ansible.module_utils.basic import AnsibleModule
from ansible.module_utils.xl_haproxy import HaproxyError, map_entries, sync_map


def main():
    module = AnsibleModule(
        argument_spec=dict(
            socket=dict(type="path", required=True),
            map=dict(type="path", required=True),
            # Keys of the gateway's map are hashes of API keys: not the keys, but kept out of logs as well.
            entries=dict(type="dict", no_log=True),
        ),
        supports_check_mode=True,
    )
    params = module.params
    try:
        current = map_entries(params["socket"], params["map"])
        if params["entries"] is None:
            values = sorted(current.values())
            module.exit_json(changed=False, count=len(current), values=values, added=[], removed=[])
        desired = {str(key): str(value) for key, value in params["entries"].items()}
        result = sync_map(params["socket"], params["map"], desired, check_mode=module.check_mode)
    except HaproxyError as exc:
        module.fail_json(msg=f"map {params['map']}: {exc}")
    except ValueError as exc:
        module.fail_json(msg=f"entries: {exc}")
    before, after = sorted(current.values()), sorted(desired.values())
    module.exit_json(changed=result["changed"], count=len(desired), values=after, added=result["added"],
                     removed=result["removed"],
                     diff={"before": {"count": len(current), "values": before},
                           "after": {"count": len(desired), "values": after}})


if __name__ == "__main__":
    main()
