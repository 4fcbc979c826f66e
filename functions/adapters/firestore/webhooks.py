"""Webhook records and their deliveries: `jobs/{job_id}/webhooks/{webhook_id}` (one requester's URL and event
filter), `.../deliveries/{event key}` (the attempts of one event to that target) and
`jobs/{job_id}/webhook_slots/{tenant}~{n}` (the bound on one tenant's targets per job)."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime

from schemas import names
from schemas._base import firestore_dict, utcnow
from schemas.push import DeliveryAttempt, DeliveryDoc, WebhookDoc
from soul_common import firestore as fs
from soul_common import retention


class WebhookStore:
    def __init__(self, db: fs.Db):
        self._db = db

    @staticmethod
    def _hook(job_id: str, webhook_id: str) -> fs.DocRef:
        return fs.doc(names.JOBS, job_id, names.WEBHOOKS, webhook_id)

    def _delivery(self, job_id: str, webhook_id: str, key: str) -> fs.DocRef:
        return self._hook(job_id, webhook_id).child(names.DELIVERIES, key)

    # records
    def register(self, doc: WebhookDoc, events: Iterable[str]) -> None:
        """Create or extend the record (the same requester asking again merges its event filter)."""
        data = {**firestore_dict(doc), **retention.expires(names.WEBHOOKS, utcnow())}
        data["events"] = fs.array_union(events)
        self._db.set(self._hook(doc.job_id, doc.webhook_id), data, merge=True)

    def withdraw(self, job_id: str, tenant: str, now: datetime) -> None:
        """Stamp the tenant's records on the job withdrawn (its cancel while others wait): no more deliveries."""
        for hook in self.hooks(job_id, tenant):
            self._db.update(self._hook(job_id, hook.webhook_id), {"withdrawn_at": now})

    def claim_slot(self, job_id: str, tenant: str, webhook_id: str, cap: int) -> bool:
        """Take one of the tenant's `cap` webhook slots on the job for this target (kept when it holds one
        already); False when all are taken. Slots are created once each (`create()`: exactly one winner), so the
        cap holds under any number of concurrent registrations."""
        for n in range(cap):
            ref = fs.doc(names.JOBS, job_id, names.WEBHOOK_SLOTS, f"{tenant}~{n}")
            now = utcnow()
            if self._db.create(ref, {"tenant": tenant, "webhook_id": webhook_id, "at": now,
                                     **retention.expires(names.WEBHOOK_SLOTS, now)}):
                return True
            held = self._db.get(ref).data or {}
            if held.get("webhook_id") == webhook_id:
                return True
        return False

    def hooks(self, job_id: str, tenant: str | None = None) -> list[WebhookDoc]:
        """The job's webhook records (of one tenant when given)."""
        query = fs.collection(names.JOBS, job_id, names.WEBHOOKS)
        if tenant is not None:
            query = query.where("tenant", "==", tenant)
        return [WebhookDoc.model_validate(s.data) for s in self._db.stream(query)]

    # deliveries
    def deliveries(self, job_id: str, webhook_id: str) -> list[DeliveryDoc]:
        query = fs.collection(names.JOBS, job_id, names.WEBHOOKS, webhook_id, names.DELIVERIES)
        return [DeliveryDoc.model_validate(s.data) for s in self._db.stream(query)]

    def open_delivery(self, job_id: str, webhook_id: str, fresh: DeliveryDoc) -> DeliveryDoc:
        """The delivery of this event to this target: `fresh` when it is the first, else the earlier one's state
        (a Pub/Sub redelivery goes on from where it was)."""
        ref = self._delivery(job_id, webhook_id, fresh.key)
        if self._db.create(ref, {**firestore_dict(fresh), **retention.expires(names.DELIVERIES, utcnow())}):
            return fresh
        return DeliveryDoc.model_validate(self._db.get(ref).data)

    def record_attempt(self, job_id: str, webhook_id: str, key: str, attempt: DeliveryAttempt, *,
                       first: bool, status: str | None) -> None:
        """Append an attempt; `first` stamps when the deliveries began; a final `status` closes the delivery."""
        update: dict = {"attempts": fs.array_union([firestore_dict(attempt)])}
        if first:
            update["first_attempt_at"] = attempt.at
        if status is not None:
            update.update(status=status, finished_at=utcnow())
        self._db.update(self._delivery(job_id, webhook_id, key), update)

    def schedule_attempt(self, job_id: str, webhook_id: str, key: str, due: datetime) -> None:
        """Note when the delivery's next attempt is due (its retry message is published)."""
        self._db.update(self._delivery(job_id, webhook_id, key), {"next_attempt_at": due})

    def close_delivery(self, job_id: str, webhook_id: str, key: str, status: str) -> None:
        self._db.update(self._delivery(job_id, webhook_id, key), {"status": status, "finished_at": utcnow()})
