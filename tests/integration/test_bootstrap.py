"""Bootstrap converges: a second run on a set-up machine changes nothing."""

from __future__ import annotations

import pytest

from tests.integration.conftest import playbook

pytestmark = pytest.mark.integration


def test_bootstrap_twice_changes_nothing_the_second_time() -> None:
    # `make integration` (and `make test`) bootstrap this machine first: this is the second run.
    second = playbook("bootstrap.yml", test_env=False)
    assert second.returncode == 0, second.output[-4000:]
    assert second.changed == 0, second.output[-4000:]


def test_gateway_rerun_keeps_live_weights_and_changes_nothing() -> None:
    run = playbook("gateway.yml", test_env=False)
    assert run.returncode == 0, run.output[-4000:]
    assert run.changed == 0, run.output[-4000:]
