# Copyright: XleRobot deploy authors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Filters of playbooks/monitoring.yml: the exporters Prometheus scrapes on the inventory's hosts, read from each
host's variables (the same ones the common and gpu roles use to run them)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from ansible.errors import AnsibleFilterError
from ansible.module_utils.parsing.convert_bool import boolean


def _address(host: str, variables: Mapping[str, Any], port: Any, setting: str) -> str:
    """host:port as the monitoring host reaches it: the host's xlerobot_service_address, else its inventory name."""
    try:
        number = int(str(port))
    except ValueError:
        number = 0
    if not 1 <= number <= 65535:
        raise AnsibleFilterError(f"{host}: {setting} must be a port (1-65535), not {port!r}")
    address = str(variables.get("xlerobot_service_address") or host)
    if ":" in address and not address.startswith("["):
        address = f"[{address}]"
    return f"{address}:{number}"


def xl_node_targets(hosts: Iterable[str], hostvars: Mapping[str, Mapping[str, Any]]) -> list[dict[str, str]]:
    """A {host, address} target for each host (once, in order) whose xlerobot_node_exporter_port is set."""
    targets = []
    for host in dict.fromkeys(hosts):
        variables = hostvars[host]
        port = variables.get("xlerobot_node_exporter_port")
        if port is None or port == "":
            continue
        targets.append({"host": host, "address": _address(host, variables, port, "xlerobot_node_exporter_port")})
    return targets


def xl_dcgm_targets(hosts: Iterable[str], hostvars: Mapping[str, Mapping[str, Any]]) -> list[dict[str, str]]:
    """A {host, address} target for each host that gives a service a GPU memory need (gpu_service_memory_mib; the
    gpu role's preflight makes sure such a host has GPUs) and keeps its DCGM exporter enabled."""
    targets = []
    for host in dict.fromkeys(hosts):
        variables = hostvars[host]
        needs = variables.get("gpu_service_memory_mib") or {}
        try:
            needs_gpu = any(int(str(need)) > 0 for need in needs.values())
        except (AttributeError, ValueError) as error:
            raise AnsibleFilterError(f"{host}: gpu_service_memory_mib must map services to MiB: {error}") from error
        if needs_gpu and boolean(variables.get("gpu_dcgm_exporter_enabled", True), strict=False):
            port = variables.get("gpu_dcgm_exporter_port", 9400)
            targets.append({"host": host, "address": _address(host, variables, port, "gpu_dcgm_exporter_port")})
    return targets


class FilterModule:
    def filters(self):
        return {"xl_node_targets": xl_node_targets, "xl_dcgm_targets": xl_dcgm_targets}
