"""Shared fixtures. The emulator stack is started lazily, once per session, and only when a test asks for
`emulator_stack` (or `clean_firestore`): unit tests never pay for the JVMs, nor for importing the cloud clients."""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from emulators import EmulatorStack


@pytest.fixture(scope="session")
def emulator_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmulatorStack]:
    """The Pub/Sub and Firestore emulators and fake-gcs-server on free ports, provisioned, with their client
    environment in os.environ for the session (restored afterwards). Redelivery backoffs are zero (no retry
    policy, immediate redelivery) so a message dead-letters in a fraction of a second; the emulator rounds any
    real retry policy up to ~2 s steps. The production policy is checked on a stack started by the CLI."""
    from emulators import EmulatorStack, StackConfig

    config = StackConfig(
        state_dir=tmp_path_factory.mktemp("emulators"),
        retry_min_backoff_s=0.0,
        retry_max_backoff_s=0.0,
    )
    stack = EmulatorStack(config)
    stack.start()
    try:
        stack.provision()
        with pytest.MonkeyPatch.context() as patch:
            for key, value in stack.env().items():
                patch.setenv(key, value)
            yield stack
    finally:
        stack.stop()


@pytest.fixture
def clean_firestore(emulator_stack: EmulatorStack) -> Iterator[None]:
    """An empty Firestore emulator database for this test."""
    emulator_stack.reset_firestore()
    yield
