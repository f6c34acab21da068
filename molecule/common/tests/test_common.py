"""The common role converged on a systemd container: base packages, service user, chrony, kernel settings,
log rotation, and an nftables firewall checked from the docker host itself."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator

import pytest

ALLOWED_PORT = 8443
# The role's own node exporter listens there on every address; the converge opens it to loopback only.
LOOPBACK_ONLY_PORT = 9100
DENIED_PORT = 8999


def test_base_packages_are_installed(host):
    for name in ("ca-certificates", "chrony", "logrotate", "nftables", "python3", "procps"):
        assert host.package(name).is_installed, name


def test_service_user_and_group(host):
    user = host.user("xlerobot")
    assert user.exists
    assert user.group == "xlerobot"
    assert user.home == "/var/lib/xlerobot"
    assert user.shell == "/usr/sbin/nologin"
    assert user.uid < 1000
    assert host.group("xlerobot").exists
    home = host.file("/var/lib/xlerobot")
    assert home.is_directory
    assert home.user == "xlerobot"


def test_log_directory(host):
    logs = host.file("/var/log/xlerobot")
    assert logs.is_directory
    assert logs.user == "xlerobot"
    assert logs.group == "xlerobot"
    assert logs.mode == 0o750


def test_chrony_runs_against_loopback_only_without_touching_the_clock(host):
    service = host.service("chrony")
    assert service.is_running
    assert service.is_enabled
    sources = host.file("/etc/chrony/sources.d/xlerobot.sources").content_string
    assert [line for line in sources.splitlines() if line and not line.startswith("#")] == ["server 127.0.0.1 iburst"]
    conf = host.file("/etc/chrony/chrony.conf").content_string
    assert not [line for line in conf.splitlines() if line.startswith(("pool ", "server "))]
    assert "-x" in host.file("/etc/default/chrony").content_string.split("DAEMON_OPTS=", 1)[1].splitlines()[0]
    assert "-x" in host.check_output("ps -o args= -C chronyd").split()
    reported = host.check_output("chronyc -n sources")
    assert "127.0.0.1" in reported
    assert sum(1 for line in reported.splitlines() if line.startswith("^")) == 1


def test_kernel_settings_file(host):
    conf = host.file("/etc/sysctl.d/60-xlerobot.conf")
    assert conf.mode == 0o644
    lines = set(conf.content_string.splitlines())
    assert "net.core.somaxconn = 65535" in lines
    assert "net.ipv4.tcp_max_syn_backlog = 65535" in lines
    assert "net.ipv4.ip_local_port_range = 20000 65000" in lines
    assert "net.ipv4.tcp_tw_reuse = 1" in lines
    assert "fs.file-max = 2097152" in lines


def test_node_exporter_runs_as_prometheus_and_serves_host_metrics(host):
    service = host.service("prometheus-node-exporter")
    assert service.is_running and service.is_enabled
    assert host.process.get(comm="prometheus-node").user == "prometheus"
    assert not host.package("prometheus-node-exporter-collectors").is_installed  # no recommends
    metrics = host.check_output(
        f"python3 -c \"import urllib.request;print(urllib.request.urlopen('http://127.0.0.1:{LOOPBACK_ONLY_PORT}/metrics').read().decode())\"")
    assert "node_exporter_build_info" in metrics
    assert "node_load1 " in metrics


def test_logrotate_configuration_is_valid(host):
    conf = host.file("/etc/logrotate.d/xlerobot").content_string
    for directive in ("daily", "rotate 14", "compress", "delaycompress", "missingok", "notifempty", "copytruncate",
                      "su xlerobot xlerobot"):
        assert f"    {directive}\n" in conf, directive
    assert host.run("logrotate -d /etc/logrotate.d/xlerobot").rc == 0


def test_nftables_service_and_table(host):
    service = host.service("nftables")
    assert service.is_enabled
    assert host.run("systemctl is-active nftables").stdout.strip() == "active"
    table = host.check_output("nft list table inet xlerobot")
    assert "policy drop" in table
    assert f"tcp dport {ALLOWED_PORT} accept" in table
    assert "tcp dport 22 accept" in table
    assert f"ip saddr 127.0.0.0/8 tcp dport {LOOPBACK_ONLY_PORT} accept" in table
    assert str(DENIED_PORT) not in table
    assert host.file("/etc/nftables.conf").mode == 0o644
    ruleset = host.file("/etc/nftables.conf").content_string
    assert "flush ruleset" not in [line.strip() for line in ruleset.splitlines()]


def test_reload_and_stop_keep_tables_of_others(host):
    """Docker keeps its own tables in the same ruleset; reloading or stopping nftables must leave them."""
    host.check_output("nft add table ip docker_like")
    try:
        host.check_output("systemctl reload nftables")
        assert "table ip docker_like" in host.check_output("nft list tables")
        host.check_output("systemctl stop nftables")
        tables = host.check_output("nft list tables")
        assert "table ip docker_like" in tables
        assert "table inet xlerobot" not in tables
    finally:
        host.run("systemctl start nftables")
        host.run("nft delete table ip docker_like")
    assert "table inet xlerobot" in host.check_output("nft list tables")


@pytest.fixture
def listeners(host) -> Iterator[str]:
    """HTTP listeners inside the container on an allowed and a denied port, beside the node exporter on the
    loopback-only one; yields the container's address."""
    pids = []
    for port in (ALLOWED_PORT, DENIED_PORT):
        started = host.run(f"setsid nohup python3 -m http.server {port} --bind 0.0.0.0 >/dev/null 2>&1 & echo $!")
        pids.append(started.stdout.strip())
    try:
        for port in (ALLOWED_PORT, LOOPBACK_ONLY_PORT, DENIED_PORT):
            deadline = time.monotonic() + 10
            while not (host.socket(f"tcp://0.0.0.0:{port}").is_listening or host.socket(f"tcp://:::{port}").is_listening):
                assert time.monotonic() < deadline, f"nothing listens on {port} inside the container"
                time.sleep(0.2)
        yield host.interface("eth0").addresses[0]
    finally:
        host.run(f"kill {' '.join(pids)}")


def _connects(address: str, port: int) -> bool:
    try:
        with socket.create_connection((address, port), timeout=3):
            return True
    except TimeoutError:
        return False


def test_firewall_from_outside(host, listeners):
    assert _connects(listeners, ALLOWED_PORT)
    assert not _connects(listeners, DENIED_PORT)
    assert not _connects(listeners, LOOPBACK_ONLY_PORT)
    inside = host.run(f"python3 -c \"import socket; socket.create_connection(('127.0.0.1', {LOOPBACK_ONLY_PORT}), 3)\"")
    assert inside.rc == 0, inside.stderr


# Ports a container inside the test host publishes (all to its one listener on 8000). The converge opens 8081 to
# all, 8082 to the test host's own network (which holds the docker host's address), 8083 to loopback only, and
# lists 8084 nowhere.
PUBLISHED_OPEN, PUBLISHED_LAN, PUBLISHED_LOOPBACK, PUBLISHED_DENIED = 8081, 8082, 8083, 8084
# The listener's own port inside its container: what a rule on the port after the DNAT would see.
CONTAINER_PORT = 8000
# A tiny image: the merged-/usr symlinks of the test host; /usr itself is mounted read-only, so python3 comes along
# and nothing is pulled.
USR_IMAGE = "xlm/usr:1"
# "Outside" for the containers: a network namespace inside the test host, reached through the forward path.
OUTSIDE_NS, OUTSIDE_HOST, OUTSIDE_PEER = "xlm-outside", "192.0.2.1", "192.0.2.2"


def _in_container(host, code: str, *, network: str = "bridge"):
    """Run python code in a throw-away container on the test host's engine."""
    return host.run(f"docker run --rm --network {network} -v /usr:/usr:ro {USR_IMAGE} python3 -c \"{code}\"")


def _connect_code(address: str, port: int) -> str:
    return f"import socket; socket.create_connection(('{address}', {port}), 3).close()"


def _wait_until(condition, what: str, seconds: float = 20) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, what
        time.sleep(0.3)


@pytest.fixture(scope="module")
def published(host) -> Iterator[dict[str, str]]:
    """A container publishing its listener on PUBLISHED_*; yields the test host's and the container's address."""
    host.run("docker rm -f xlm-published")
    if host.run(f"docker image inspect {USR_IMAGE}").rc != 0:
        host.check_output(f"tar -C / -c bin lib lib64 sbin | docker import - {USR_IMAGE}")
    ports = " ".join(f"-p {port}:{CONTAINER_PORT}"
                     for port in (PUBLISHED_OPEN, PUBLISHED_LAN, PUBLISHED_LOOPBACK, PUBLISHED_DENIED))
    host.check_output(f"docker run -d --name xlm-published {ports} -v /usr:/usr:ro {USR_IMAGE}"
                      f" python3 -m http.server --bind 0.0.0.0 {CONTAINER_PORT}")
    try:
        inner = host.check_output("docker inspect -f '{{.NetworkSettings.IPAddress}}' xlm-published")
        probe = f"python3 -c \"{_connect_code(inner, CONTAINER_PORT)}\""
        _wait_until(lambda: host.run(probe).rc == 0, "the published container does not listen")
        yield {"host": host.interface("eth0").addresses[0], "container": inner}
    finally:
        host.run("docker rm -f xlm-published")


def test_forward_chain_in_our_table(host):
    table = host.check_output("nft list table inet xlerobot")
    assert "hook forward" in table
    assert f"ct original proto-dst {PUBLISHED_OPEN} accept" in table
    assert f"ct original ip saddr 127.0.0.0/8 meta l4proto tcp ct original proto-dst {PUBLISHED_LOOPBACK}" in table
    assert str(PUBLISHED_DENIED) not in table
    # Docker's own chains are where Docker put them: the role adds nothing to them.
    assert "xlerobot" not in host.check_output("iptables -S")


def test_published_ports_from_outside(published):
    """Only the listed published ports, from their sources, get through; the others are dropped (a timeout)."""
    assert _connects(published["host"], PUBLISHED_OPEN)
    assert _connects(published["host"], PUBLISHED_LAN)
    assert not _connects(published["host"], PUBLISHED_LOOPBACK)
    assert not _connects(published["host"], PUBLISHED_DENIED)


def test_the_host_itself_reaches_every_published_port(host, published):
    """The ports the firewall drops from outside are published and answer: the host's own connections still work."""
    for port in (PUBLISHED_LOOPBACK, PUBLISHED_DENIED):
        reached = host.run(f"python3 -c \"{_connect_code(published['host'], port)}\"")
        assert reached.rc == 0, (port, reached.stderr)


def test_containers_reach_each_other_and_the_outside(host, published):
    # Container to container on Docker's bridge, to a port no firewall entry lists.
    direct = _in_container(host, _connect_code(published["container"], CONTAINER_PORT))
    assert direct.rc == 0, direct.stderr
    # Container egress: out of docker0 through the forward path (masqueraded) to a listener in another namespace.
    host.run(f"ip netns del {OUTSIDE_NS}")
    host.check_output(f"ip netns add {OUTSIDE_NS}")
    try:
        host.check_output(f"ip link add xlm-out0 type veth peer name xlm-out1 netns {OUTSIDE_NS}")
        host.check_output(f"ip addr add {OUTSIDE_HOST}/24 dev xlm-out0 && ip link set xlm-out0 up")
        host.check_output(f"ip netns exec {OUTSIDE_NS} sh -c 'ip addr add {OUTSIDE_PEER}/24 dev xlm-out1"
                          f" && ip link set xlm-out1 up && ip link set lo up'")
        host.check_output(f"setsid nohup ip netns exec {OUTSIDE_NS} python3 -m http.server --bind {OUTSIDE_PEER}"
                          f" {CONTAINER_PORT} >/dev/null 2>&1 &")
        _wait_until(lambda: host.run(f"ip netns exec {OUTSIDE_NS} python3 -c"
                                     f" \"{_connect_code(OUTSIDE_PEER, CONTAINER_PORT)}\"").rc == 0,
                    "nothing listens in the outside namespace")
        egress = _in_container(host, _connect_code(OUTSIDE_PEER, CONTAINER_PORT))
        assert egress.rc == 0, egress.stderr
    finally:
        host.run(f"ip netns pids {OUTSIDE_NS} | xargs -r kill")
        host.run("ip link del xlm-out0")
        host.run(f"ip netns del {OUTSIDE_NS}")


def test_reload_keeps_dockers_rules_and_ours(host, published):
    host.check_output("systemctl reload nftables")
    assert host.run("iptables -t nat -S DOCKER").rc == 0
    assert _connects(published["host"], PUBLISHED_OPEN)
    assert not _connects(published["host"], PUBLISHED_DENIED)
