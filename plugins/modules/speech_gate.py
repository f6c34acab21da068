#!/usr/bin/python
# Copyright: XleRobot deploy authors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
---
module: speech_gate
short_description: Run deploy gates against speech service instances, one or several side by side
description:
  - Runs an ordered list of gates (liveness, readiness, synthetic transcription, synthetic speech, chat,
    voice-to-voice interaction, version) against an instance and stops at the first that fails.
  - With O(targets), gates several instances side by side, at most O(concurrency) at once, and reports each;
    a failing gate is then a result, not a failed task, so the caller judges all of them together.
  - Every gate is reported with its measured value and threshold; a failure names the gate, the service
    and why.
  - Gates only read from the instance, so the module never reports a change.
options:
  service:
    description: Service name, used in messages (single instance; see O(targets)).
    type: str
  url:
    description: Base URL of the instance, for example C(http://127.0.0.1:18002).
    type: str
  gates:
    description:
      - Ordered gate definitions. Each has C(type) (V(liveness), V(readiness), V(transcription), V(speech),
        V(chat), V(interaction) or V(version)) and optionally C(name), C(path), C(timeout) and C(interval).
      - V(transcription) gates (speech recognition) need C(audio) (a WAV file on the target) and
        C(expected_text), and accept C(max_wer) (default 0.2).
      - V(speech) gates (speech synthesis) need C(text) and C(readback_url), a transcription endpoint that
        reads the spoken audio back. The audio must be WAV of a plausible length (C(min_seconds),
        C(max_seconds); by default 0.15 to 1 s a word plus 1 s) and read back within C(max_wer).
      - V(chat) gates (language model) need C(prompt); the answer must be a chat completion with a non-empty
        reply (C(max_tokens), default 16).
      - V(interaction) gates (voice to voice) need C(audio) (the spoken question, a WAV file on the target),
        C(text) (its words) and C(readback_url); the instance must hear the question, reply, and speak that
        reply, each within C(max_wer) (default 0.5).
      - V(version) gates need C(version) and accept C(digest); the instance's C(/version) must answer that
        version and an image of that digest (the warm check of a rollback).
    type: list
    elements: dict
  context:
    description: Extra identity shown in messages, such as colour and version.
    type: dict
    default: {}
  targets:
    description:
      - Several instances to gate side by side, each a mapping with C(service), C(url), C(gates) and optionally
        C(host), C(colour) and C(context). Mutually exclusive with O(url).
    type: list
    elements: dict
  concurrency:
    description: With O(targets), how many instances are gated at once.
    type: int
    default: 4
  state_dir:
    description:
      - With O(release), the deploy state directory where C(playbooks/abort.yml) leaves an abort request; the
        gates stop between polls once one is there for O(release).
    type: path
  release:
    description: Release id of the run the gates belong to (see O(state_dir)).
    type: str
  readback_api_key:
    description:
      - "API key the read-back of V(speech) and V(interaction) gates presents to the gateway
        (C(Authorization: Bearer)), where the gateway's authentication is on. Never logged nor returned."
    type: str
attributes:
  check_mode:
    support: full
    details: In check mode no request is sent; the gates are only validated.
  diff_mode:
    support: none
  idempotent:
    support: full
author:
  - XleRobot deploy authors
"""

EXAMPLES = r"""
- name: Gate the new green ASR instance
  speech_gate:
    service: asr
    url: http://127.0.0.1:18002
    context: {colour: green, version: 1.1.0}
    gates:
      - {type: liveness, timeout: 30}
      - {type: readiness, timeout: 120}
      - type: transcription
        audio: /var/lib/xlerobot/golden/kitchen.wav
        expected_text: Turn off the radio in the living room
        max_wer: 0.2

- name: Gate the new green TTS instance; the live ASR behind the gateway reads its speech back
  speech_gate:
    service: tts
    url: http://127.0.0.1:18012
    gates:
      - {type: readiness, timeout: 120}
      - type: speech
        text: The kitchen lights are now on
        readback_url: http://127.0.0.1:8080/v1/audio/transcriptions
"""

RETURN = r"""
results:
  description: One entry per gate that ran, in order (single instance).
  returned: without O(targets)
  type: list
  elements: dict
  sample: [{"name": "readiness", "type": "readiness", "passed": true, "measured": "HTTP 200 after 4.1 s"}]
targets:
  description: One entry per target, in order, with C(service), C(host), C(colour), C(passed), C(results) and,
    when it failed, C(msg).
  returned: with O(targets)
  type: list
  elements: dict
passed:
  description: Whether every gate passed.
  returned: always
  type: bool
"""

from ansible.module_utils.basic import AnsibleModule
from ansible.module_utils.xl_gates import GateSpecError, failure_message, run_gates, run_targets, validate_gates
from ansible.module_utils.xl_release import abort_message, abort_requested


def main():
    module = AnsibleModule(
        argument_spec=dict(
            service=dict(type="str"),
            url=dict(type="str"),
            gates=dict(type="list", elements="dict"),
            context=dict(type="dict", default={}),
            targets=dict(type="list", elements="dict"),
            concurrency=dict(type="int", default=4),
            state_dir=dict(type="path"),
            release=dict(type="str"),
            readback_api_key=dict(type="str", no_log=True),
        ),
        mutually_exclusive=[("targets", "url"), ("targets", "gates")],
        required_one_of=[("targets", "url")],
        required_by={"url": ("service", "gates")},
        required_together=[("state_dir", "release")],
        supports_check_mode=True,
    )
    params = module.params
    targets = params["targets"]
    for target in targets or [{"service": params["service"], "gates": params["gates"]}]:
        try:
            validate_gates(target.get("gates") or [])
        except GateSpecError as exc:
            module.fail_json(msg=f"service {target.get('service')}: {exc}")
    if module.check_mode:
        module.exit_json(changed=False, results=[], targets=[], passed=True,
                         skipped_reason="check mode sends no request")
    if targets is not None:
        def stop():
            if not params["state_dir"]:
                return None
            request = abort_requested(params["state_dir"], params["release"])
            return abort_message(request) if request else None

        outcomes = run_targets(targets, concurrency=max(1, params["concurrency"]),
                               readback_api_key=params["readback_api_key"], stop=stop)
        module.exit_json(changed=False, targets=outcomes, passed=all(outcome["passed"] for outcome in outcomes))
    try:
        results = run_gates(params["url"].rstrip("/"), params["gates"], readback_api_key=params["readback_api_key"])
    except OSError as exc:
        module.fail_json(msg=f"service {params['service']}: cannot run gates: {exc}")
    message = failure_message(params["service"], params["context"], results)
    if message:
        module.fail_json(msg=message, results=results, passed=False)
    module.exit_json(changed=False, results=results, passed=True)


if __name__ == "__main__":
    main()
