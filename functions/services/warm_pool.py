"""The warm pool: answers before they are asked. For a prompt key that shows a tenant's demand (at least
`warm_pool_min_users` distinct users of that tenant within `warm_pool_window_s`, or that tenant's explicit
`POST /image/warm`), keep
`ahead` variants that the asking user has not seen rendered or rendering, in the background lane. The moment a
user takes its last unseen variant (or joins the job making it), the next one is queued, so the next time they
ask it is usually there already.

The shared cache shares images, not control: demand, `ahead` and the daily cap are kept per tenant, and a
pre-render is made only for the tenant whose own demand or `POST /image/warm` asked for it, charged to it alone
(admitted like its own jobs; a refusal only means no pre-render, never a failed answer), and shown only in its
`/tasks`. Another tenant's user taking the image still gets it (images are shared) but triggers nothing for a
tenant that did not ask. Pre-renders are bounded by `ahead` (at most `warm_pool_max_ahead`) and a per-key,
per-tenant daily cap. Each one is recorded with the reason it was
made under `warm_pool/{pk}/prerenders/{variant_index}`, and marked delivered when someone first takes it;
`/tasks/stats/summary` reports made vs. delivered (the waste).

Concurrent triggers agree without locks: the variant index to make next is the first one without a live job,
and the job id is named from (pk, index), so twenty users finishing a variant at once create one pre-render.

The hooks run on the request path of every image answer, so what changes slowly is remembered per process
for a few seconds (a key's demand, who was recorded as an asker, pre-renders already marked delivered): the
common case (a user takes a variant while the next one is already rendering) costs one extra read."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import timedelta

import structlog

from functions.adapters.firestore.jobs import JobStore
from functions.adapters.firestore.prompts import PromptStore
from functions.adapters.firestore.warm_pool import WarmPoolStore
from functions.core import keys
from functions.core.errors import InvalidInput, TooManyRequests
from functions.core.memo import TtlMemo
from functions.core.variants import next_index_of, next_variant_index
from functions.settings import FunctionsSettings
from schemas._base import utcnow
from schemas.documents import PromptDoc, VariantDoc
from schemas.jobs import JobDoc, JobLane, JobStatus
from schemas.push import PrerenderDoc, PrerenderStats, WarmAnswer

log = structlog.get_logger(__name__)

WARM_POOL_USER = "warm-pool"  # requested_by of pre-render jobs
Prerender = Callable[[PromptDoc, int], JobDoc | None]
_DEAD = (JobStatus.FAILED, JobStatus.CANCELED)


def shortfall(ahead: int, unseen_left: int, in_flight: int) -> int:
    """How many pre-renders to queue so that `ahead` variants wait for the user."""
    return max(0, ahead - unseen_left - in_flight)


def waste_ratio(made: int, delivered: int) -> float | None:
    return round(1 - delivered / made, 4) if made else None


class WarmPool:
    def __init__(self, pool: WarmPoolStore, jobs: JobStore, prompts: PromptStore, settings: FunctionsSettings):
        self._pool = pool
        self._jobs = jobs
        self._prompts = prompts
        self._settings = settings
        self._demand = TtlMemo(ttl_s=10.0)  # (pk, tenant) -> ahead, for keys that show the tenant's demand
        self._askers = TtlMemo(ttl_s=min(60.0, settings.warm_pool_window_s / 10))  # (pk, tenant, user) lately
        self._delivered = TtlMemo(ttl_s=3600.0)  # (pk, index) whose pre-render record needs no more writes

    # ---- documents -----------------------------------------------------------------------------------------------

    def _ahead(self, pk: str, tenant: str) -> int | None:
        """The key's `ahead` for the tenant when it shows the tenant's demand, else None (no pre-renders)."""
        remembered = self._demand.get((pk, tenant))
        if remembered is not None:
            return int(remembered)
        ahead = self._read_ahead(pk, tenant)
        if ahead:  # only demand is remembered: a key without it may gain it with the next asker
            self._demand.put((pk, tenant), ahead)
        return ahead

    def _read_ahead(self, pk: str, tenant: str) -> int | None:
        explicit = int(self._pool.key_state(pk, tenant).get("explicit_ahead") or 0)
        if explicit:
            return explicit
        since = utcnow() - timedelta(seconds=self._settings.warm_pool_window_s)
        recent = self._pool.count_askers_since(pk, tenant, since)
        return self._settings.warm_pool_ahead if recent >= self._settings.warm_pool_min_users else None

    # ---- hooks called by the image service -----------------------------------------------------------------------

    def observe(self, pk: str, kind: str, user_id: str, tenant: str) -> None:
        """A user of `tenant` asked for this key: remember them, for the tenant's demand."""
        if not self._settings.warm_pool_enabled or kind != "image" or user_id == WARM_POOL_USER:
            return
        if self._askers.get((pk, tenant, user_id)):
            return
        self._pool.record_asker(pk, tenant, user_id)
        self._askers.put((pk, tenant, user_id), True)

    def after_take(self, pk: str, taken_index: int, unseen_left: int, next_index: int,
                   prerender: Prerender, tenant: str) -> list[str]:
        """A user was given variant `taken_index` and has `unseen_left` others: top up what waits for them."""
        if not self._settings.warm_pool_enabled:
            return []
        self._mark_delivered(pk, taken_index)
        if unseen_left >= self._settings.warm_pool_max_ahead:
            return []
        return self._replenish(pk, tenant, next_index, unseen_left, prerender,
                               f"a user took variant {taken_index} with {unseen_left} unseen left")

    def after_join(self, pk: str, job: JobDoc, tenant: str, prerender: Prerender | None = None) -> list[str]:
        """A user waits on `job` (it may be a pre-render: then it is delivered); its variant will be their last."""
        if not self._settings.warm_pool_enabled:
            return []
        index = job.request.variant_index
        self._mark_delivered(pk, index)
        if prerender is None:
            return []
        return self._replenish(pk, tenant, index + 1, 0, prerender, f"a user waits on variant {index}, its last")

    def after_seen(self, user_id: str, variant: VariantDoc, prerender: Prerender, tenant: str) -> list[str]:
        """A user marked a variant seen: when it was their last unseen one, queue the next before they ask."""
        if not self._settings.warm_pool_enabled:
            return []
        index = self._prompts.index_of(variant.pk, user_id)  # constant reads, whatever the variants
        left = len(index.unseen)
        if left >= self._settings.warm_pool_max_ahead:
            return []
        return self._replenish(variant.pk, tenant, next_index_of(index.variant_indices, index.variant_ids), left,
                               prerender,
                               f"a user marked variant {variant.variant_index} seen with {left} unseen left")

    def warm(self, pk: str, variants: int, existing: Sequence[VariantDoc], prerender: Prerender,
             tenant: str, cue_key: str | None = None) -> WarmAnswer:
        """`POST /image/warm`: from now on keep `variants` ahead of this key for `tenant` (and for no other
        tenant), and of the keys this cue gets after a style or identity change (`cue_key`); queue what is missing
        now, charged to `tenant`."""
        if variants > self._settings.warm_pool_max_ahead:
            limit = self._settings.warm_pool_max_ahead
            raise InvalidInput(f"variants may be at most {limit} (SOUL_WARM_POOL_MAX_AHEAD)", field="variants")
        if not self._settings.warm_pool_enabled:
            raise InvalidInput("the warm pool is off in this deployment (SOUL_WARM_POOL_ENABLED)", field="variants")
        self._pool.set_explicit_ahead(pk, tenant, variants)
        if cue_key is not None:
            self._pool.set_cue_ahead(cue_key, tenant, variants)
        self._demand.put((pk, tenant), variants)
        # Nobody has seen anything yet from the pool's point of view: existing variants count as fresh.
        queued = self._replenish(pk, tenant, next_variant_index(existing), len(existing), prerender,
                                 f"POST /image/warm asked for {variants} ahead", ahead=variants)
        return WarmAnswer(pk_id=pk, ahead=variants, queued=queued)

    def carry_over(self, cue_key: str, pk: str) -> None:
        """A cue got a new prompt key (its style or identity changed): the tenants that warmed the cue keep their
        `ahead` on the new key (called once, by the request that creates the key's first job)."""
        if not self._settings.warm_pool_enabled:
            return
        for tenant, ahead in self._pool.cue_settings(cue_key).items():
            if ahead:
                self._pool.set_explicit_ahead(pk, tenant, ahead)
                self._demand.put((pk, tenant), ahead)

    # ---- the work ------------------------------------------------------------------------------------------------

    def _replenish(self, pk: str, tenant: str, start: int, unseen_left: int, prerender: Prerender, why: str,
                   ahead: int | None = None) -> list[str]:
        """Queue what `tenant`'s own `ahead` lacks (`prerender` is bound to that tenant: admitted and charged)."""
        ahead = ahead if ahead is not None else self._ahead(pk, tenant)
        if ahead is None or unseen_left >= ahead:
            return []
        index, in_flight = start, 0
        while in_flight + unseen_left < ahead:  # live jobs already making the next variants count as waiting
            job = self._jobs.job(keys.image_job_id(pk, index))
            if job is None or JobStatus(job.status) in _DEAD:
                break
            in_flight, index = in_flight + 1, index + 1
        missing = shortfall(ahead, unseen_left, in_flight)
        if not missing:
            return []
        prompt = self._prompts.prompt(pk)
        if prompt is None:
            return []
        queued: list[str] = []
        for target in range(index, index + missing):
            if not self._within_cap(pk, tenant):
                log.info("prerender_capped", pk=pk)
                break
            try:
                job = prerender(prompt, target)
            except TooManyRequests as exc:  # the asking tenant's GPU quota: no pre-render, the answer stands
                log.info("prerender_over_quota", pk=pk, reason=str(exc))
                break
            if job is None:
                break
            if job.requested_by == WARM_POOL_USER and JobLane(job.lane) is JobLane.BACKGROUND:
                self._record(pk, tenant, target, job, why)
            queued.append(job.job_id)
        return queued

    def _within_cap(self, pk: str, tenant: str) -> bool:
        today = utcnow().date().isoformat()
        data = self._pool.key_state(pk, tenant)
        made = int(data.get("made_today", 0)) if data.get("made_day") == today else 0
        return made < self._settings.warm_pool_key_cap_per_day

    def _record(self, pk: str, tenant: str, index: int, job: JobDoc, why: str) -> None:
        doc = PrerenderDoc(pk=pk, variant_index=index, job_id=job.job_id, reason=why, made_at=utcnow(),
                           tenant=tenant)
        if not self._pool.record_prerender(doc):
            return  # another trigger recorded this very pre-render
        self._pool.count_made(pk, tenant, utcnow().date().isoformat())
        log.info("prerender_queued", pk=pk, tenant=tenant, variant_index=index, job_id=job.job_id, reason=why)

    def _mark_delivered(self, pk: str, index: int) -> None:
        if self._delivered.get((pk, index)):
            return
        record = self._pool.prerender(pk, index)
        if record is not None and not record.get("delivered"):
            self._pool.mark_delivered(pk, index)
        if record is not None:  # a variant that was no pre-render may still become one's index later: not remembered
            self._delivered.put((pk, index), True)

    def stats(self) -> PrerenderStats:
        made, delivered = self._pool.counts()
        return PrerenderStats(made=made, delivered=delivered, waste_ratio=waste_ratio(made, delivered))
