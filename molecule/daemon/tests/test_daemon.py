"""The daemon role started a program in the background, recorded its pid, and it serves."""


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
