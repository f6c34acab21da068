# Copyright: XleRobot deploy authors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Filters of the common role's preflight: which sources the firewall lets in on a port, and whether an address
is among them. Plain Python's ipaddress, so the role needs neither netaddr nor ansible.utils on the controller."""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping
from typing import Any

from ansible.errors import AnsibleFilterError


def common_firewall_sources(ports: Mapping[str, Any] | None, port: int | str, proto: str = "tcp") -> list[str] | None:
    """The sources common_firewall_ports admits on port/proto: None when no entry opens it, [] when one opens it
    to any address, else that entry's CIDRs."""
    for rule in (ports or {}).values():
        if not isinstance(rule, Mapping) or rule.get("proto", "tcp") != proto:
            continue
        try:
            if int(str(rule.get("port"))) != int(port):
                continue
        except ValueError:
            continue
        return list(rule.get("sources") or [])
    return None


def _address(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    # SSH_CONNECTION may carry a zone (fe80::1%eth0) or an IPv4 client on a dual-stack socket (::ffff:10.0.0.5);
    # the firewall judges the plain address.
    address = ipaddress.ip_address(text.strip().split("%", 1)[0])
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def common_address_in(address: str, networks: Iterable[str]) -> bool:
    """Whether address lies in one of networks (CIDRs or single addresses, IPv4 or IPv6)."""
    try:
        client = _address(address)
    except ValueError as error:
        raise AnsibleFilterError(f"common_address_in: {address!r} is not an IP address") from error
    for network in networks:
        try:
            cidr = ipaddress.ip_network(str(network).strip(), strict=False)
        except ValueError as error:
            raise AnsibleFilterError(f"common_address_in: {network!r} is not a CIDR") from error
        if client.version == cidr.version and client in cidr:
            return True
    return False


class FilterModule:
    def filters(self) -> dict[str, Any]:
        return {
            "common_firewall_sources": common_firewall_sources,
            "common_address_in": common_address_in,
        }
