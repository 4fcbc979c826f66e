"""`python -m functions.keys_admin --tenant acme --role admin`: mint an API key for an operator. Prints the key
once (hand it to the caller; it is not stored anywhere) and the keys-file entry holding only its SHA-256, to add
to the JSON list in `SOUL_API_KEYS_FILE` (Secret Manager in production)."""

from __future__ import annotations

import argparse
import json
import re
import secrets
import sys

from functions.core.tenants import TENANT_PATTERN, key_digest


def mint(tenant: str, role: str) -> tuple[str, dict]:
    key = f"soul_{secrets.token_urlsafe(32)}"
    return key, {"tenant": tenant, "role": role, "key_sha256": key_digest(key)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m functions.keys_admin", description=__doc__.splitlines()[0])
    parser.add_argument("--tenant", required=True, help="tenant name, e.g. acme")
    parser.add_argument("--role", choices=("client", "admin"), default="client")
    args = parser.parse_args(argv)
    if not re.fullmatch(TENANT_PATTERN, args.tenant):
        parser.error(f"--tenant must match {TENANT_PATTERN}")
    key, entry = mint(args.tenant, args.role)
    print(f"API key (shown once): {key}", file=sys.stderr)
    print(json.dumps(entry))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
