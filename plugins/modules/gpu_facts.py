#!/usr/bin/python
# Copyright: XleRobot deploy authors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
---
module: gpu_facts
short_description: Report the host's NVIDIA GPUs and place services on them by memory need
description:
  - Runs C(nvidia-smi --query-gpu=... --format=csv,noheader,nounits) for the GPUs and plain C(nvidia-smi)
    for the CUDA version the driver supports, and sets them as facts.
  - With O(needs), places each service on one GPU with enough free memory (largest need first, best fit)
    and returns the placement in RV(assignments); fails naming every service that does not fit.
  - Read-only; never changes the host.
  - A host without C(nvidia-smi), or whose driver finds no GPU, is a clean no-op with no GPUs unless
    O(required) is set. Any other C(nvidia-smi) failure (driver not loaded, driver/library version
    mismatch) fails the task with what is wrong, whatever O(required) says.
options:
  nvidia_smi:
    description: The C(nvidia-smi) executable, a name looked up on the PATH (and the sbin directories) or a path.
    type: path
    default: nvidia-smi
  needs:
    description:
      - "GPU memory in MiB each service needs, for example C({asr: 6000, tts: 0})."
      - V(0) means the service uses no GPU; it is not placed.
      - Non-zero needs are always checked, so on a host without GPUs they fail the task.
    type: dict
    default: {}
  placement:
    description:
      - "A placement file an earlier run recorded (JSON, C({\"assignments\": {service: GPU UUID}})), as the gpu
        role writes it."
      - A service that still needs a GPU stays on its recorded GPU while that GPU is present and not in MIG mode,
        without a new fit check (its running instances hold the memory it needs); the others are placed by free
        memory. A missing file places every service afresh; an unreadable one fails the task.
    type: path
  required:
    description:
      - Fail when the host has no C(nvidia-smi) or no GPU.
      - When V(false), such a host returns no GPUs and RV(ansible_facts.xl_gpu_count=0).
    type: bool
    default: false
attributes:
  check_mode:
    support: full
    details: The module only reads, so it runs the same in check mode.
  diff_mode:
    support: none
    details: Nothing is changed, so there is nothing to diff.
  idempotent:
    support: full
    details: Always C(changed=false); the facts follow the GPUs' live memory use.
notes:
  - The placement uses memory in use at the time of the task; memory other processes take later is not reserved.
  - A service kept on its recorded GPU is not checked against that GPU's free memory again, so a raised need
    takes effect only once the placement file is removed.
  - GPUs in MIG mode are reported but never used for placement, since a whole-GPU UUID gives a container
    no device once the GPU is partitioned.
author:
  - XleRobot deploy authors
"""

EXAMPLES = r"""
- name: Read the GPUs, if any
  gpu_facts:

- name: Place the speech services on the GPUs of an inference host
  gpu_facts:
    required: true
    needs:
      asr: 6000
      tts: 3000
      gateway: 0
    # Keeps each service on the GPU an earlier run gave it.
    placement: /etc/xlerobot/gpu-placement.json
  register: gpu_plan

- name: Pin ASR to its GPU
  ansible.builtin.debug:
    msg: "NVIDIA_VISIBLE_DEVICES={{ gpu_plan.assignments.asr }}"
"""

RETURN = r"""
ansible_facts:
  description: Facts about the host's GPUs.
  returned: always
  type: dict
  contains:
    xl_gpus:
      description: One entry per GPU, memory in MiB; values nvidia-smi cannot give are null.
      type: list
      elements: dict
      sample: [{"index": 0, "name": "NVIDIA H100 80GB HBM3", "uuid": "GPU-4f6b9a1e-2c3d-4e5f-8a9b-0c1d2e3f4a5b",
                "memory_total_mib": 81559, "memory_used_mib": 1, "memory_free_mib": 81558,
                "driver_version": "550.54.15", "mig_enabled": false, "pci_bus_id": "00000000:18:00.0"}]
    xl_gpu_count:
      description: Number of GPUs.
      type: int
      sample: 1
    xl_gpu_driver_version:
      description: NVIDIA driver version, null without GPUs.
      type: str
      sample: "550.54.15"
    xl_gpu_cuda_version:
      description: Highest CUDA version the driver supports, null without GPUs or when nvidia-smi does not say.
      type: str
      sample: "12.4"
gpus:
  description: Same as RV(ansible_facts.xl_gpus).
  returned: always
  type: list
  elements: dict
gpu_count:
  description: Same as RV(ansible_facts.xl_gpu_count).
  returned: always
  type: int
assignments:
  description: GPU UUID per service of O(needs) with a non-zero need.
  returned: always
  type: dict
  sample: {"asr": "GPU-4f6b9a1e-2c3d-4e5f-8a9b-0c1d2e3f4a5b"}
needs:
  description: The non-zero needs of O(needs), in MiB as whole numbers.
  returned: success
  type: dict
  sample: {"asr": 6000}
nvidia_smi:
  description: The nvidia-smi that was run, null when none was found.
  returned: always
  type: str
"""

import os

from ansible.module_utils.basic import AnsibleModule
from ansible.module_utils.xl_gpu import (
    NO_DEVICES,
    QUERY_FIELDS,
    GpuError,
    assign_gpus,
    diagnose_failure,
    parse_cuda_version,
    parse_placement,
    parse_query_gpu,
)


def _needs(module):
    needs = {}
    for service, value in module.params["needs"].items():
        # Values from YAML or extra vars may arrive as strings; bools would silently count as 0 or 1.
        if isinstance(value, bool):
            module.fail_json(msg=f"needs: {service} must be MiB of GPU memory, got {value!r}")
        try:
            needs[str(service)] = int(value)
        except (TypeError, ValueError):
            module.fail_json(msg=f"needs: {service} must be MiB of GPU memory, got {value!r}")
    return needs


def _recorded(module):
    path = module.params["placement"]
    if not path or not os.path.exists(path):
        return {}
    try:
        with open(path, encoding="utf-8") as placement:
            return parse_placement(placement.read(), path)
    except (OSError, UnicodeDecodeError) as exc:
        module.fail_json(msg=f"{path}: cannot read the recorded GPU placement: {exc}")
    except GpuError as exc:
        module.fail_json(msg=str(exc))


def _exit(module, path, gpus, cuda_version, needs):
    try:
        assignments = assign_gpus(gpus, needs, _recorded(module))
    except GpuError as exc:
        module.fail_json(msg=str(exc), gpus=gpus, nvidia_smi=path)
    facts = {
        "xl_gpus": gpus,
        "xl_gpu_count": len(gpus),
        # One driver serves every GPU of a host, so the first GPU's answer is the host's.
        "xl_gpu_driver_version": gpus[0]["driver_version"] if gpus else None,
        "xl_gpu_cuda_version": cuda_version,
    }
    module.exit_json(changed=False, ansible_facts=facts, gpus=gpus, gpu_count=len(gpus),
                     assignments=assignments, needs={service: need for service, need in needs.items() if need},
                     nvidia_smi=path)


def main():
    module = AnsibleModule(
        argument_spec=dict(
            nvidia_smi=dict(type="path", default="nvidia-smi"),
            needs=dict(type="dict", default={}),
            placement=dict(type="path"),
            required=dict(type="bool", default=False),
        ),
        supports_check_mode=True,
    )
    params = module.params
    needs = _needs(module)
    path = module.get_bin_path(params["nvidia_smi"])
    if path is None:
        if params["required"]:
            module.fail_json(msg=f"this host has no NVIDIA GPU tooling: {params['nvidia_smi']} was not found "
                                 "(on the PATH or in the sbin directories); install the NVIDIA driver, or set "
                                 "required=false for hosts without GPUs")
        _exit(module, None, [], None, needs)

    # LC_ALL=C: the messages diagnose_failure recognises are the untranslated ones.
    env = {"LC_ALL": "C"}
    rc, out, err = module.run_command(
        [path, f"--query-gpu={','.join(QUERY_FIELDS)}", "--format=csv,noheader,nounits"], environ_update=env)
    if rc != 0:
        if NO_DEVICES in out + err and not params["required"]:
            _exit(module, path, [], None, needs)
        module.fail_json(msg=diagnose_failure(rc, out, err), rc=rc, stdout=out, stderr=err, nvidia_smi=path)
    try:
        gpus = parse_query_gpu(out)
    except GpuError as exc:
        module.fail_json(msg=str(exc), stdout=out, nvidia_smi=path)
    if not gpus and params["required"]:
        module.fail_json(msg=f"{path} ran but reported no GPU on this host", stdout=out, nvidia_smi=path)

    cuda_version = None
    if gpus:
        rc, out, err = module.run_command([path], environ_update=env)
        cuda_version = parse_cuda_version(out) if rc == 0 else None
        if cuda_version is None:
            # The GPUs were read already; a missing CUDA version alone should not stop a deploy.
            module.warn(f"could not read the CUDA version from `{path}` (exit code {rc}); "
                        "xl_gpu_cuda_version is null")
    _exit(module, path, gpus, cuda_version, needs)


if __name__ == "__main__":
    main()
