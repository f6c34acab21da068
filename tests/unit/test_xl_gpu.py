"""xl_gpu and the gpu_facts module: nvidia-smi parsing, failure diagnosis, service placement.

The nvidia-smi fixtures are hand-written (see fixtures/nvidia-smi/README.md); the module tests run the real
module through `ansible` against a fake nvidia-smi script, so no GPU is needed.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import xl_gpu as gpu

from tests.support import ansible_cli

REPO = Path(__file__).resolve().parents[2]
FIXTURES = Path(__file__).resolve().parent / "fixtures" / "nvidia-smi"


def fixture(name: str) -> str:
    return (FIXTURES / name).read_text()


def test_query_fields_match_what_nvidia_smi_is_asked() -> None:
    assert gpu.QUERY_FIELDS == ["index", "name", "uuid", "memory.total", "memory.used", "driver_version",
                                "mig.mode.current", "pci.bus_id"]


def test_parse_single_h100() -> None:
    assert gpu.parse_query_gpu(fixture("single-h100.csv")) == [{
        "index": 0, "name": "NVIDIA H100 80GB HBM3", "uuid": "GPU-4f6b9a1e-2c3d-4e5f-8a9b-0c1d2e3f4a5b",
        "memory_total_mib": 81559, "memory_used_mib": 1, "memory_free_mib": 81558, "driver_version": "550.54.15",
        "mig_enabled": False, "pci_bus_id": "00000000:18:00.0",
    }]


def test_parse_multi_a100_keeps_order_and_memory() -> None:
    gpus = gpu.parse_query_gpu(fixture("multi-a100.csv"))
    assert [g["index"] for g in gpus] == [0, 1, 2, 3]
    assert [g["memory_free_mib"] for g in gpus] == [11920, 81916, 40960, 20480]
    assert {g["name"] for g in gpus} == {"NVIDIA A100-SXM4-80GB"}
    assert gpus[3]["pci_bus_id"] == "00000000:4E:00.0"
    assert len({g["uuid"] for g in gpus}) == 4


def test_parse_mig_enabled_and_not_applicable() -> None:
    a30, t4 = gpu.parse_query_gpu(fixture("mig-enabled.csv"))
    assert a30["mig_enabled"] is True
    assert t4["mig_enabled"] is None
    assert t4["name"] == "Tesla T4"


def test_missing_values_become_none() -> None:
    line = "0, NVIDIA H100 80GB HBM3, GPU-x, [N/A], [Not Supported], 550.54.15, Disabled, [Unknown Error]\n"
    (parsed,) = gpu.parse_query_gpu(line)
    assert parsed["memory_total_mib"] is None
    assert parsed["memory_used_mib"] is None
    assert parsed["memory_free_mib"] is None
    assert parsed["pci_bus_id"] is None


def test_blank_lines_and_empty_output() -> None:
    assert gpu.parse_query_gpu("") == []
    assert len(gpu.parse_query_gpu("\n" + fixture("single-h100.csv") + "\n\n")) == 1


@pytest.mark.parametrize("text, message", [
    ("0, NVIDIA H100 80GB HBM3, GPU-x, 81559, 1, 550.54.15, Disabled\n", r"line 1: expected 8 .* got 7"),
    (fixture("single-h100.csv") + "garbage\n", r"line 2: expected 8 .*'garbage'"),
    ("0, H100, GPU-x, 80 GiB, 1, 550.54.15, Disabled, 00000000:18:00.0\n", r"line 1: memory.total .*'80 GiB'"),
    ("0, H100, GPU-x, 81559, 1 MiB, 550.54.15, Disabled, 00000000:18:00.0\n", r"line 1: memory.used .*'1 MiB'"),
    ("GPU 0, H100, GPU-x, 81559, 1, 550.54.15, Disabled, 00000000:18:00.0\n", r"line 1: index"),
    ("0, H100, [N/A], 81559, 1, 550.54.15, Disabled, 00000000:18:00.0\n", r"line 1: GPU 0 has no UUID"),
    ("0, H100, GPU-x, 81559, 1, 550.54.15, Maybe, 00000000:18:00.0\n", r"line 1: mig.mode.current is 'Maybe'"),
    # A CSV header means the query ran without `noheader`; the field names are not numbers.
    ("index, name, uuid, memory.total [MiB], memory.used [MiB], driver_version, mig.mode.current, pci.bus_id\n",
     r"line 1: index"),
])
def test_malformed_lines_name_the_line(text: str, message: str) -> None:
    with pytest.raises(gpu.GpuError, match=message):
        gpu.parse_query_gpu(text)


@pytest.mark.parametrize("name", ["banner.txt", "query-full.txt"])
def test_cuda_version_from_banner_and_query(name: str) -> None:
    assert gpu.parse_cuda_version(fixture(name)) == "12.4"


def test_cuda_version_absent() -> None:
    assert gpu.parse_cuda_version(fixture("single-h100.csv")) is None
    assert gpu.parse_cuda_version("CUDA Version: N/A") is None


def test_driver_mismatch_is_explained() -> None:
    message = gpu.diagnose_failure(18, "", fixture("driver-mismatch.txt"))
    assert "kernel driver" in message
    assert "NVML library 550.54" in message
    assert "reboot" in message
    assert "reinstall" in message


def test_mismatch_on_stdout_is_recognised_too() -> None:
    # nvidia-smi prints some errors on stdout; both streams are read.
    assert "version" in gpu.diagnose_failure(18, fixture("driver-mismatch.txt"), "")


@pytest.mark.parametrize("stdout, expected", [
    ("NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA driver. Make sure that the latest "
     "NVIDIA driver is installed and running.\n", "driver is not loaded"),
    ("No devices were found\n", "no NVIDIA GPU is visible"),
    ("Unable to determine the device handle for GPU0000:18:00.0: GPU is lost.  Reboot the system to recover "
     "this GPU\n", "fallen off the bus"),
])
def test_known_failures_are_explained(stdout: str, expected: str) -> None:
    assert expected in gpu.diagnose_failure(9, stdout, "")


def test_unknown_failure_quotes_the_first_line() -> None:
    message = gpu.diagnose_failure(4, "", "\n  Something odd happened\nsecond line\n")
    assert message == "nvidia-smi failed with exit code 4: Something odd happened"
    assert gpu.diagnose_failure(1, "", "") == "nvidia-smi failed with exit code 1: no output"


def _a100s() -> list[dict[str, Any]]:
    return gpu.parse_query_gpu(fixture("multi-a100.csv"))


def _uuid(gpus: list[dict[str, Any]], index: int) -> str:
    return str(gpus[index]["uuid"])


def test_assign_best_fit_largest_first() -> None:
    # Free MiB: GPU0 11920, GPU1 81916, GPU2 40960, GPU3 20480.
    gpus = _a100s()
    placed = gpu.assign_gpus(gpus, {"tts": 10000, "asr": 30000, "llm": 60000, "vad": 15000})
    assert placed == {
        "llm": _uuid(gpus, 1),  # only GPU1 fits 60000
        "asr": _uuid(gpus, 2),  # GPU2 (40960) is the tightest fit for 30000
        "vad": _uuid(gpus, 3),  # GPU2 has 10960 left now, GPU3 20480 is the tightest fit
        "tts": _uuid(gpus, 2),  # GPU2's 10960 left is tighter than GPU0's 11920
    }


def test_assign_takes_earlier_placements_off_the_free_memory() -> None:
    gpus = gpu.parse_query_gpu(fixture("single-h100.csv"))
    uuid = _uuid(gpus, 0)
    assert gpu.assign_gpus(gpus, {"a": 40000, "b": 40000}) == {"a": uuid, "b": uuid}
    with pytest.raises(gpu.GpuError, match=r"c \(40000 MiB\)"):
        gpu.assign_gpus(gpus, {"a": 40000, "b": 40000, "c": 40000})


def test_assign_is_deterministic_on_ties() -> None:
    line = "{i}, NVIDIA A100-SXM4-80GB, GPU-{i}, 81920, 0, 550.54.15, Disabled, 00000000:0{i}:00.0"
    text = "\n".join(line.format(i=i) for i in (1, 0))  # listed out of order on purpose
    gpus = gpu.parse_query_gpu(text)
    # Equal needs go by service name; equal free memory goes to the lower GPU index.
    assert gpu.assign_gpus(gpus, {"b": 50000, "a": 50000}) == {"a": "GPU-0", "b": "GPU-1"}
    assert gpu.assign_gpus(list(reversed(gpus)), {"a": 50000, "b": 50000}) == {"a": "GPU-0", "b": "GPU-1"}


def test_assign_failure_names_every_service_and_the_free_memory() -> None:
    gpus = _a100s()
    with pytest.raises(gpu.GpuError) as caught:
        gpu.assign_gpus(gpus, {"llm": 90000, "asr": 85000, "tts": 1000})
    message = str(caught.value)
    assert "llm (90000 MiB)" in message
    assert "asr (85000 MiB)" in message
    assert "tts" not in message.split(";")[0]  # tts fitted
    assert f"GPU 0 {_uuid(gpus, 0)}: 10920 MiB" in message  # tts took 1000 of GPU0's 11920 (tightest fit)
    assert f"GPU 1 {_uuid(gpus, 1)}: 81916 MiB" in message


def test_need_zero_is_not_assigned() -> None:
    assert gpu.assign_gpus(_a100s(), {"gateway": 0}) == {}
    assert gpu.assign_gpus([], {"gateway": 0}) == {}
    assert "gateway" not in gpu.assign_gpus(_a100s(), {"gateway": 0, "asr": 1000})


def test_no_gpu_host_fails_any_real_need() -> None:
    with pytest.raises(gpu.GpuError, match=r"asr \(1 MiB\).*none \(this host has no GPU\)"):
        gpu.assign_gpus([], {"asr": 1})


def test_mig_gpus_and_unknown_memory_are_not_used() -> None:
    a30, t4 = gpu.parse_query_gpu(fixture("mig-enabled.csv"))
    assert gpu.assign_gpus([a30, t4], {"asr": 1000}) == {"asr": t4["uuid"]}
    unknown = gpu.parse_query_gpu("2, Tesla T4, GPU-u, 15360, [N/A], 550.54.15, [N/A], 00000000:AF:00.0")
    with pytest.raises(gpu.GpuError) as caught:
        gpu.assign_gpus([a30, *unknown], {"asr": 1000})
    assert "MIG enabled" in str(caught.value)
    assert "GPU 2 GPU-u: unknown" in str(caught.value)


def test_recorded_placement_is_kept_without_a_new_fit_check() -> None:
    # Free MiB: GPU0 11920, GPU1 81916, GPU2 40960, GPU3 20480. asr was placed on GPU1 by an earlier run and its
    # instances now hold 30000 MiB there; a fresh best fit would move it to GPU2.
    gpus = _a100s()
    recorded = {"asr": _uuid(gpus, 1)}
    assert gpu.assign_gpus(gpus, {"asr": 30000}) == {"asr": _uuid(gpus, 2)}
    assert gpu.assign_gpus(gpus, {"asr": 30000}, recorded) == {"asr": _uuid(gpus, 1)}
    # Kept even where it would no longer fit: the memory it uses is the memory it needs.
    assert gpu.assign_gpus(gpus, {"asr": 90000}, recorded) == {"asr": _uuid(gpus, 1)}
    # A service added since is placed by free memory beside it.
    assert gpu.assign_gpus(gpus, {"asr": 30000, "tts": 20000}, recorded) == {"asr": _uuid(gpus, 1),
                                                                            "tts": _uuid(gpus, 3)}


def test_recorded_placement_gives_way_when_its_gpu_is_gone_or_unusable() -> None:
    gpus = _a100s()
    # A GPU replaced (new UUID) or taken out: placed afresh.
    assert gpu.assign_gpus(gpus, {"asr": 30000}, {"asr": "GPU-gone"}) == {"asr": _uuid(gpus, 2)}
    # A GPU switched to MIG mode since: placed afresh on a whole GPU.
    a30, t4 = gpu.parse_query_gpu(fixture("mig-enabled.csv"))
    assert gpu.assign_gpus([a30, t4], {"asr": 1000}, {"asr": a30["uuid"]}) == {"asr": t4["uuid"]}
    # A service whose need dropped to 0 leaves its GPU; one no longer listed is not placed at all.
    assert gpu.assign_gpus(gpus, {"asr": 0}, {"asr": _uuid(gpus, 1)}) == {}
    assert gpu.assign_gpus(gpus, {}, {"asr": _uuid(gpus, 1)}) == {}


def test_recorded_placement_must_name_gpus() -> None:
    with pytest.raises(gpu.GpuError, match=r"recorded GPU of asr must be a GPU UUID; got 3"):
        gpu.assign_gpus(_a100s(), {"asr": 1000}, {"asr": 3})


@pytest.mark.parametrize("need", [-1, 1.5, "100", True])
def test_bad_needs_are_refused(need: Any) -> None:
    with pytest.raises(gpu.GpuError, match="asr must be a whole number of MiB"):
        gpu.assign_gpus(_a100s(), {"asr": need})


# --- the module itself, run by ansible against a fake nvidia-smi -----------------------------------------------

# Both always exist where the suite runs (make test builds the venv; Debian has /usr/bin/python3): no skip.
def run_module(args: dict[str, Any]) -> dict[str, Any]:
    """Run the module on localhost through the real `ansible` CLI and return the host's result."""
    return ansible_cli.run_module("gpu_facts", args)


def fake_nvidia_smi(tmp_path: Path, query: str, banner: str = "banner.txt") -> Path:
    """A shell script answering like nvidia-smi: the query fixture for --query-gpu, the banner otherwise."""
    script = tmp_path / "nvidia-smi"
    script.write_text(f"""#!/bin/sh
case "$1" in
  --query-gpu=*) [ "$1" = "--query-gpu={','.join(gpu.QUERY_FIELDS)}" ] || exit 2
                 [ "$2" = "--format=csv,noheader,nounits" ] || exit 2
                 cat '{FIXTURES / query}' ;;
  *) cat '{FIXTURES / banner}' ;;
esac
""")
    script.chmod(0o755)
    return script


def test_module_reports_facts_and_assignments(tmp_path: Path) -> None:
    script = fake_nvidia_smi(tmp_path, "multi-a100.csv")
    result = run_module({"nvidia_smi": str(script), "needs": {"asr": 30000, "gateway": 0}})
    assert result.get("failed") is not True, result
    assert result["changed"] is False
    facts = result["ansible_facts"]
    assert facts["xl_gpu_count"] == 4
    assert facts["xl_gpu_driver_version"] == "550.54.15"
    assert facts["xl_gpu_cuda_version"] == "12.4"
    assert [g["memory_free_mib"] for g in facts["xl_gpus"]] == [11920, 81916, 40960, 20480]
    assert result["assignments"] == {"asr": facts["xl_gpus"][2]["uuid"]}
    assert result["needs"] == {"asr": 30000}
    assert result["nvidia_smi"] == str(script)


def test_module_keeps_the_recorded_placement(tmp_path: Path) -> None:
    script = fake_nvidia_smi(tmp_path, "multi-a100.csv")
    gpus = _a100s()
    placement = tmp_path / "gpu-placement.json"
    placement.write_text(json.dumps({"assignments": {"asr": _uuid(gpus, 1)}, "needs": {"asr": 30000}}))
    result = run_module({"nvidia_smi": str(script), "needs": {"asr": 30000}, "placement": str(placement)})
    assert result.get("failed") is not True, result
    assert result["assignments"] == {"asr": _uuid(gpus, 1)}
    # No file yet: placed afresh.
    result = run_module({"nvidia_smi": str(script), "needs": {"asr": 30000}, "placement": str(tmp_path / "none")})
    assert result["assignments"] == {"asr": _uuid(gpus, 2)}


@pytest.mark.parametrize("content", ["{not json", '{"assignments": {"asr": 1}}', '["GPU-1"]'])
def test_module_refuses_an_unreadable_placement(tmp_path: Path, content: str) -> None:
    script = fake_nvidia_smi(tmp_path, "multi-a100.csv")
    placement = tmp_path / "gpu-placement.json"
    placement.write_text(content)
    result = run_module({"nvidia_smi": str(script), "needs": {"asr": 30000}, "placement": str(placement)})
    assert result.get("failed") is True
    assert result["msg"].startswith(f"{placement}: not a GPU placement")
    assert "remove it to place the services afresh" in result["msg"]


def test_module_without_nvidia_smi(tmp_path: Path) -> None:
    optional = run_module({"nvidia_smi": "/nonexistent"})
    assert optional.get("failed") is not True, optional
    assert optional["changed"] is False
    assert optional["gpu_count"] == 0
    assert optional["gpus"] == []
    assert optional["ansible_facts"]["xl_gpu_count"] == 0
    assert optional["ansible_facts"]["xl_gpu_cuda_version"] is None

    required = run_module({"nvidia_smi": "/nonexistent", "required": True})
    assert required["failed"] is True
    assert "this host has no NVIDIA GPU tooling: /nonexistent was not found" in required["msg"]


def test_module_fails_with_the_diagnosis(tmp_path: Path) -> None:
    script = tmp_path / "nvidia-smi"
    # What nvidia-smi does after a driver upgrade without a reboot: the message on stderr, exit code 18.
    script.write_text(f"#!/bin/sh\ncat '{FIXTURES / 'driver-mismatch.txt'}' >&2\nexit 18\n")
    script.chmod(0o755)
    result = run_module({"nvidia_smi": str(script)})
    assert result["failed"] is True
    assert "kernel driver and the user-space NVML library differ" in result["msg"]
    assert result["rc"] == 18
