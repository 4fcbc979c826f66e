"""Deadlines on calls to Google Cloud (Firestore, Pub/Sub, GCS), for every deployable: transient errors are
retried with backoff, but only until the deadline, so a stalled backend becomes an error within seconds (a 503 for
the functions, a released job and a nacked message for the runner) instead of minutes in the client's default
retries."""

from __future__ import annotations

from google.api_core.retry import Retry, if_transient_error


def deadline(seconds: float) -> dict:
    """Keyword arguments for a google-cloud call: an overall deadline with bounded, backed-off retries."""
    return {
        "retry": Retry(initial=0.1, maximum=1.0, multiplier=2.0, timeout=seconds, predicate=if_transient_error),
        "timeout": seconds,
    }
