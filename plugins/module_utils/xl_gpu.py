# Copyright: XleRobot deploy authors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""NVIDIA GPUs as nvidia-smi reports them: parse its output, explain its failures, place services on GPUs.

Plain functions over plain text and data, so the gpu_facts module stays a thin shell and pytest can
exercise every branch from recorded nvidia-smi output without a GPU.
"""

from __future__ import annotations

import json
import re
from typing import Any

# Passed as `nvidia-smi --query-gpu=<fields> --format=csv,noheader,nounits`; parse_query_gpu relies on the order.
QUERY_FIELDS: list[str] = [
    "index",
    "name",
    "uuid",
    "memory.total",
    "memory.used",
    "driver_version",
    "mig.mode.current",
    "pci.bus_id",
]

# What nvidia-smi prints (rc 6) when the driver is fine but there is no GPU to report; callers treat it
# as "this host has no GPU" rather than as a broken driver.
NO_DEVICES = "No devices were found"

_CUDA_VERSION = re.compile(r"CUDA Version\s*:\s*([0-9]+(?:\.[0-9]+)+)")
_NVML_VERSION = re.compile(r"NVML library version:\s*(\S+)")


class GpuError(Exception):
    """nvidia-smi output could not be read, or the services' GPU memory needs cannot be met."""


def _value(raw: str) -> str | None:
    value = raw.strip()
    # nvidia-smi prints a bracketed reason ([N/A], [Not Supported], [Unknown Error], [Insufficient Permissions],
    # [GPU requires reset]) in place of a value the GPU or driver cannot give.
    return None if not value or (value.startswith("[") and value.endswith("]")) else value


def _mib(raw: str | None, field: str, lineno: int, line: str) -> int | None:
    if raw is None:
        return None
    try:
        return int(raw)
    except ValueError:
        raise GpuError(f"nvidia-smi line {lineno}: {field} is not a number of MiB: {raw!r} in {line!r}") from None


def parse_query_gpu(text: str) -> list[dict[str, Any]]:
    """Parse `nvidia-smi --query-gpu=QUERY_FIELDS --format=csv,noheader,nounits`, one GPU per line."""
    gpus: list[dict[str, Any]] = []
    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        fields = line.split(",")
        if len(fields) != len(QUERY_FIELDS):
            raise GpuError(f"nvidia-smi line {lineno}: expected {len(QUERY_FIELDS)} comma-separated fields "
                           f"({', '.join(QUERY_FIELDS)}), got {len(fields)}: {line!r}")
        row = dict(zip(QUERY_FIELDS, (_value(field) for field in fields), strict=True))
        index = row["index"]
        if index is None or not index.isdigit():
            raise GpuError(f"nvidia-smi line {lineno}: index is not a GPU number: {line!r}")
        if row["uuid"] is None:
            # The UUID is what services are pinned to (NVIDIA_VISIBLE_DEVICES); a GPU without one is unusable here.
            raise GpuError(f"nvidia-smi line {lineno}: GPU {index} has no UUID: {line!r}")
        mig = row["mig.mode.current"]
        if mig not in (None, "Enabled", "Disabled"):
            raise GpuError(f"nvidia-smi line {lineno}: mig.mode.current is {mig!r}, expected Enabled, Disabled "
                           f"or [N/A]: {line!r}")
        total = _mib(row["memory.total"], "memory.total", lineno, line)
        used = _mib(row["memory.used"], "memory.used", lineno, line)
        gpus.append({
            "index": int(index),
            "name": row["name"],
            "uuid": row["uuid"],
            "memory_total_mib": total,
            "memory_used_mib": used,
            "memory_free_mib": None if total is None or used is None else total - used,
            "driver_version": row["driver_version"],
            "mig_enabled": None if mig is None else mig == "Enabled",
            "pci_bus_id": row["pci.bus_id"],
        })
    return gpus


def parse_cuda_version(text: str) -> str | None:
    """The highest CUDA version the driver supports, from plain `nvidia-smi` or `nvidia-smi -q` output."""
    match = _CUDA_VERSION.search(text)
    return match.group(1) if match else None


def diagnose_failure(rc: int, stdout: str, stderr: str) -> str:
    """Turn a failed nvidia-smi run into a message that says what is wrong with the host."""
    text = f"{stderr}\n{stdout}"
    if "Driver/library version mismatch" in text:
        nvml = _NVML_VERSION.search(text)
        library = f" (user-space NVML library {nvml.group(1)})" if nvml else ""
        return ("nvidia-smi: the loaded NVIDIA kernel driver and the user-space NVML library differ in version"
                f"{library}, usually because the driver packages were upgraded without a reboot; reboot the "
                "host to load the new kernel module, or reinstall the driver so both match")
    if "couldn't communicate with the NVIDIA driver" in text:
        return ("nvidia-smi: the NVIDIA kernel driver is not loaded (nvidia-smi could not communicate with it); "
                "install the driver for this kernel and load it (modprobe nvidia), or reboot after installing")
    if NO_DEVICES in text:
        return "nvidia-smi: no NVIDIA GPU is visible on this host (the driver answered but found no devices)"
    if "GPU is lost" in text or "fallen off the bus" in text:
        return "nvidia-smi: a GPU has fallen off the bus (GPU is lost); the host needs a reboot or hardware check"
    first = next((line.strip() for line in text.splitlines() if line.strip()), "no output")
    return f"nvidia-smi failed with exit code {rc}: {first}"


def assign_gpus(gpus: list[dict[str, Any]], needs: dict[str, int],
                current: dict[str, str] | None = None) -> dict[str, str]:
    """Place each service on one GPU with enough free memory; return {service: gpu_uuid}.

    Largest need first, each on the GPU with the least free memory that still fits (best fit), so big
    services keep the room they need. Ties go to the lower service name and GPU index: same input, same
    placement. A need of 0 means the service uses no GPU. GPUs in MIG mode are skipped: a whole-GPU UUID
    gives a container no usable device once the GPU is partitioned.

    `current` is the placement recorded by an earlier run. A service that still needs a GPU stays on its
    recorded GPU while that GPU is there and usable, without a new fit check: its running instances already
    hold their memory, which nvidia-smi counts as used, so checking again would count it twice and move
    services whenever they run. Only services without a usable recorded GPU are placed by free memory.
    """
    for service, need in needs.items():
        if isinstance(need, bool) or not isinstance(need, int) or need < 0:
            raise GpuError(f"GPU memory need of {service} must be a whole number of MiB, 0 or more; got {need!r}")
    for service, uuid in (current or {}).items():
        if not isinstance(uuid, str):
            raise GpuError(f"recorded GPU of {service} must be a GPU UUID; got {uuid!r}")
    free = {gpu["uuid"]: gpu["memory_free_mib"] for gpu in gpus
            if gpu["memory_free_mib"] is not None and not gpu.get("mig_enabled")}
    order = {gpu["uuid"]: (gpu["index"], gpu["uuid"]) for gpu in gpus}
    assignments: dict[str, str] = {}
    unplaced: list[str] = []
    for service, need in sorted(needs.items(), key=lambda item: (-item[1], item[0])):
        if need == 0:
            continue
        kept = (current or {}).get(service)
        if kept is not None and kept in free:
            assignments[service] = kept
            continue
        fitting = [uuid for uuid, room in free.items() if room >= need]
        if not fitting:
            unplaced.append(f"{service} ({need} MiB)")
            continue
        best = min(fitting, key=lambda uuid: (free[uuid], order[uuid]))
        free[best] -= need
        assignments[service] = best
    if unplaced:
        raise GpuError(f"not enough free GPU memory for {', '.join(unplaced)}; "
                       f"free per GPU after the other placements: {_describe_free(gpus, free)}")
    return dict(sorted(assignments.items()))


def _describe_free(gpus: list[dict[str, Any]], free: dict[str, int]) -> str:
    if not gpus:
        return "none (this host has no GPU)"
    parts = []
    for gpu in sorted(gpus, key=lambda g: g["index"]):
        label = f"GPU {gpu['index']} {gpu['uuid']}"
        if gpu.get("mig_enabled"):
            parts.append(f"{label}: skipped, MIG enabled")
        elif gpu["uuid"] not in free:
            parts.append(f"{label}: unknown (nvidia-smi reported no memory figures)")
        else:
            parts.append(f"{label}: {free[gpu['uuid']]} MiB")
    return "; ".join(parts)


def parse_placement(text: str, source: str) -> dict[str, str]:
    """The {service: gpu_uuid} assignments of a placement file the gpu role recorded (JSON with "assignments")."""
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise GpuError(f"{source}: not a GPU placement (invalid JSON: {exc}); remove it to place the services "
                       "afresh") from None
    assignments = data.get("assignments") if isinstance(data, dict) else None
    if not isinstance(assignments, dict) or not all(
            isinstance(service, str) and isinstance(uuid, str) for service, uuid in assignments.items()):
        raise GpuError(f"{source}: not a GPU placement (expected {{\"assignments\": {{service: GPU UUID}}}}); "
                       "remove it to place the services afresh")
    return dict(assignments)

