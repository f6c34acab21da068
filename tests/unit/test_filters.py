"""The naming filters: one scheme for containers, backends, servers and colours."""

from __future__ import annotations

import pytest
import xlerobot as f
from ansible.errors import AnsibleFilterError


def test_names() -> None:
    assert f.xl_backend("asr") == "be_asr"
    assert f.xl_server("asr", "blue") == "asr_blue"
    assert f.xl_server("asr", "blue", "node-1.example") == "asr_blue_node1example"
    assert f.xl_container("asr", "green", "xlt") == "xlt-asr-green"


def test_servers_and_weights() -> None:
    assert f.xl_servers("asr", "blue", ["localhost"]) == ["asr_blue"]
    assert f.xl_servers("asr", "blue", ["n1", "n2"]) == ["asr_blue_n1", "asr_blue_n2"]
    assert f.xl_servers("asr", "blue", ["n2"], fleet=["n1", "n2"]) == ["asr_blue_n2"]
    assert f.xl_servers("asr", "blue", ["n1"], fleet=["n1"]) == ["asr_blue"]
    assert f.xl_weights(["a", "b"], 100) == {"a": 100, "b": 100}


def test_live_colours() -> None:
    hosts = ["localhost"]
    assert f.xl_live_colours({"asr_blue": 100, "asr_green": 0}, "asr", ["blue", "green"], hosts) == ["blue"]
    assert f.xl_live_colours({"asr_blue": 0, "asr_green": 0}, "asr", ["blue", "green"], hosts) == []
    assert f.xl_live_colours({"asr_blue": 5, "asr_green": 95}, "asr", ["blue", "green"], hosts) == ["blue", "green"]


def test_other_colour() -> None:
    assert f.xl_other_colour("blue") == "green"
    assert f.xl_other_colour("green") == "blue"
    assert f.xl_other_colour("") == "blue"
    with pytest.raises(AnsibleFilterError, match="not one of"):
        f.xl_other_colour("red")


@pytest.mark.parametrize("bad", ["ASR", "asr-1", "", "1asr"])
def test_bad_names_are_refused(bad: str) -> None:
    with pytest.raises(AnsibleFilterError, match="must be lower-case"):
        f.xl_backend(bad)


def test_release_id() -> None:
    assert f.xl_release_id("1.1.0", "2026-11-28T10:20:30+00:00") == "20261128T102030Z-1.1.0"


def test_runtime_env_names_the_services_variables() -> None:
    assert f.xl_runtime_env({"beam_size": 3, "log_level": "DEBUG", "queue_timeout_s": 2.5}, "ASR") == {
        "ASR_BEAM_SIZE": "3", "ASR_QUEUE_TIMEOUT_S": "2.5", "XL_LOG_LEVEL": "DEBUG"}
    assert f.xl_runtime_env(None, "MM") == {} and f.xl_runtime_env({"flag": True}, "TTS") == {"TTS_FLAG": "true"}
    for bad, prefix in (({"Beam": 1}, "ASR"), ({}, "asr"), ([], "ASR")):
        with pytest.raises(AnsibleFilterError):
            f.xl_runtime_env(bad, prefix)


def test_instance_digest_follows_every_setting_and_ignores_types() -> None:
    settings = {"env": {"XL_GATEWAY_URL": "http://127.0.0.1:8080", "ASR_MODEL": "tiny"}, "memory": "3g",
                "stop_timeout": 60, "container_port": 8000, "network": "bridge"}
    digest = f.xl_instance_digest(settings)
    assert digest.startswith("cfg-") and len(digest) == 20
    # Key order and the type a value arrived with (templated vars are often strings) do not matter.
    reordered = dict(reversed(list(settings.items())))
    reordered["stop_timeout"] = "60"
    reordered["env"] = {"ASR_MODEL": "tiny", "XL_GATEWAY_URL": "http://127.0.0.1:8080"}
    assert f.xl_instance_digest(reordered) == digest
    # Any change of a value, or a new environment variable, is a new digest.
    for changed in ({"memory": "4g"}, {"stop_timeout": 30}, {"network": "host"},
                    {"env": {**settings["env"], "ASR_MODEL": "base"}},
                    {"env": {**settings["env"], "EXTRA": ""}}):
        assert f.xl_instance_digest({**settings, **changed}) != digest, changed


def test_instance_digest_refuses_what_is_not_a_mapping() -> None:
    with pytest.raises(AnsibleFilterError, match="must be a mapping"):
        f.xl_instance_digest(["memory", "3g"])


def _inspected(host: str, image: str = "reg/asr@sha256:1", digest: str = "cfg-1", running: bool = True,
               env: list[str] | None = None) -> dict:
    return {"item": host, "exists": True, "container": {
        "State": {"Running": running},
        "Config": {"Image": image, "Labels": {"io.xlerobot.config": digest}, "Env": env or ["PATH=/usr/bin"]}}}


def test_instance_drift_is_empty_only_for_the_target() -> None:
    assert f.xl_instance_drift([_inspected("h1"), _inspected("h2")], "reg/asr@sha256:1", "cfg-1") == []
    assert f.xl_instance_drift([{"item": "h1", "exists": False}], "reg/asr@sha256:1", "cfg-1") == ["h1: no instance"]
    assert f.xl_instance_drift([_inspected("h1", running=False)], "reg/asr@sha256:1", "cfg-1") == [
        "h1: the instance is not running"]
    assert f.xl_instance_drift([_inspected("h1", image="reg/asr@sha256:0")], "reg/asr@sha256:1", "cfg-1") == [
        "h1: runs image reg/asr@sha256:0"]
    # Same image, other settings: this is what made a same-version configuration change look live.
    assert f.xl_instance_drift([_inspected("h1"), _inspected("h2", digest="cfg-0")], "reg/asr@sha256:1", "cfg-1") == [
        "h2: started with settings cfg-0, the configuration asks for cfg-1"]
    unlabelled = _inspected("h1")
    unlabelled["container"]["Config"]["Labels"] = {}
    assert f.xl_instance_drift([unlabelled], "reg/asr@sha256:1", "cfg-1") == [
        "h1: started with settings unlabelled, the configuration asks for cfg-1"]


def test_instance_drift_compares_secrets_without_naming_them() -> None:
    current = _inspected("h1", env=["PATH=/usr/bin", "XL_GATEWAY_API_KEY=new-key"])
    assert f.xl_instance_drift([current], "reg/asr@sha256:1", "cfg-1", {"XL_GATEWAY_API_KEY": "new-key"}) == []
    stale = _inspected("h1", env=["XL_GATEWAY_API_KEY=old-key"])
    reasons = f.xl_instance_drift([stale], "reg/asr@sha256:1", "cfg-1", {"XL_GATEWAY_API_KEY": "new-key"})
    assert len(reasons) == 1 and "other secrets" in reasons[0]
    assert "old-key" not in reasons[0] and "new-key" not in reasons[0]
    # A key the instance still holds when the secrets layer no longer gives one is drift too.
    assert f.xl_instance_drift([stale], "reg/asr@sha256:1", "cfg-1", {}) != []
    assert f.xl_instance_drift([_inspected("h1")], "reg/asr@sha256:1", "cfg-1", {"XL_GATEWAY_API_KEY": "k"}) != []


def _on_gpus(inspected: dict, *uuids: str) -> dict:
    inspected["container"]["HostConfig"] = {"DeviceRequests": [
        {"Driver": "nvidia", "Count": 0, "DeviceIDs": list(uuids), "Capabilities": [["gpu", "compute", "utility"]]}]}
    return inspected


def test_instance_drift_compares_the_gpus_with_the_placement() -> None:
    image, digest = "reg/asr@sha256:1", "cfg-1"
    on_gpu0 = [_on_gpus(_inspected("h1"), "GPU-0"), _inspected("h2")]
    assert f.xl_instance_drift(on_gpu0, image, digest, gpus={"h1": ["GPU-0"], "h2": []}) == []
    # The placement moved the service to another GPU on h1, or gave h2's instance one.
    assert f.xl_instance_drift(on_gpu0, image, digest, gpus={"h1": ["GPU-1"], "h2": []}) == [
        "h1: runs on GPUs GPU-0, the host's placement gives it GPU-1"]
    assert f.xl_instance_drift(on_gpu0, image, digest, gpus={"h1": ["GPU-0"], "h2": ["GPU-7"]}) == [
        "h2: runs on GPUs none, the host's placement gives it GPU-7"]
    # A GPU need set to 0: an instance that still holds its GPU is not the target.
    assert f.xl_instance_drift(on_gpu0, image, digest) == ["h1: runs on GPUs GPU-0, the host's placement gives it none"]
    # An instance started without device requests inspects as null.
    plain = _inspected("h1")
    plain["container"]["HostConfig"] = {"DeviceRequests": None}
    assert f.xl_instance_drift([plain], image, digest, gpus={"h1": []}) == []
