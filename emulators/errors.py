"""The error family of the local stand-ins: one base class, so callers (tests, the CLI, `make run`) can catch
every failure to start, probe, provision or stop an emulator with a single `except EmulatorError`."""

from __future__ import annotations


class EmulatorError(RuntimeError):
    """A local stand-in could not be found, started, provisioned or stopped."""


class EmulatorNotInstalled(EmulatorError):
    """The binary or launcher of a stand-in is not on this machine."""


class EmulatorStartFailed(EmulatorError):
    """A stand-in exited or did not become ready before the start timeout."""
