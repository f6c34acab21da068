"""Which exporters monitoring.yml scrapes, from the hosts' variables (plugins/filter/xl_monitoring.py)."""

from __future__ import annotations

import pytest
from ansible.errors import AnsibleFilterError

from plugins.filter.xl_monitoring import FilterModule, xl_dcgm_targets, xl_node_targets

HOSTVARS = {
    "gw1": {"xlerobot_node_exporter_port": 9100},
    "speech1": {"xlerobot_node_exporter_port": "9100", "xlerobot_service_address": "10.1.0.11",
                "gpu_service_memory_mib": {"asr": 4096, "tts": 0}},
    "speech2": {"xlerobot_node_exporter_port": 9100, "xlerobot_service_address": "fd00::12",
                "gpu_service_memory_mib": {"asr": "0"}},
    "speech3": {"gpu_service_memory_mib": {"llm": "8192"}, "gpu_dcgm_exporter_port": 9500},
    "speech4": {"gpu_service_memory_mib": {"llm": 8192}, "gpu_dcgm_exporter_enabled": "false"},
}


def test_node_targets_for_hosts_with_an_exporter_port_once_each_in_order():
    hosts = ["gw1", "speech1", "speech2", "speech3", "speech1"]
    assert xl_node_targets(hosts, HOSTVARS) == [
        {"host": "gw1", "address": "gw1:9100"},  # no service address: the inventory name
        {"host": "speech1", "address": "10.1.0.11:9100"},
        {"host": "speech2", "address": "[fd00::12]:9100"},
    ]


def test_dcgm_targets_only_where_a_service_needs_a_gpu_and_the_exporter_is_on():
    assert xl_dcgm_targets(["speech1", "speech2", "speech3", "speech4"], HOSTVARS) == [
        {"host": "speech1", "address": "10.1.0.11:9400"},
        {"host": "speech3", "address": "speech3:9500"},
    ]


def test_no_hosts_no_targets():
    assert xl_node_targets([], HOSTVARS) == []
    assert xl_dcgm_targets([], HOSTVARS) == []


@pytest.mark.parametrize("port", [0, 70000, "http", "9100/tcp"])
def test_a_port_that_is_not_a_port_names_host_and_variable(port):
    with pytest.raises(AnsibleFilterError, match=r"gw9: xlerobot_node_exporter_port must be a port"):
        xl_node_targets(["gw9"], {"gw9": {"xlerobot_node_exporter_port": port}})


def test_gpu_needs_that_are_not_mib_name_the_host():
    with pytest.raises(AnsibleFilterError, match=r"speech9: gpu_service_memory_mib must map services to MiB"):
        xl_dcgm_targets(["speech9"], {"speech9": {"gpu_service_memory_mib": {"asr": "lots"}}})


def test_filters_are_registered():
    assert set(FilterModule().filters()) == {"xl_node_targets", "xl_dcgm_targets"}
