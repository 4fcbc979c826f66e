"""The local service-account key used to sign V4 URLs against fake-gcs-server. It has the shape of a real
Google service-account key file so the unchanged production code path (`Credentials.from_service_account_file`,
`Blob.generate_signed_url(version="v4", ...)`) runs locally. It lives in the state dir (gitignored), is written
owner-only and is never valid anywhere but here."""

from __future__ import annotations

import json
import os
import secrets
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from emulators.errors import EmulatorError

KEY_FILE_NAME = "signing-key.json"


def service_account_email(project_id: str) -> str:
    return f"soul-local@{project_id}.iam.gserviceaccount.com"


def _key_info(project_id: str) -> dict[str, str]:
    private_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = private_key.private_bytes(
        encoding=serialization.Encoding.PEM,
        format=serialization.PrivateFormat.PKCS8,
        encryption_algorithm=serialization.NoEncryption(),
    ).decode()
    return {
        "type": "service_account",
        "project_id": project_id,
        "private_key_id": secrets.token_hex(20),
        "private_key": pem,
        "client_email": service_account_email(project_id),
        "client_id": str(secrets.randbelow(10**21)),
        "auth_uri": "https://accounts.google.com/o/oauth2/auth",
        "token_uri": "https://oauth2.googleapis.com/token",
    }


def _existing_key_fits(path: Path, project_id: str) -> bool:
    try:
        info = json.loads(path.read_text())
    except (OSError, ValueError):
        return False
    return info.get("type") == "service_account" and info.get("project_id") == project_id and "private_key" in info


def ensure_signing_key(state_dir: Path, project_id: str) -> Path:
    """Path of the key file for `project_id` in `state_dir`, generated on first use and reused afterwards so
    URLs signed before a re-provision still carry the same key id."""
    path = (state_dir / KEY_FILE_NAME).resolve()
    if _existing_key_fits(path, project_id):
        return path
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        # Created owner-only from the first byte: it is a private key, even if a throwaway one.
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as out:
            json.dump(_key_info(project_id), out, indent=2)
    except OSError as exc:
        raise EmulatorError(f"could not write the local signing key {path}: {exc}") from exc
    return path
