"""GCS adapter of the runner: create-only uploads of rendered media.

Uploads use `if_generation_match=0` on a single-request (non-resumable) upload, so a re-run of a job can never
overwrite an object: the second writer gets 412 and keeps the first object (fake-gcs-server ignores the
precondition on resumable uploads, and so should we: small media go up in one request)."""

from __future__ import annotations

from dataclasses import dataclass

from google.api_core import exceptions as gexc
from google.cloud import storage
from google.cloud.storage.retry import DEFAULT_RETRY


@dataclass(frozen=True)
class StoredObject:
    name: str
    size: int
    created: bool  # False when the object already existed from an earlier attempt
    metadata: dict[str, str] | None = None  # the object's custom metadata (e.g. the safety verdict of an image)


class MediaStore:
    def __init__(self, client: storage.Client, bucket: str, timeout_s: float = 30.0):
        self._bucket = client.bucket(bucket)
        # Per request, and the retries of transient errors (timeouts included) stop after the same budget.
        self._timeout = timeout_s
        self._retry = DEFAULT_RETRY.with_timeout(timeout_s)

    def existing(self, name: str) -> StoredObject | None:
        blob = self._bucket.get_blob(name, timeout=self._timeout, retry=self._retry)
        if blob is None:
            return None
        return StoredObject(name=name, size=blob.size or 0, created=False, metadata=dict(blob.metadata or {}))

    def read(self, name: str) -> bytes:
        return self._bucket.blob(name).download_as_bytes(timeout=self._timeout, retry=self._retry)

    def put_once(self, name: str, data: bytes, content_type: str,
                 metadata: dict[str, str] | None = None) -> StoredObject:
        """Create `name` unless it exists; `metadata` travels in the same single request, so an object never
        exists without it."""
        blob = self._bucket.blob(name)
        if metadata:
            blob.metadata = metadata
        # chunk_size=None with bytes below the resumable threshold means a multipart (single request) upload.
        try:
            blob.upload_from_string(data, content_type=content_type, if_generation_match=0,
                                  timeout=self._timeout, retry=self._retry)
        except gexc.PreconditionFailed:
            existing = self.existing(name)
            return existing or StoredObject(name=name, size=len(data), created=False)
        return StoredObject(name=name, size=len(data), created=True, metadata=metadata)


class BucketArtifactStore:
    """Compile artifacts in the bucket under `prefix` (pipelines/compile_cache.py's `ArtifactStore`): a new VM
    loads what the first VM of its kind compiled. Create-only, like media: racing VMs keep the first artifact."""

    name = "bucket"

    def __init__(self, media: MediaStore, prefix: str):
        self._media = media
        self._prefix = prefix

    def get(self, key: str) -> bytes | None:
        try:
            return self._media.read(self._prefix + key)
        except gexc.NotFound:
            return None

    def put(self, key: str, data: bytes) -> None:
        self._media.put_once(self._prefix + key, data, "application/octet-stream")
