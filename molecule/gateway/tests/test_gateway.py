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


def test_listeners_are_on_loopback(host):  # the frontend speaks TLS
    assert host.socket("tcp://127.0.0.1:8080").is_listening
    assert host.socket("tcp://127.0.0.1:8404").is_listening
    assert not host.socket("tcp://0.0.0.0:8080").is_listening


def test_runtime_api_answers_on_the_admin_socket(host):
    script = ("import socket,sys;s=socket.socket(socket.AF_UNIX);s.connect('/run/haproxy/admin.sock');"
              "s.sendall(b'show servers state be_asr\\n');sys.stdout.write(s.makefile().read())")
    answer = host.check_output(f'python3 -c "{script}"')
    assert "asr_blue" in answer and "asr_green" in answer


# Requests from inside the test host, over TLS checked against the role's self-signed certificate.
REQUEST = """
import json, ssl, sys, urllib.request, urllib.error
context = ssl.create_default_context(cafile="/etc/haproxy/tls/selfsigned.pem")
request = urllib.request.Request("https://localhost:8080/nope")
if len(sys.argv) > 1:
    request.add_header("Authorization", "Bearer " + sys.argv[1])
try:
    urllib.request.urlopen(request, context=context)
except urllib.error.HTTPError as e:
    print(json.dumps({"status": e.code, "body": json.loads(e.read())}))
"""


def _ask(host, key=None):
    if key is None:
        return json.loads(host.check_output("python3 -c %s", REQUEST))
    return json.loads(host.check_output("python3 -c %s %s", REQUEST, key))


def test_tls_with_a_self_signed_certificate_and_its_key_kept_private(host):
    assert host.file("/etc/haproxy/tls/selfsigned.pem.key").mode == 0o600
    subject = host.check_output("openssl x509 -noout -subject -in /etc/haproxy/tls/selfsigned.pem")
    assert "CN = localhost" in subject or "CN=localhost" in subject
    assert "ssl crt /etc/haproxy/tls/selfsigned.pem" in host.file("/etc/haproxy/haproxy.cfg").content_string


def test_without_a_key_the_answer_is_401_and_with_it_the_path_is_routed(host):
    refused = _ask(host)
    assert refused["status"] == 401 and refused["body"]["error"]["type"] == "unauthorized"
    routed = _ask(host, "molecule-test-key-0123456789")
    assert routed["status"] == 404 and routed["body"]["error"]["type"] == "not_found"


def test_the_key_is_kept_only_as_a_hash(host):
    key_map = host.file("/etc/haproxy/api_keys.map")
    assert key_map.mode == 0o600
    assert "molecule-test-key" not in key_map.content_string
    assert "molecule-test-key" not in host.file("/etc/haproxy/haproxy.cfg").content_string


def test_a_client_over_its_rate_is_refused_with_429(host):
    # 1 request/s over 30 s: 30 in the window. Earlier tests used a few; 40 more cross it.
    statuses = [_ask(host, "molecule-test-key-0123456789")["status"] for _ in range(40)]
    assert 429 in statuses and statuses[0] == 404, statuses
