"""GCS as the functions see it beyond signing: the readiness probe of the media bucket, and create-only uploads
of a soul's reference images and adapters (named by their content, so a second upload of the same bytes is the
same object)."""

from __future__ import annotations

from google.api_core import exceptions as gexc
from google.api_core.retry import Retry
from google.cloud import storage
from google.cloud.storage.retry import DEFAULT_RETRY


def probe_bucket(client: storage.Client, bucket: str, timeout_s: float = 5.0) -> None:
    """Lists at most one object under a prefix nothing uses: needs only storage.objects.list, which the functions'
    roles/storage.objectViewer grants (bucket metadata, storage.buckets.get, is not theirs to read). A missing
    bucket raises NotFound, a missing grant Forbidden."""
    blobs = client.bucket(bucket).list_blobs(prefix="_ready_probe/", max_results=1, timeout=timeout_s,
                                             retry=Retry(timeout=timeout_s))
    list(blobs)


class AssetStore:
    """Create-only objects written by the functions: `references/{soul}/...` and `loras/{soul}/...`."""

    def __init__(self, client: storage.Client, bucket: str, timeout_s: float = 30.0):
        self._bucket = client.bucket(bucket)
        self._timeout = timeout_s
        self._retry = DEFAULT_RETRY.with_timeout(timeout_s)

    def put_once(self, name: str, data: bytes, content_type: str) -> bool:
        """Upload unless the object exists; True when this call created it. Content-addressed names make an
        existing object the same bytes. (Above 8 MiB the client uploads resumably, where fake-gcs-server ignores
        the precondition; GCS honours it.)"""
        if self._bucket.get_blob(name, timeout=self._timeout, retry=self._retry) is not None:
            return False
        try:
            self._bucket.blob(name).upload_from_string(data, content_type=content_type, if_generation_match=0,
                                                       timeout=self._timeout, retry=self._retry)
        except gexc.PreconditionFailed:
            return False
        return True
