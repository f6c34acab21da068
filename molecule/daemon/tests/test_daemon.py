"""The daemon role started a program in the background, recorded its pid, and it serves; the common role's node
exporter runs the same way on this host without systemd."""


def test_pid_file_names_the_running_program(host):
    pidfile = host.file("/run/xlerobot/webserver.pid")
    assert pidfile.exists
    pid = pidfile.content_string.strip()
    cmdline = host.file(f"/proc/{pid}/cmdline").content_string.replace("\x00", " ")
    assert "http.server 8999" in cmdline


def test_it_serves_on_loopback(host):
    # The minimal image has no ss/netstat, so ask the server itself.
    status = host.check_output("python3 -c \"import urllib.request;"
                               "print(urllib.request.urlopen('http://127.0.0.1:8999/').status)\"")
    assert status == "200"


def test_its_output_goes_to_the_log_file(host):
    assert host.file("/var/log/xlerobot/webserver.log").exists


def test_status_reports_running(host):
    assert host.run("start-stop-daemon --status --pidfile /run/xlerobot/webserver.pid").rc == 0


def test_the_node_exporter_runs_in_the_background_as_prometheus(host):
    pid = host.file("/run/xlerobot/node-exporter.pid").content_string.strip()
    cmdline = host.file(f"/proc/{pid}/cmdline").content_string.split("\x00")
    assert cmdline[:2] == ["/usr/bin/prometheus-node-exporter", "--web.listen-address=:9100"]
    uid = next(line.split()[1] for line in host.file(f"/proc/{pid}/status").content_string.splitlines()
               if line.startswith("Uid:"))
    assert uid == host.check_output("id -u prometheus")
    assert host.run("start-stop-daemon --status --pidfile /run/xlerobot/node-exporter.pid").rc == 0


def test_the_node_exporter_serves_host_metrics_with_the_flags_of_its_defaults_file(host):
    assert 'ARGS="--web.listen-address=:9100"' in host.file("/etc/default/prometheus-node-exporter").content_string
    metrics = host.check_output("python3 -c \"import urllib.request;"
                                "print(urllib.request.urlopen('http://127.0.0.1:9100/metrics').read().decode())\"")
    assert "node_exporter_build_info" in metrics
