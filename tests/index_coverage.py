"""Index coverage over the whole suite: every query and aggregation the code runs through the Firestore gateway
(in this process: the api function, the runner, the reconciler, the services the integration tests drive) is
recorded by shape, and at the end of the session each shape is checked against infra/terraform/firestore.tf with
Firestore's index rules (soul_common/indexes.py). A shape no declared index serves fails the session, so a new
query without its index fails `make test` here instead of answering FAILED_PRECONDITION on Google Cloud.

Declared composite indexes that no recorded shape used are listed as stale when the run covered the integration
tests (a partial run reports them only as information). Processes the e2e tests start run the same code paths."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

TERRAFORM = Path(__file__).resolve().parents[1] / "infra" / "terraform" / "firestore.tf"

_lock = threading.Lock()
_shapes: set = set()
_original = None


def install() -> None:
    """Record every shape any gateway ledger of this process sees (idempotent)."""
    global _original
    from soul_common import firestore as fs

    if _original is not None:
        return
    _original = fs.Ledger.queried

    def queried(self, shape):
        with _lock:
            _shapes.add(shape)
        return _original(self, shape)

    fs.Ledger.queried = queried


def recorded() -> set:
    with _lock:
        return set(_shapes)


def pytest_configure(config: pytest.Config) -> None:
    install()


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    from soul_common import indexes

    shapes = recorded()
    if not shapes:
        return
    declared = indexes.from_terraform(TERRAFORM.read_text())
    missing = indexes.uncovered(shapes, declared)
    session.config.stash[_REPORT] = (shapes, missing, indexes.unused(shapes, declared))
    if missing:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_terminal_summary(terminalreporter, exitstatus: int, config: pytest.Config) -> None:
    from soul_common import indexes

    report = config.stash.get(_REPORT, None)
    if report is None:
        return
    shapes, missing, unused = report
    write = terminalreporter.write_line
    terminalreporter.section("Firestore index coverage")
    write(f"{len(shapes)} query shapes recorded, {len(missing)} without an index in {TERRAFORM.name}")
    for shape in missing:
        write(f"  NO INDEX: {indexes.describe(shape)}    ({shape})", red=True)
    for index in unused:
        write(f"  unused by this run: firestore_indexes.{index.name}")


_REPORT = pytest.StashKey[tuple]()
