"""The gateway role converged on a systemd host: HAProxy running under systemd with our configuration."""

import json


def test_haproxy_is_a_running_enabled_systemd_service(host):
    assert host.package("haproxy").is_installed
    service = host.service("haproxy")
    assert service.is_running
    assert service.is_enabled


def test_configuration_has_a_backend_per_service_and_a_server_per_colour(host):
    config = host.file("/etc/haproxy/haproxy.cfg")
    assert config.mode == 0o640
    for line in ("backend be_asr", "server asr_blue 127.0.0.1:18001 weight 0 check",
                 "server asr_green 127.0.0.1:18002 weight 0 check", "backend be_tts",
                 "use_backend be_tts if { path_beg /v1/audio/speech }", "option httpchk GET /readyz"):
        assert line in config.content_string
    assert host.run("haproxy -c -f /etc/haproxy/haproxy.cfg").rc == 0


def test_listeners_are_on_loopback(host):
    assert host.socket("tcp://127.0.0.1:8080").is_listening
    assert host.socket("tcp://127.0.0.1:8404").is_listening
    assert not host.socket("tcp://0.0.0.0:8080").is_listening


def test_runtime_api_answers_on_the_admin_socket(host):
    script = ("import socket,sys;s=socket.socket(socket.AF_UNIX);s.connect('/run/haproxy/admin.sock');"
              "s.sendall(b'show servers state be_asr\\n');sys.stdout.write(s.makefile().read())")
    answer = host.check_output(f'python3 -c "{script}"')
    assert "asr_blue" in answer and "asr_green" in answer


def test_unknown_paths_get_a_json_404(host):
    script = ("import urllib.request,urllib.error\n"
              "try:\n urllib.request.urlopen('http://127.0.0.1:8080/nope')\n"
              "except urllib.error.HTTPError as e:\n print(e.code, e.read().decode())")
    code, _, body = host.check_output(f"python3 -c \"{script}\"").partition(" ")
    assert code == "404"
    assert json.loads(body)["error"]["type"] == "not_found"
