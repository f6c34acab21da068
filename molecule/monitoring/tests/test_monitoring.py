"""The monitoring role converged on a systemd host: both daemons under systemd, on loopback, rules loaded."""

import json


def _get(host, url):
    return json.loads(host.check_output(
        f"python3 -c \"import urllib.request;print(urllib.request.urlopen('{url}').read().decode())\""))


def test_daemons_are_running_enabled_systemd_services(host):
    for name in ("prometheus", "prometheus-alertmanager"):
        service = host.service(name)
        assert service.is_running, name
        assert service.is_enabled, name


def test_they_listen_on_loopback_only(host):
    assert host.socket("tcp://127.0.0.1:9090").is_listening
    assert host.socket("tcp://127.0.0.1:9093").is_listening
    assert not host.socket("tcp://0.0.0.0:9090").is_listening
    assert not host.socket("tcp://0.0.0.0:9094").is_listening  # no cluster listener


def test_rules_and_targets_are_loaded(host):
    groups = _get(host, "http://127.0.0.1:9090/api/v1/rules")["data"]["groups"]
    assert [g["name"] for g in groups] == ["xlerobot"]
    targets = _get(host, "http://127.0.0.1:9090/api/v1/targets")["data"]["activeTargets"]
    services = {(t["labels"]["job"], t["labels"].get("service"), t["labels"].get("colour")) for t in targets}
    assert ("xlerobot-services", "asr", "blue") in services
    assert ("xlerobot-services", "asr", "green") in services


def test_files_are_not_world_readable(host):
    for path in ("/etc/prometheus/prometheus.yml", "/etc/prometheus/alertmanager.yml",
                 "/etc/prometheus/rules/xlerobot.yml"):
        config = host.file(path)
        assert config.mode == 0o640, path
        assert config.group == "prometheus", path
