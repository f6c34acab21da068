"""Which GPUs the deploys give each instance, from the placement recorded on each host.

plugins/filter/xl_placement.py.
"""

from __future__ import annotations

import base64
import json
import re

import pytest
from ansible.errors import AnsibleFilterError

from plugins.filter.xl_placement import FilterModule, xl_gpu_hosts, xl_gpu_placements, xl_instance_gpus

HOSTVARS = {
    "speech1": {"gpu_service_memory_mib": {"asr": 6000, "tts": "0"}},
    "speech2": {"gpu_service_memory_mib": {"asr": "6000", "llm": 20000}},
    "speech3": {},
}
PATH = "/etc/xlerobot/gpu-placement.json"


def _slurped(host: str, content: str) -> dict:
    return {"item": host, "source": PATH, "encoding": "base64", "content": base64.b64encode(content.encode()).decode()}


def _missing(host: str, failed: bool = False) -> dict:
    # failed_when: false turns the module's failed=true into false; the message stays.
    return {"item": host, "failed": failed, "msg": f"file not found: {PATH}",
            "invocation": {"module_args": {"src": PATH}}}


def test_hosts_that_give_the_services_a_gpu_need() -> None:
    hosts = ["speech1", "speech2", "speech3"]
    assert xl_gpu_hosts(hosts, HOSTVARS, ["asr"]) == ["speech1", "speech2"]
    assert xl_gpu_hosts(hosts, HOSTVARS, ["llm", "tts"]) == ["speech2"]
    assert xl_gpu_hosts(hosts, HOSTVARS, ["multimodal"]) == []


def test_placements_from_the_slurped_files() -> None:
    record = {"assignments": {"asr": "GPU-a", "llm": "GPU-b"}, "needs": {"asr": 6000, "llm": 20000}}
    results = [_slurped("speech2", json.dumps(record)), _missing("speech1"), _missing("speech3", failed=True)]
    assert xl_gpu_placements(results) == {"speech2": {"asr": "GPU-a", "llm": "GPU-b"}, "speech1": {}, "speech3": {}}


@pytest.mark.parametrize("content", ["{broken", '{"assignments": ["GPU-a"]}'])
def test_a_broken_placement_file_names_host_and_file(content: str) -> None:
    with pytest.raises(AnsibleFilterError, match=rf"^speech2:{re.escape(PATH)}: not a GPU placement"):
        xl_gpu_placements([_slurped("speech2", content)])


def test_an_unreadable_placement_file_is_not_taken_for_a_missing_one() -> None:
    denied = {"item": "speech2", "failed": False, "msg": "Permission denied",
              "invocation": {"module_args": {"src": PATH}}}
    with pytest.raises(AnsibleFilterError,
                       match=rf"^speech2:{re.escape(PATH)}: cannot read the GPU placement: Permission denied"):
        xl_gpu_placements([denied])


def test_each_instance_gets_the_gpu_placed_for_its_service_on_its_host() -> None:
    placements = {"speech1": {"asr": "GPU-1a", "tts": "GPU-1b"}, "speech2": {"asr": "GPU-2a", "llm": "GPU-2b"}}
    hosts = ["speech1", "speech2", "speech3"]
    assert xl_instance_gpus(placements, ["asr", "tts", "llm"], hosts, HOSTVARS) == {
        "asr": {"speech1": ["GPU-1a"], "speech2": ["GPU-2a"], "speech3": []},
        # A need of 0 gives no GPU even where an earlier placement recorded one.
        "tts": {"speech1": [], "speech2": [], "speech3": []},
        "llm": {"speech1": [], "speech2": ["GPU-2b"], "speech3": []},
    }


def test_a_need_without_a_placement_stops_the_deploy_naming_every_one() -> None:
    with pytest.raises(AnsibleFilterError) as caught:
        xl_instance_gpus({"speech1": {}, "speech2": {"asr": "GPU-2a"}}, ["asr", "llm"], ["speech1", "speech2"],
                         HOSTVARS)
    message = str(caught.value)
    assert "asr on speech1 (6000 MiB), llm on speech2 (20000 MiB)" in message
    assert "run playbooks/provision.yml" in message


@pytest.mark.parametrize("need", ["lots", -1, True, 1.5, "6000 MiB"])
def test_a_need_that_is_not_mib_names_host_and_service(need: object) -> None:
    with pytest.raises(AnsibleFilterError,
                       match=r"^speech9: gpu_service_memory_mib\.asr must be a whole number of MiB"):
        xl_gpu_hosts(["speech9"], {"speech9": {"gpu_service_memory_mib": {"asr": need}}}, ["asr"])


def test_the_filters_are_registered() -> None:
    assert set(FilterModule().filters()) == {"xl_gpu_hosts", "xl_gpu_placements", "xl_instance_gpus"}
