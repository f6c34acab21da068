# Copyright: XleRobot deploy authors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Which GPUs the deploys give each service instance: the placement the gpu role recorded on each speech host."""

from __future__ import annotations

import base64
import os
import sys
from collections.abc import Iterable, Mapping
from typing import Any

from ansible.errors import AnsibleFilterError

# This repository is no installed collection, so ansible.module_utils does not reach plugins/module_utils on the
# controller; the filter reads placement files with the same function the gpu_facts module uses.
_MODULE_UTILS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "module_utils")
if _MODULE_UTILS not in sys.path:
    sys.path.insert(0, _MODULE_UTILS)

import xl_gpu  # noqa: E402


def _need(host: str, service: str, needs: Any) -> int:
    if not isinstance(needs, Mapping):
        raise AnsibleFilterError(f"{host}: gpu_service_memory_mib must map services to MiB, got {needs!r}")
    value = needs.get(service, 0)
    try:
        need = int(value)
    except (TypeError, ValueError):
        need = -1
    if isinstance(value, bool) or need < 0 or str(need) != str(value).strip():
        raise AnsibleFilterError(f"{host}: gpu_service_memory_mib.{service} must be a whole number of MiB, "
                                 f"0 or more; got {value!r}")
    return need


def xl_gpu_hosts(hosts: Iterable[str], hostvars: Mapping[str, Any], services: Iterable[str]) -> list[str]:
    """The hosts among `hosts` whose gpu_service_memory_mib gives one of `services` a GPU memory need."""
    services = list(services)
    return [host for host in hosts
            if any(_need(host, service, hostvars[host].get("gpu_service_memory_mib") or {})
                   for service in services)]


def xl_gpu_placements(results: Iterable[Mapping[str, Any]]) -> dict[str, dict[str, str]]:
    """{host: {service: GPU UUID}} from ansible.builtin.slurp results of a loop over hosts (failed_when: false)
    reading each host's placement file. A host without the file has placed nothing: {}. Under failed_when: false
    a failed read says failed=false, so a result without content is what tells it."""
    placements: dict[str, dict[str, str]] = {}
    for result in results or []:
        host = str(result.get("item", "?"))
        source = f"{host}:{result.get('source') or (result.get('invocation') or {}).get('module_args', {}).get('src')}"
        if result.get("failed") or "content" not in result:
            message = str(result.get("msg", ""))
            if "not found" in message:
                placements[host] = {}
                continue
            raise AnsibleFilterError(f"{source}: cannot read the GPU placement: {message}")
        try:
            text = base64.b64decode(result["content"]).decode("utf-8")
            placements[host] = xl_gpu.parse_placement(text, source)
        except (ValueError, UnicodeDecodeError) as error:
            raise AnsibleFilterError(f"{source}: cannot read the GPU placement: {error}") from error
        except xl_gpu.GpuError as error:
            raise AnsibleFilterError(str(error)) from error
    return placements


def xl_instance_gpus(placements: Mapping[str, Mapping[str, str]], services: Iterable[str], hosts: Iterable[str],
                     hostvars: Mapping[str, Any]) -> dict[str, dict[str, list[str]]]:
    """{service: {host: [GPU UUID]}}: the GPU each instance of `services` gets on each of `hosts`, as recorded in
    `placements` (xl_gpu_placements) for the services the host's gpu_service_memory_mib gives a need. An empty list
    where the need is 0. A need with no placement recorded for it fails, naming every such service and host."""
    gpus: dict[str, dict[str, list[str]]] = {}
    missing: list[str] = []
    for service in services:
        gpus[service] = {}
        for host in hosts:
            need = _need(host, service, hostvars[host].get("gpu_service_memory_mib") or {})
            uuid = (placements.get(host) or {}).get(service) if need else None
            if need and not uuid:
                missing.append(f"{service} on {host} ({need} MiB)")
            gpus[service][host] = [uuid] if uuid else []
    if missing:
        raise AnsibleFilterError(
            f"gpu_service_memory_mib gives {', '.join(missing)} a GPU memory need, but no GPU is placed for it in "
            "the host's recorded placement (gpu_placement_path); run playbooks/provision.yml on those hosts to place "
            "the services on their GPUs, then deploy again")
    return gpus


class FilterModule:
    def filters(self):
        return {
            "xl_gpu_hosts": xl_gpu_hosts,
            "xl_gpu_placements": xl_gpu_placements,
            "xl_instance_gpus": xl_instance_gpus,
        }
