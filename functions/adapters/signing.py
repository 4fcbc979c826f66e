"""V4 signed URLs for private GCS objects: consumers download results without bucket access.

Two ways to sign, chosen by configuration: a service-account key file (locally, the key `emulators/` generates),
or, on GCP where functions hold no private key, IAM signBlob with the runtime's access token."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

import google.auth
import google.auth.transport.requests
from google.cloud import storage
from google.oauth2 import service_account



@dataclass(frozen=True)
class SignedUrl:
    url: str
    expires_at: datetime


class UrlSigner:
    def __init__(
        self,
        client: storage.Client,
        bucket: str,
        *,
        ttl: timedelta,
        key_file: str | None = None,
        service_account_email: str | None = None,
        endpoint: str | None = None,
    ):
        self._bucket = client.bucket(bucket)
        self._ttl = ttl
        self._endpoint = endpoint
        self._service_account_email = service_account_email
        self._credentials = (
            service_account.Credentials.from_service_account_file(key_file) if key_file else None
        )

    def sign(self, object_name: str, *, now: datetime | None = None) -> SignedUrl:
        issued = now or datetime.now(timezone.utc)
        kwargs: dict = {"version": "v4", "method": "GET", "expiration": self._ttl}
        if self._endpoint:
            kwargs["api_access_endpoint"] = self._endpoint
        if self._credentials is not None:
            kwargs["credentials"] = self._credentials
        else:
            kwargs.update(self._iam_signing_kwargs())
        url = self._bucket.blob(object_name).generate_signed_url(**kwargs)
        return SignedUrl(url=url, expires_at=issued + self._ttl)

    def _iam_signing_kwargs(self) -> dict:
        credentials, _ = google.auth.default(scopes=["https://www.googleapis.com/auth/cloud-platform"])
        if not credentials.valid:
            credentials.refresh(google.auth.transport.requests.Request())
        email = self._service_account_email or getattr(credentials, "service_account_email", None)
        return {"service_account_email": email, "access_token": credentials.token}
