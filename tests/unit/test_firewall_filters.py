"""The filters behind the SSH lock-out check of the common role's preflight, tested directly."""

from __future__ import annotations

import pytest
import xl_firewall as common_firewall
from ansible.errors import AnsibleFilterError

PORTS = {
    "ssh": {"port": 22, "sources": ["10.0.0.0/8", "fd00::/8"]},
    "api": {"port": "8080"},
    "dns": {"port": 53, "proto": "udp", "sources": ["192.0.2.0/24"]},
}


def test_sources_of_a_port():
    assert common_firewall.common_firewall_sources(PORTS, 22) == ["10.0.0.0/8", "fd00::/8"]
    assert common_firewall.common_firewall_sources(PORTS, "8080") == []
    assert common_firewall.common_firewall_sources(PORTS, 2222) is None
    # The UDP entry does not open the TCP port of the same number.
    assert common_firewall.common_firewall_sources(PORTS, 53) is None
    assert common_firewall.common_firewall_sources(PORTS, 53, "udp") == ["192.0.2.0/24"]
    assert common_firewall.common_firewall_sources(None, 22) is None


@pytest.mark.parametrize(("address", "inside"), [
    ("10.1.2.3", True),
    ("192.0.2.10", False),
    ("fd00::5", True),
    ("2001:db8::5", False),
    # An IPv4 client on a dual-stack socket, and an address with its zone.
    ("::ffff:10.9.9.9", True),
    ("fd12::1%eth0", True),
])
def test_address_in_sources(address, inside):
    assert common_firewall.common_address_in(address, PORTS["ssh"]["sources"]) is inside


def test_single_addresses_count_as_networks():
    assert common_firewall.common_address_in("192.0.2.10", ["192.0.2.10"])
    assert not common_firewall.common_address_in("192.0.2.11", ["192.0.2.10"])


@pytest.mark.parametrize(("address", "networks", "named"), [
    ("not-an-address", ["10.0.0.0/8"], "'not-an-address' is not an IP address"),
    ("10.0.0.1", ["10.0.0.0/33"], "'10.0.0.0/33' is not a CIDR"),
])
def test_bad_input_is_named(address, networks, named):
    with pytest.raises(AnsibleFilterError, match=named):
        common_firewall.common_address_in(address, networks)
