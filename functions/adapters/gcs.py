"""GCS as the functions see it beyond signing: the readiness probe of the media bucket."""

from __future__ import annotations

from google.api_core.retry import Retry
from google.cloud import storage


def probe_bucket(client: storage.Client, bucket: str, timeout_s: float = 5.0) -> None:
    """Lists at most one object under a prefix nothing uses: needs only storage.objects.list, which the functions'
    roles/storage.objectViewer grants (bucket metadata, storage.buckets.get, is not theirs to read). A missing
    bucket raises NotFound, a missing grant Forbidden."""
    blobs = client.bucket(bucket).list_blobs(prefix="_ready_probe/", max_results=1, timeout=timeout_s,
                                             retry=Retry(timeout=timeout_s))
    list(blobs)
