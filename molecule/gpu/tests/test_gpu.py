"""The gpu role converged on a host without a GPU: nothing of NVIDIA's was installed, configured or started; the
placement made against the replayed nvidia-smi output is recorded for the deploys."""

import json

import pytest


@pytest.mark.parametrize("package", ["nvidia-driver", "firmware-misc-nonfree", "nvidia-container-toolkit"])
def test_no_nvidia_package_is_installed(host, package):
    assert not host.package(package).is_installed


def test_no_apt_source_or_key_was_added(host):
    assert not host.file("/etc/apt/sources.list.d/xlerobot-gpu-driver.list").exists
    assert not host.file("/etc/apt/sources.list.d/nvidia-container-toolkit.list").exists
    assert not host.file("/etc/apt/keyrings/nvidia-container-toolkit.asc").exists


def test_docker_was_not_configured(host):
    assert not host.file("/etc/docker/daemon.json").exists


def test_no_dcgm_exporter(host):
    assert host.run("systemctl list-units --all --no-legend 'dcgm*'").stdout.strip() == ""
    docker = host.run("docker ps --all --quiet --filter name=dcgm-exporter")
    # No docker on the test host is as good as no container.
    assert docker.rc != 0 or docker.stdout.strip() == ""


def test_the_nvidia_smi_stand_in_is_off_the_path(host):
    assert host.run("command -v nvidia-smi").rc != 0
    assert host.file("/opt/molecule-gpu/bin/nvidia-smi").is_file


def test_the_placement_is_recorded_for_the_deploys(host):
    placement = host.file("/etc/xlerobot/gpu-placement.json")
    assert placement.is_file
    assert (placement.user, placement.group, placement.mode) == ("root", "root", 0o644)
    assert json.loads(placement.content_string) == {
        "assignments": {"asr": "GPU-0a1b2c3d-1111-4a5b-8c9d-0e1f2a3b4c5d",
                        "tts": "GPU-0a1b2c3d-1111-4a5b-8c9d-0e1f2a3b4c5d"},
        "needs": {"asr": 6000, "tts": 2000},
    }
