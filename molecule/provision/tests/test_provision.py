"""provision.yml converged over SSH on a gateway host and a speech host: each role's result on the host it belongs
to, and the path production traffic takes between them (the gateway's HAProxy and Prometheus reaching an instance
port the speech host publishes, through that host's firewall)."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator

import pytest
import testinfra

GATEWAY, SPEECH = "xlm-provision-gw", "xlm-provision-speech"
# The speech host's instance ports: the converge opens asr's blue and green ports to the fleet network; a port
# published but listed nowhere must stay closed to the gateway host.
ASR_BLUE, ASR_GREEN, UNLISTED = 18001, 18002, 18003
# A tiny image on the speech host's engine: the merged-/usr symlinks of the host; /usr is mounted read-only, so
# python3 comes along and nothing is pulled.
USR_IMAGE = "xlm/usr:1"
STAND_IN = "xlm-asr-stand-in"


def _host(name: str):
    return testinfra.get_host(f"ansible://{name}", ansible_inventory=os.environ["MOLECULE_INVENTORY_FILE"])


@pytest.fixture(scope="module")
def gateway():
    return _host(GATEWAY)


@pytest.fixture(scope="module")
def speech():
    return _host(SPEECH)


def _get(host, url: str):
    """GET url with the host's own python3; the command's result (stdout holds the body)."""
    code = f"import urllib.request;print(urllib.request.urlopen('{url}', timeout=5).read().decode())"
    return host.run(f"python3 -c \"{code}\"")


def _get_json(host, url: str):
    answer = _get(host, url)
    assert answer.rc == 0, answer.stderr
    return json.loads(answer.stdout)


def _targets(gateway) -> list[dict]:
    return _get_json(gateway, "http://127.0.0.1:9090/api/v1/targets")["data"]["activeTargets"]


def _wait_until(condition, what: str, seconds: float = 30) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, what
        time.sleep(0.5)


def _fleet_network(host) -> str:
    """The network the hosts share, as the host's own default route sees it (what the inventory opens SSH to)."""
    route = host.check_output("ip -o -4 route show scope link dev eth0").split()
    return route[0]


def test_every_host_was_reached_over_ssh_as_the_operator_with_sudo(host):
    # sshd logs each session the converge opened: the operator's key, never root's.
    log = host.check_output("journalctl -u ssh --no-pager -o cat")
    assert "Accepted publickey for ops" in log
    assert "Accepted publickey for root" not in log
    assert host.check_output("id -un") == "root"  # through sudo, as the roles ran


def test_base_system_on_every_host(host):
    user = host.user("xlerobot")
    assert user.exists and user.home == "/var/lib/xlerobot"
    assert host.service("chrony").is_running
    assert host.file("/etc/sysctl.d/60-xlerobot.conf").exists
    table = host.check_output("nft list table inet xlerobot")
    assert "policy drop" in table
    # SSH open to the fleet network only, which holds the address the controller comes from.
    assert f"ip saddr {_fleet_network(host)} tcp dport 22 accept" in table


def test_docker_engine_on_every_host_without_a_gpu_runtime(host):
    service = host.service("docker")
    assert service.is_running and service.is_enabled
    settings = json.loads(host.file("/etc/docker/daemon.json").content_string)
    assert settings["live-restore"] is True
    assert "default-runtime" not in settings
    assert not host.package("nvidia-container-toolkit").is_installed


def test_node_exporter_on_every_host(host):
    service = host.service("prometheus-node-exporter")
    assert service.is_running and service.is_enabled
    assert host.process.get(comm="prometheus-node").user == "prometheus"
    assert 'ARGS="--web.listen-address=:9100"' in host.file("/etc/default/prometheus-node-exporter").content_string


def test_the_speech_host_opens_only_its_instance_ports_node_metrics_and_ssh(speech):
    table = speech.check_output("nft list table inet xlerobot")
    for port in (22, 9100, ASR_BLUE, ASR_GREEN):
        assert f"dport {port} " in table, port
    assert f"dport {UNLISTED} " not in table
    assert "8404" not in table  # the gateway's entries stay on the gateway


def test_gateway_and_monitoring_only_on_the_gateway_host(gateway, speech):
    for name in ("haproxy", "prometheus", "prometheus-alertmanager"):
        assert gateway.service(name).is_running, name
        assert gateway.service(name).is_enabled, name
        assert not speech.package(name).is_installed, name


def test_the_gateway_routes_to_the_speech_host_by_its_name(gateway):
    config = gateway.file("/etc/haproxy/haproxy.cfg").content_string
    assert f"{SPEECH}:{ASR_BLUE} " in config
    assert f"{SPEECH}:{ASR_GREEN} " in config
    assert "127.0.0.1:18001" not in config


def test_prometheus_scrapes_the_speech_host_and_the_gateway(gateway):
    instances = {(t["labels"].get("service"), t["labels"].get("colour")): t["labels"]["instance"]
                 for t in _targets(gateway)}
    assert instances[("asr", "blue")] == f"{SPEECH}:{ASR_BLUE}"
    assert instances[("asr", "green")] == f"{SPEECH}:{ASR_GREEN}"

    def haproxy_up() -> bool:
        return any(t["labels"]["job"] == "haproxy" and t["health"] == "up" for t in _targets(gateway))
    _wait_until(haproxy_up, "Prometheus never scraped HAProxy's metrics")


def test_prometheus_scrapes_the_node_exporter_of_both_hosts(gateway):
    def node_targets() -> dict[str, tuple[str, str]]:
        return {t["labels"]["host"]: (t["labels"]["instance"], t["health"])
                for t in _targets(gateway) if t["labels"]["job"] == "node"}
    _wait_until(lambda: {health for _, health in node_targets().values()} == {"up"} and len(node_targets()) == 2,
                f"node exporters not both scraped: {node_targets()}")
    # The speech host's is reached across the fleet network, through its firewall.
    assert node_targets() == {GATEWAY: (f"{GATEWAY}:9100", "up"), SPEECH: (f"{SPEECH}:9100", "up")}
    assert "dcgm" not in {t["labels"]["job"] for t in _targets(gateway)}  # no host gives a service a GPU need
    # Only the inventory's targets: Debian's packaged Prometheus scrapes localhost:9100 as job node in the seconds
    # between its install and the role's configuration, and the restart keeps those samples queryable for minutes.
    query = _get_json(gateway, "http://127.0.0.1:9090/api/v1/query?query="
                      "node_load1%7Binstance%3D~%22xlm-provision-.%2B%22%7D")["data"]["result"]
    assert {(series["metric"]["instance"], series["metric"].get("host")) for series in query} == {
        (f"{GATEWAY}:9100", GATEWAY), (f"{SPEECH}:9100", SPEECH)}


def _rules(gateway) -> dict[str, dict]:
    groups = _get_json(gateway, "http://127.0.0.1:9090/api/v1/rules")["data"]["groups"]
    return {rule["name"]: rule for group in groups for rule in group["rules"]}


def test_host_alert_rules_are_loaded(gateway):
    rules = _rules(gateway)
    assert rules["XlHostExporterDown"]["health"] == "ok"
    assert rules["XlHostDiskSpaceLow"]["health"] == "ok"


def test_a_stopped_node_exporter_raises_the_host_alert_for_that_host(gateway, speech):
    def pending_hosts() -> set[str]:
        return {alert["labels"]["host"] for alert in _rules(gateway)["XlHostExporterDown"].get("alerts", [])}
    assert pending_hosts() == set()
    speech.check_output("systemctl stop prometheus-node-exporter")
    try:
        # Pending first: the alert fires after 2 minutes down, which the test does not wait for.
        _wait_until(lambda: pending_hosts() == {SPEECH}, f"no alert for the stopped exporter: {pending_hosts()}")
    finally:
        speech.check_output("systemctl start prometheus-node-exporter")
    _wait_until(lambda: pending_hosts() == set(), "the alert stays after the exporter is back")


@pytest.fixture(scope="module")
def stand_in(speech) -> Iterator[None]:
    """An instance stand-in on the speech host's engine, published on the asr blue port and on an unlisted one,
    answering 200 on /readyz as a ready instance does."""
    speech.run(f"docker rm -f {STAND_IN}")
    if speech.run(f"docker image inspect {USR_IMAGE}").rc != 0:
        speech.check_output(f"tar -C / -c bin lib lib64 sbin | docker import - {USR_IMAGE}")
    speech.check_output("mkdir -p /srv/stand-in && echo ready > /srv/stand-in/readyz")
    speech.check_output(f"docker run -d --name {STAND_IN} -p {ASR_BLUE}:8000 -p {UNLISTED}:8000"
                        f" -v /usr:/usr:ro -v /srv/stand-in:/srv:ro {USR_IMAGE}"
                        " python3 -m http.server --bind 0.0.0.0 --directory /srv 8000")
    try:
        _wait_until(lambda: _get(speech, f"http://127.0.0.1:{ASR_BLUE}/readyz").rc == 0,
                    "the stand-in does not answer on the speech host itself")
        yield
    finally:
        speech.run(f"docker rm -f {STAND_IN}")


def _server_states(gateway) -> dict[str, str]:
    answer = _get(gateway, "http://127.0.0.1:8404/stats;csv")
    assert answer.rc == 0, answer.stderr
    lines = answer.stdout.lstrip("# ").splitlines()
    header = lines[0].split(",")
    rows = [dict(zip(header, line.split(","), strict=False)) for line in lines[1:] if line]
    # A state in transition reads "UP 1/2" or "DOWN 1/2".
    return {f"{row['pxname']}/{row['svname']}": row["status"].split()[0] for row in rows
            if row["svname"] not in ("FRONTEND", "BACKEND")}


def test_haproxy_checks_reach_an_instance_the_speech_host_publishes(gateway, stand_in):
    def asr_servers() -> dict[str, str]:
        return {name: state for name, state in _server_states(gateway).items() if name.startswith("be_asr/")}
    _wait_until(lambda: asr_servers().get("be_asr/asr_blue") == "UP", f"asr blue never came up: {asr_servers()}")
    # Blue answers its checks; nothing runs on green.
    assert asr_servers() == {"be_asr/asr_blue": "UP", "be_asr/asr_green": "DOWN"}


def test_the_gateway_host_cannot_reach_a_published_port_the_speech_host_does_not_list(gateway, speech, stand_in):
    probe = "python3 -c \"import socket; socket.create_connection(('{address}', {port}), 3).close()\""
    assert gateway.run(probe.format(address=SPEECH, port=ASR_BLUE)).rc == 0
    refused = gateway.run(probe.format(address=SPEECH, port=UNLISTED))
    assert refused.rc != 0 and "timed out" in refused.stderr, refused.stderr
    assert speech.run(probe.format(address="127.0.0.1", port=UNLISTED)).rc == 0
