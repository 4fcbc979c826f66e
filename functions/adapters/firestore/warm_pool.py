"""The warm pool's documents. Control is per tenant: `warm_pool/{pk}/tenants/{tenant}` (an explicit `ahead`, the
pre-renders made for the tenant today) and `.../tenants/{tenant}/askers/{user}` (the tenant's demand), so one
tenant's settings and users never make (or charge) pre-renders for another. What was made is per key:
`warm_pool/{pk}/prerenders/{variant_index}` (why, for which tenant, and whether someone took it). The rules are
functions/services/warm_pool.py's."""

from __future__ import annotations

from datetime import datetime

from functions.core.errors import Unavailable
from schemas import names
from schemas._base import firestore_dict, utcnow
from schemas.push import PrerenderDoc
from soul_common import firestore as fs
from soul_common import retention

PRERENDERS = "prerenders"
ASKERS = "askers"
TENANTS = "tenants"
CUE_TENANTS_READ = 100


class WarmPoolStore:
    def __init__(self, db: fs.Db):
        self._db = db

    @staticmethod
    def _key(pk: str) -> fs.DocRef:
        return fs.doc(names.WARM_POOL, pk)

    @staticmethod
    def _tenant(pk: str, tenant: str) -> fs.DocRef:
        return fs.doc(names.WARM_POOL, pk, TENANTS, tenant)

    def key_state(self, pk: str, tenant: str) -> dict:
        """The tenant's state for the key: `explicit_ahead`, `made_day`, `made_today` (empty when it has none)."""
        return self._db.get(self._tenant(pk, tenant)).data or {}

    def set_explicit_ahead(self, pk: str, tenant: str, ahead: int) -> None:
        """A tenant's setting is kept until changed: it clears the expiry a counter-only document carries."""
        self._db.set(self._tenant(pk, tenant), {"pk": pk, "tenant": tenant, "explicit_ahead": ahead,
                                                "updated_at": utcnow(), retention.TTL_FIELD: fs.DELETE_FIELD},
                     merge=True)

    @staticmethod
    def _cue_setting(cue_key: str, tenant: str) -> fs.DocRef:
        return fs.doc(names.WARM_POOL, f"cue-{cue_key}", TENANTS, tenant)

    def set_cue_ahead(self, cue_key: str, tenant: str, ahead: int) -> None:
        """The tenant's setting for a cue whatever its prompt key (`keys.cue_key`): a style or identity change makes
        the cue a new key, and the setting carries over to it (kept until changed, like the key's)."""
        self._db.set(self._cue_setting(cue_key, tenant), {"cue_key": cue_key, "tenant": tenant,
                                                          "explicit_ahead": ahead, "updated_at": utcnow()}, merge=True)

    def cue_settings(self, cue_key: str) -> dict[str, int]:
        """Every tenant's `ahead` for a cue (one small query: the tenants that warmed it, at most 100)."""
        snaps = self._db.stream(fs.collection(names.WARM_POOL, f"cue-{cue_key}", TENANTS).limit(CUE_TENANTS_READ))
        return {s.data["tenant"]: int(s.data.get("explicit_ahead") or 0) for s in snaps}

    def count_askers_since(self, pk: str, tenant: str, since: datetime) -> int:
        return self._db.count(fs.collection(names.WARM_POOL, pk, TENANTS, tenant, ASKERS).where("at", ">=", since))

    def record_asker(self, pk: str, tenant: str, user_id: str) -> None:
        now = utcnow()
        self._db.set(self._tenant(pk, tenant).child(ASKERS, user_id),
                     {"user_id": user_id, "at": now, **retention.expires(ASKERS, now)})

    def record_prerender(self, doc: PrerenderDoc) -> bool:
        """False when another trigger recorded this very pre-render first."""
        return self._db.create(self._key(doc.pk).child(PRERENDERS, str(doc.variant_index)), firestore_dict(doc))

    def count_made(self, pk: str, tenant: str, today: str, *, attempts: int = 5) -> None:
        """One more pre-render of the key for the tenant today (the per-key daily cap, per tenant).

        A document that holds only this counter (no explicit `ahead`) expires two days after its day began
        (soul_common/retention.py): keys nobody asks for again leave nothing behind. Each write is conditional
        on the document read, so a setting written in between is never given an expiry."""
        ref = self._tenant(pk, tenant)
        for _ in range(attempts):
            snap = self._db.get(ref)
            state = snap.data or {}
            if state.get("made_day") == today:
                update = {"made_today": fs.increment(1)}
            else:
                update = {"made_day": today, "made_today": 1}
                if state.get("explicit_ahead") is None:
                    update.update(retention.expires(TENANTS, utcnow()))
            if snap.exists:
                if self._db.update(ref, update, if_unchanged=snap):
                    return
            elif self._db.create(ref, {"pk": pk, "tenant": tenant, **update}):
                return
        raise Unavailable(f"warm_pool/{pk}/tenants/{tenant} kept changing under us")

    def prerender(self, pk: str, index: int) -> dict | None:
        return self._db.get(self._key(pk).child(PRERENDERS, str(index))).data

    def mark_delivered(self, pk: str, index: int) -> None:
        self._db.update(self._key(pk).child(PRERENDERS, str(index)), {"delivered": True, "delivered_at": utcnow()})

    def counts(self) -> tuple[int, int]:
        """(pre-renders made, pre-renders delivered), over every key."""
        group = fs.collection_group(PRERENDERS)
        return self._db.count(group), self._db.count(group.where("delivered", "==", True))
