"""Every image version the end-to-end scenarios deploy, built from the same service code with faults baked in as
settings, and pushed to the local registry.

`make test-images` (python -m tests.support.e2e_images) builds them ahead of the end-to-end tests, side by side
with the molecule scenarios; the integration fixture builds them itself when that has not happened in the run.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
GOOD, NEXT = "1.0.0", "1.1.0"
NEVER_READY, GARBLED, ERRORS = "1.1.0-never-ready", "1.1.0-garbled", "1.1.0-errors"
CRASHES, ERRORS_5, SLOW = "1.1.0-crashes", "1.1.0-errors-5", "1.1.0-slow"
# One version whose speech synthesis alone is faulty: a run of several services where one of them fails.
TTS_GARBLED = "1.1.0-tts-garbled"

# version -> [(fault settings, services built)]. ERRORS passes its one-clip smoke gate and then fails 30 % of real
# traffic, for canary analysis to catch. GARBLED speech recognition mishears, GARBLED speech synthesis says
# other words than asked, and a GARBLED multimodal service speaks other words than its reply.
BUILDS: dict[str, list[tuple[str, str]]] = {
    GOOD: [("", "asr,tts,llm,multimodal")], NEXT: [("", "asr,tts,llm,multimodal")],
    NEVER_READY: [("never_ready", "asr")], GARBLED: [("garble", "asr,tts,multimodal")],
    ERRORS: [("error_rate=0.3,errors_after=1", "asr")], CRASHES: [("crash_after_s=10", "asr")],
    ERRORS_5: [("error_rate=0.05,errors_after=1", "tts")], SLOW: [("latency_ms=500", "tts")],
    TTS_GARBLED: [("", "asr,llm"), ("garble", "tts")]}

# Set by `make test` for its end-to-end phase once `make test-images` has run in the same invocation.
PREBUILT_ENV = "XL_TEST_IMAGES_PREBUILT"


def ansible_env() -> dict[str, str]:
    """Environment of an ansible-playbook run from the tests: the repository's config, this venv, no colour."""
    bin_dir = Path(sys.executable).parent
    return {**os.environ, "ANSIBLE_CONFIG": str(REPO / "ansible.cfg"), "ANSIBLE_HOME": str(REPO / ".cache" / "ansible"),
            "ANSIBLE_FORCE_COLOR": "0", "ANSIBLE_NOCOLOR": "1", "PATH": f"{bin_dir}:{os.environ['PATH']}"}


def build(version: str, fault: str, services: str) -> subprocess.CompletedProcess[str]:
    """Build and push one version of `services` through playbooks/build.yml, as an SRE would."""
    bin_dir = Path(sys.executable).parent
    # Tags are immutable, but a fault version is defined by its fault string here: rebuild it (layer cache).
    force = ["-e", "force=true"] if fault or len(BUILDS[version]) > 1 else []
    return subprocess.run([str(bin_dir / "ansible-playbook"), "playbooks/build.yml", "-e", f"version={version}",
                           "-e", f"services={services}", "-e", f"fault={fault}", *force],
                          cwd=REPO, env=ansible_env(), capture_output=True, text=True, timeout=3600)


def build_all() -> None:
    """Build every version; the first failure stops with the playbook's output."""
    for version, parts in BUILDS.items():
        for fault, services in parts:
            run = build(version, fault, services)
            if run.returncode != 0:
                raise RuntimeError(f"building the test images of {version} ({services}) failed:\n"
                                   f"{(run.stdout + run.stderr)[-4000:]}")


def main() -> int:
    try:
        build_all()
    except RuntimeError as exc:
        print(exc, file=sys.stderr)
        return 1
    print(f"test images built and pushed: {', '.join(BUILDS)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
