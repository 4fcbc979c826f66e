"""Issue 8: auth configuration that would silently weaken auth stops start-up with a clear message; keys are
kept and compared as hashes; the pure quota arithmetic; platform-mode identities."""

from __future__ import annotations

import base64
import json

import flask
import pytest

import functions.main as functions_main
from functions.core.tenants import ConfigError, build_key_ring, key_digest
from functions.http.auth import platform_principal
from functions.keys_admin import main as keys_admin
from functions.core.quota_policy import gcra, hour_window
from functions.settings import FunctionsSettings


def write(tmp_path, entries) -> str:
    path = tmp_path / "keys.json"
    path.write_text(entries if isinstance(entries, str) else json.dumps(entries))
    return str(path)


def test_platform_mode_with_keys_refuses_to_start(monkeypatch):
    monkeypatch.setenv("SOUL_AUTH_MODE", "platform")
    monkeypatch.setenv("SOUL_API_KEYS", "k1secret")
    with pytest.raises(ValueError, match="SOUL_AUTH_MODE=platform ignores API keys"):
        FunctionsSettings()


@pytest.mark.parametrize(("entries", "message"), [
    ([{"tenant": "a", "key": "same-key-000000001"}, {"tenant": "b", "key": "same-key-000000001"}],
     "listed for two tenants"),
    ([{"tenant": "a", "role": "root", "key": "k-0000000000000001"}], "entry 0: role"),
    ([{"tenant": "a"}], "exactly one of 'key' and 'key_sha256'"),
    ([{"tenant": "a", "key_sha256": "xyz"}], "64 lowercase hex"),
    ([{"tenant": "A B", "key": "k-0000000000000001"}], "entry 0: tenant"),
    ([{"tenant": "a", "key": "k-0000000000000001", "quota": {"jobs_per_hour": -1}}], "quota.jobs_per_hour"),
    ("{not json", "not valid JSON"),
    ({"tenant": "a"}, "JSON list"),
    ([], "lists no keys"),
])
def test_bad_keys_files_are_named_clearly(tmp_path, entries, message):
    with pytest.raises(ConfigError, match=message):
        build_key_ring("", write(tmp_path, entries))


def test_a_missing_keys_file_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="cannot be read"):
        build_key_ring("", str(tmp_path / "absent.json"))


def test_the_functions_answer_a_bad_keys_file_in_the_error_shape(monkeypatch, tmp_path):
    monkeypatch.setenv("SOUL_API_KEYS_FILE", write(tmp_path, [{"tenant": "a", "role": "root", "key": "x"}]))
    monkeypatch.setattr(functions_main, "_api", None)
    with flask.Flask("misconfigured").test_request_context("/tasks"):
        response = functions_main.api(flask.request)
    assert response.status_code == 500
    assert "SOUL_API_KEYS_FILE entry 0" in response.get_json()["error"]["message"]
    assert functions_main._api is None


def test_keys_are_kept_as_hashes_and_plain_keys_are_default_tenant_clients(tmp_path):
    ring = build_key_ring("plain-key-1", write(tmp_path, [
        {"tenant": "acme", "role": "admin", "key_sha256": key_digest("acme-admin")},
        {"tenant": "acme", "key": "acme-client", "quota": {"jobs_per_hour": 5}, "webhook_secret": "whsec_" + "a" * 20},
    ]))
    assert "acme-admin" not in repr(ring) and "acme-client" not in repr(ring) and "plain-key-1" not in repr(ring)
    admin, client, plain = ring.principal("acme-admin"), ring.principal("acme-client"), ring.principal("plain-key-1")
    assert (admin.tenant, admin.role, client.role) == ("acme", "admin", "client")
    assert (plain.tenant, plain.role) == ("default", "client")
    assert admin.scope != client.scope and admin.scope.startswith("acme:")
    assert ring.principal("nope") is None
    assert ring.quota_overrides("acme").jobs_per_hour == 5
    assert ring.tenant_webhook_secret("acme") == "whsec_" + "a" * 20 and ring.tenant_webhook_secret("x") is None


def test_keys_admin_mints_a_key_whose_entry_authenticates(capsys, tmp_path):
    assert keys_admin(["--tenant", "acme", "--role", "admin"]) == 0
    out = capsys.readouterr()
    entry = json.loads(out.out)
    key = out.err.strip().rsplit(" ", 1)[1]
    assert entry["key_sha256"] == key_digest(key) and key not in out.out
    principal = build_key_ring("", write(tmp_path, [entry])).principal(key)
    assert (principal.tenant, principal.role) == ("acme", "admin")


def token(claims: dict) -> str:
    payload = base64.urlsafe_b64encode(json.dumps(claims).encode()).decode().rstrip("=")
    return f"Bearer eyJhbGciOiJSUzI1NiJ9.{payload}.sig"


def test_platform_mode_scopes_idempotency_by_verified_identity():
    alice = platform_principal({"Authorization": token({"email": "alice@x.iam"})}, frozenset({"alice@x.iam"}))
    bob = platform_principal({"Authorization": token({"sub": "123"})}, frozenset({"alice@x.iam"}))
    nobody = platform_principal({}, frozenset())
    assert alice.scope != bob.scope != nobody.scope
    assert (alice.role, bob.role, nobody.role) == ("admin", "client", "client")
    assert platform_principal({"Authorization": "Bearer not.a-jwt.!"}, frozenset()).scope == nobody.scope


def test_token_bucket_allows_the_burst_then_the_rate():
    tat, allowed = None, 0
    for _ in range(10):
        decision = gcra(tat, 1000.0, rate=2.0, burst=4)
        if decision.allowed:
            allowed, tat = allowed + 1, decision.tat
    assert allowed == 4
    late = gcra(tat, 1000.0, rate=2.0, burst=4)
    assert not late.allowed and late.retry_after == pytest.approx(0.5)
    assert gcra(tat, 1000.5, rate=2.0, burst=4).allowed


def test_hour_window_names_the_hour_and_the_time_left():
    from datetime import datetime, timezone

    key, left = hour_window(datetime(2026, 1, 2, 3, 45, tzinfo=timezone.utc))
    assert key == "2026010203" and left == 15 * 60


def test_user_ids_are_namespaced_one_to_one():
    import re

    from functions.core.tenants import scoped_user
    from schemas.ids import USER_ID_PATTERN

    assert scoped_user("default", "user123") == "user123"  # single-tenant data survives the upgrade
    assert scoped_user("acme", "user123") == "acme~user123" != scoped_user("globex", "user123")
    # A bare id can never look like another tenant's scoped one: '~' is not allowed in user ids.
    assert not re.fullmatch(USER_ID_PATTERN, "acme~user123")


# ---- issue 19: webhook secrets are per tenant -------------------------------------------------------------------


def test_webhook_secrets_are_never_shared_between_tenants(tmp_path):
    from functions.core.tenants import check_webhook_secrets, webhook_secret

    shared = "whsec_" + "A" * 32
    ring = build_key_ring("", write(tmp_path, [
        {"tenant": "a", "key": "k-a-000000000001", "webhook_secret": "whsec_" + "B" * 32},
        {"tenant": "b", "key": "k-b-000000000001"},
    ]))
    # SOUL_WEBHOOK_SECRET signs the default tenant's deliveries only: tenant b without its own has none at all.
    assert webhook_secret(ring, "b", shared) == "" and webhook_secret(ring, "default", shared) == shared
    assert webhook_secret(ring, "a", shared) == "whsec_" + "B" * 32
    assert check_webhook_secrets(ring, shared) == ["b"]  # logged at start-up; b's webhooks are refused
    with pytest.raises(ConfigError, match="'a' and 'default' have the same webhook secret"):
        check_webhook_secrets(ring, "whsec_" + "B" * 32)
    twins = build_key_ring("", write(tmp_path, [
        {"tenant": "a", "key": "k-a-000000000001", "webhook_secret": shared},
        {"tenant": "b", "key": "k-b-000000000001", "webhook_secret": shared},
    ]))
    with pytest.raises(ConfigError, match="same webhook secret"):
        check_webhook_secrets(twins, "")


def test_the_functions_refuse_to_start_with_a_shared_webhook_secret(tmp_path, monkeypatch):
    shared = "whsec_" + "C" * 32
    monkeypatch.setenv("SOUL_API_KEYS_FILE", write(tmp_path, [
        {"tenant": "a", "key": "k-a-000000000001", "webhook_secret": shared},
        {"tenant": "b", "key": "k-b-000000000001", "webhook_secret": shared},
    ]))
    monkeypatch.setattr(functions_main, "_api", None)
    monkeypatch.setattr(functions_main, "make_clients", lambda project: None)
    with flask.Flask("t").test_request_context("/me"):
        response = functions_main.api(flask.request)
    assert response.status_code == 500
    assert "same webhook secret" in response.get_json()["error"]["message"]
