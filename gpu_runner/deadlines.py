"""Deadlines on the runner's own backend calls (Firestore, Pub/Sub, GCS), like the functions' `deadline`: transient
errors are retried, but only until the deadline, so a stalled backend turns into an error within seconds (the job
is released and its message nacked) instead of a runner stuck in the client's default retries for minutes."""

from __future__ import annotations

from google.api_core.retry import Retry, if_transient_error


def deadline(seconds: float) -> dict:
    """Keyword arguments for a google-cloud call: an overall deadline with bounded, backed-off retries."""
    return {
        "retry": Retry(initial=0.1, maximum=1.0, multiplier=2.0, timeout=seconds, predicate=if_transient_error),
        "timeout": seconds,
    }
