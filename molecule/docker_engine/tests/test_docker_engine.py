"""The docker_engine role converged on a systemd host: the engine runs with the role's daemon.json."""

import json

import pytest

PROBE_IMAGE = "xlm/probe:1"
# A tiny image made from the test host's own sleep and C library: nothing is pulled or copied in from outside.
PROBE_FILES = ("lib lib64 usr/lib64 usr/lib/x86_64-linux-gnu/libc.so.6 usr/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2"
               " usr/bin/sleep")


@pytest.fixture(scope="module")
def probe_image(host):
    if host.run(f"docker image inspect {PROBE_IMAGE}").rc != 0:
        host.check_output(f"tar -C / -c {PROBE_FILES} | docker import - {PROBE_IMAGE}")
    return PROBE_IMAGE


def engine(host, template):
    return host.check_output(f"docker info --format '{{{{{template}}}}}'")


def test_engine_is_a_running_enabled_systemd_service(host):
    assert host.package("docker.io").is_installed
    service = host.service("docker")
    assert service.is_running
    assert service.is_enabled


def test_daemon_json_holds_the_role_settings(host):
    config_file = host.file("/etc/docker/daemon.json")
    assert config_file.mode == 0o644
    assert config_file.user == "root"
    config = json.loads(config_file.content_string)
    assert config == {
        "live-restore": True,
        "log-driver": "json-file",
        "log-opts": {"max-size": "10m", "max-file": "3"},
        "storage-driver": "overlay2",
    }


def test_the_running_engine_uses_them(host):
    assert engine(host, ".LiveRestoreEnabled") == "true"
    assert engine(host, ".LoggingDriver") == "json-file"
    assert engine(host, ".Driver") == "overlay2"
    # No GPU on the test host: the default runtime stays runc.
    assert engine(host, ".DefaultRuntime") == "runc"


def test_a_container_logs_with_rotation(host, probe_image):
    host.run("docker rm -f xlm-log-probe")
    host.check_output(f"docker run -d --name xlm-log-probe {probe_image} /usr/bin/sleep 600")
    log_config = json.loads(host.check_output("docker inspect -f '{{json .HostConfig.LogConfig}}' xlm-log-probe"))
    assert log_config == {"Type": "json-file", "Config": {"max-size": "10m", "max-file": "3"}}
    host.run("docker rm -f xlm-log-probe")


def test_a_container_keeps_running_while_the_engine_restarts(host, probe_image):
    host.run("docker rm -f xlm-live-probe")
    host.check_output(f"docker run -d --name xlm-live-probe {probe_image} /usr/bin/sleep 600")
    pid_before = host.check_output("docker inspect -f '{{.State.Pid}}' xlm-live-probe")
    host.check_output("systemctl restart docker")
    assert host.check_output("docker inspect -f '{{.State.Running}} {{.State.Pid}}' xlm-live-probe") == \
        f"true {pid_before}"
    host.run("docker rm -f xlm-live-probe")
