#!/usr/bin/python
# Copyright: XleRobot deploy authors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
---
module: docker_instances
short_description: Inspect several containers of one Docker engine in one module run
description:
  - What M(community.docker.docker_container_info) returns for one container, for each of O(names), through the
    same client (community.docker's C(AnsibleDockerClient), so the connection options are the same).
  - The release engine inspects every instance of a run (both colours of every service on a host) at once, one
    module start instead of one per container.
  - The results hold the containers' environment, secrets included; use C(no_log) where a secret may be in it.
extends_documentation_fragment:
  - community.docker.docker.api_documentation
options:
  names:
    description: Names of the containers to inspect; one that does not exist is reported as not existing.
    type: list
    elements: str
    required: true
attributes:
  check_mode:
    support: full
  diff_mode:
    support: none
  idempotent:
    support: full
    details: It only reads.
requirements:
  - "Docker API >= 1.25"
author:
  - XleRobot deploy authors
"""

EXAMPLES = r"""
- name: Both colours of speech recognition on this host
  docker_instances:
    names: [xl-asr-blue, xl-asr-green]
  register: found
  no_log: true
"""

RETURN = r"""
containers:
  description: Per name, C(exists) and, when it exists, C(container), the output of C(docker inspect).
  returned: always
  type: dict
  sample: {"xl-asr-blue": {"exists": true, "container": {"Id": "...", "RestartCount": 0}},
           "xl-asr-green": {"exists": false}}
"""

import traceback

from ansible_collections.community.docker.plugins.module_utils._api.errors import DockerException
from ansible_collections.community.docker.plugins.module_utils.common_api import (
    AnsibleDockerClient,
    RequestException,
)


def main():
    client = AnsibleDockerClient(argument_spec=dict(names=dict(type="list", elements="str", required=True)),
                                 supports_check_mode=True)
    containers = {}
    try:
        for name in client.module.params["names"]:
            found = client.get_container(name)
            containers[name] = {"exists": bool(found), **({"container": found} if found else {})}
    except (DockerException, RequestException) as exc:
        client.fail(f"cannot inspect the containers {client.module.params['names']}: {exc}",
                    exception=traceback.format_exc())
    client.module.exit_json(changed=False, containers=containers)


if __name__ == "__main__":
    main()
