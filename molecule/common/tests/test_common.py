"""The common role converged on a systemd container: base packages, service user, chrony, kernel settings,
log rotation, and an nftables firewall checked from the docker host itself."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator

import pytest

ALLOWED_PORT = 8443
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
    """HTTP listeners inside the container on an allowed, a loopback-only and a denied port; yields its address."""
    pids = []
    for port in (ALLOWED_PORT, LOOPBACK_ONLY_PORT, DENIED_PORT):
        started = host.run(f"setsid nohup python3 -m http.server {port} --bind 0.0.0.0 >/dev/null 2>&1 & echo $!")
        pids.append(started.stdout.strip())
    try:
        for port in (ALLOWED_PORT, LOOPBACK_ONLY_PORT, DENIED_PORT):
            deadline = time.monotonic() + 10
            while not host.socket(f"tcp://0.0.0.0:{port}").is_listening:
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
