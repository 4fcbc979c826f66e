"""The runner's error tree and its policy table: which failures are retried (nack, Pub/Sub redelivers and
dead-letters after bounded attempts) and which are terminal (recorded on the job, message acked or sent to the
dead-letter topic at once). The decision lives in `disposition()` and nowhere else."""

from __future__ import annotations

from enum import Enum

from google.api_core import exceptions as gexc


class Disposition(Enum):
    ACK = "ack"  # done, or nothing left to do (duplicate, canceled, lease taken over)
    FAIL = "fail"  # record the job failed, then ack: retrying cannot help
    DEAD_LETTER = "dead_letter"  # the message itself is unusable: copy it to the dead-letter topic, ack
    RETRY = "retry"  # transient: nack; the subscription's retry policy and dead-letter policy bound it


class RunnerError(Exception):
    """Base of the runner's own errors."""


class InvalidMessage(RunnerError):
    """The Pub/Sub message is not a valid JobRequested (bad JSON, unknown schema_version, bad job id)."""


class JobNotFound(RunnerError):
    """The message names a job that has no document."""


class InvalidJob(RunnerError):
    """The job itself cannot be run: its document fails validation, or its request cannot be rendered. Terminal:
    retrying the same job cannot help. Only for faults of the job's own input, never for a library's or our own
    bug (those retry, then dead-letter: see the table)."""


class InvalidRenderSpec(InvalidJob, ValueError):
    """The job's request makes an invalid render (size, steps, guidance, seed, frames out of bounds)."""


class NonFiniteRender(InvalidJob):
    """The render's latents hold NaN or infinite values (a broken LoRA or weights, an overflow): there is no image
    to store, and a black one must never be served in its place. Terminal: the same render gives the same."""


class JobCanceled(RunnerError):
    """A cancel was requested while the job ran; it stops at the next step."""


class LeaseLost(RunnerError):
    """Another runner holds the job now (our lease expired); stop without writing results."""


class TransientError(RunnerError):
    """A backend or the device failed in a way that may pass; try again later."""


# Checked in order; the first matching class decides.
_POLICY: tuple[tuple[type[BaseException] | tuple[type[BaseException], ...], Disposition], ...] = (
    (JobCanceled, Disposition.ACK),
    (LeaseLost, Disposition.ACK),
    (InvalidMessage, Disposition.DEAD_LETTER),
    (JobNotFound, Disposition.DEAD_LETTER),
    (InvalidJob, Disposition.FAIL),  # InvalidRenderSpec included: the spec checks of gpu_runner/pipelines/specs.py
    (TransientError, Disposition.RETRY),
    ((gexc.ServiceUnavailable, gexc.DeadlineExceeded, gexc.InternalServerError, gexc.Aborted), Disposition.RETRY),
    ((gexc.TooManyRequests, gexc.RetryError, ConnectionError, TimeoutError), Disposition.RETRY),
    (MemoryError, Disposition.RETRY),
)


def disposition(exc: BaseException) -> Disposition:
    for types, decided in _POLICY:
        if isinstance(exc, types):
            return decided
    # Unknown failures are retried, a library's ValueError or a pydantic ValidationError (a bug, not a bad job)
    # included: the dead-letter policy bounds them, and the last attempt records the job failed.
    return Disposition.RETRY
