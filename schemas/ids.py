"""Formats of the ids that cross a boundary. Validators use them so a malformed id is a 400, not a lookup."""

from __future__ import annotations

from ulid import ULID

# Caller-chosen ids (souls, users): short, printable, safe as a Firestore document id and a GCS path segment.
SOUL_ID_PATTERN = r"^[a-z0-9][a-z0-9_-]{0,63}$"
USER_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.@:-]{0,127}$"
# Ids the system mints.
PK_PATTERN = r"^[0-9a-f]{32}$"
VARIANT_ID_PATTERN = r"^[0-9A-HJKMNP-TV-Z]{26}$"  # ULID, Crockford base32
# Jobs are named from what they make (prompt key + variant index, or the video request hash), so a second
# creator of the same work collides with the first; "-rN" names the Nth retry after a failed or canceled run
# (cancels do not use up a retry budget, so N may grow past the failure limit).
JOB_ID_PATTERN = r"^(img|vid)-[0-9a-f]{32}-[0-9]{1,6}(-r[0-9]{1,6})?$"


def new_ulid() -> str:
    return str(ULID())
