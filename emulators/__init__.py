"""Local stand-ins for Google Cloud: the official Pub/Sub and Firestore emulators and fake-gcs-server, started,
provisioned and stopped as one `EmulatorStack`. Used by tests, benchmarks and `make run`; from a shell,
`python -m emulators up|down|env|status|run`."""

from emulators.stack import EmulatorError, EmulatorStack, StackConfig

__all__ = ["EmulatorError", "EmulatorStack", "StackConfig"]
