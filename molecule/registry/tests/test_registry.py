"""The registry role converged on a systemd host: docker-registry serving the v2 API on loopback."""


def test_registry_is_a_running_enabled_systemd_service(host):
    assert host.package("docker-registry").is_installed
    service = host.service("docker-registry")
    assert service.is_running
    assert service.is_enabled


def test_configuration_and_storage(host):
    config = host.file("/etc/docker/registry/config.yml")
    assert config.mode == 0o640
    assert "addr: 127.0.0.1:5000" in config.content_string
    assert "rootdirectory: /var/lib/docker-registry" in config.content_string
    assert host.file("/var/lib/docker-registry").is_directory


def test_v2_api_answers_on_loopback_only(host):
    assert host.socket("tcp://127.0.0.1:5000").is_listening
    assert not host.socket("tcp://0.0.0.0:5000").is_listening
    code = host.check_output("python3 -c \"import urllib.request;"
                             "print(urllib.request.urlopen('http://127.0.0.1:5000/v2/').status)\"")
    assert code == "200"
