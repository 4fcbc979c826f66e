"""Bounded storage: every short-lived kind of document in soul_common/retention.py has a TTL policy on its field
in infra/terraform/firestore.tf, and every TTL policy there is a kind in the table (no policy on a field nobody
writes, no kind without a policy). The writers are checked in tests/integration/test_bounded_storage.py."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from schemas import names
from soul_common import indexes, retention

TF = Path(__file__).resolve().parents[2] / "infra" / "terraform" / "firestore.tf"


def test_ttl_policies_and_the_retention_table_name_the_same_kinds_and_fields():
    declared = indexes.from_terraform(TF.read_text()).ttl_fields()
    table = {kind.collection: retention.TTL_FIELD for kind in retention.EXPIRING}
    assert declared == table


def test_ttl_fields_are_not_indexed():
    """Nothing queries expires_at: an index on it would only add write cost (and hotspot a timestamp)."""
    for config in indexes.from_terraform(TF.read_text()).fields:
        if config.ttl:
            assert config.indexes == frozenset(), config.name


def test_the_kinds_the_issue_names_expire_and_the_product_memory_does_not():
    kinds = {kind.collection for kind in retention.EXPIRING}
    assert {"rate", "counters", names.IDEMPOTENCY, names.DELIVERIES, names.JOBS, "askers"} <= kinds
    assert not kinds & {names.PROMPTS, names.VARIANTS, names.SEEN, names.STYLES}


def test_expires_uses_the_table_or_the_configured_retention():
    now = datetime(2026, 12, 1, tzinfo=timezone.utc)
    assert retention.expires(names.JOBS, now) == {"expires_at": now + retention.JOB_RETENTION}
    assert retention.expires(names.JOBS, now, timedelta(days=2)) == {"expires_at": now + timedelta(days=2)}
    with pytest.raises(KeyError):
        retention.expires(names.VARIANTS, now)
    # children outlive their parent job (TTL never deletes sub-collections)
    assert retention.lifetime(names.WEBHOOKS) >= retention.lifetime(names.JOBS)
    assert retention.lifetime(names.DELIVERIES) >= retention.lifetime(names.JOBS)
