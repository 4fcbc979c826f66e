"""Tasks: a job document as the `/tasks` API shows it (with signed URLs for finished results), listing with
filters, cancellation, and summary statistics.

Reads per request are constant (issue 17): `GET /tasks/{id}` reads the job, the tenant's interest marker when the
job document does not name the tenant (a joiner's), one end user for the view, and a queue position that is
cached per job for `QUEUE_POSITION_TTL_S`; the two interest facts are cached per instance for
`INTEREST_TTL_S` (an open event stream asks twice a second)."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from datetime import datetime, timedelta
from typing import TypeVar

from functions.adapters.firestore.jobs import JobStore
from functions.adapters.firestore.webhooks import WebhookStore
from functions.adapters.pubsub import Publisher
from functions.adapters.signing import UrlSigner
from functions.core import content_policy
from functions.core.content_policy import Viewer
from functions.core.errors import Conflict, InvalidInput, NotFound, Unavailable
from functions.core.memo import TtlMemo
from functions.core.tenants import DEFAULT_TENANT, scoped_user
from functions.services.content import ContentPolicies
from functions.services.jobs import CANCEL_PENDING_S, cancel_pending
from functions.services.links import variant_link, variant_links, withheld_view
from functions.services.usage import GpuUsage
from schemas import names
from schemas._base import utcnow
from schemas.api import DurationStats, MediaLink, Task, TaskActions, TaskListQuery, TaskPage, TaskResult, TaskStats, Variant
from schemas.api import TaskMetrics
from schemas.push import TaskPreview
from schemas.jobs import TERMINAL_STATUSES, ImageResult, JobDoc, JobEvent, JobStatus, JobType, VideoResult
from soul_common import retention

STATS_SAMPLE = 500
QUEUE_POSITION_TTL_S = 3.0
INTEREST_TTL_S = 5.0
# A listing whose filter applies to the jobs read (status, finished images) reads up to this many pages of the
# tenant's interest records to fill one page: a constant bound per request, and few near-empty pages to follow.
FILTERED_SCAN_PAGES = 4
STALLED_STAGE = "waiting_for_runner"  # running, but its runner's lease ran out: the reconciler re-queues it


Item = TypeVar("Item")


def visible_to(job: JobDoc, tenant: str) -> bool:
    """A job shows only to the tenants waiting on it; jobs from before tenancy belong to the default tenant."""
    if job.tenants or job.tenant is not None:
        return tenant in job.tenants
    return tenant == DEFAULT_TENANT


def percentile(sorted_values: Sequence[float], q: float) -> float | None:
    """Nearest-rank percentile of ascending values; None for no values."""
    if not sorted_values:
        return None
    rank = max(1, math.ceil(q / 100 * len(sorted_values)))
    return round(sorted_values[rank - 1], 3)


class TaskService:
    def __init__(
        self, store: JobStore, signer: UrlSigner, publisher: Publisher, base_url: str, *,
        usage: GpuUsage | None = None, content: ContentPolicies | None = None,
        job_retention: timedelta = retention.JOB_RETENTION, webhooks: WebhookStore | None = None
    ):
        self._store = store
        self._webhooks = webhooks  # a tenant that withdraws from a job is sent none of its later events
        self._job_retention = job_retention  # a canceled job's TTL (soul_common/retention.py)
        self._signer = signer
        self._publisher = publisher
        self._base_url = base_url
        self._usage = usage
        self._content = content  # None: every tenant sees results as under the default policy (`flag`)
        self._positions = TtlMemo(QUEUE_POSITION_TTL_S)
        self._interest = TtlMemo(INTEREST_TTL_S)

    def _joined(self, job: JobDoc, tenant: str) -> tuple[bool, str | None, datetime | None]:
        """(whether `tenant` waits, or waited, on the job through its interest records, one of its end users, when
        it withdrew if it did), cached."""
        key = (job.job_id, tenant)
        known = self._interest.get(key)
        if known is None:
            marker = self._store.interest.marker(job.job_id, tenant)
            joined = marker is not None
            known = (joined, self._store.interest.first_user(job.job_id, tenant) if joined else None,
                     marker.get("withdrawn_at") if marker else None)
            if joined and known[2] is None:
                # only what stays true until a cancel (which drops it): a tenant may join, or join again, any moment
                self._interest.put(key, known)
        return known  # type: ignore[return-value]

    def _standing(self, job: JobDoc, tenant: str) -> tuple[bool, str | None, datetime | None]:
        """(whether the task shows to `tenant`, its joined end user, when it withdrew): the job names the tenant,
        or the tenant's interest marker exists; one lookup of the interest records (cached while live)."""
        if visible_to(job, tenant):
            return True, None, None
        if not (job.tenants or job.tenant):
            return False, None, None
        return self._joined(job, tenant)

    def tenant_view(self, job: JobDoc, tenant: str, *, admin: bool = False) -> Task | None:
        """The task as GET /tasks/{id} shows it to `tenant` (canceled once it withdrew), or None when it does not
        show to it (the event stream's frames)."""
        visible, user, withdrawn = self._standing(job, tenant)
        if not visible:
            return None
        view = self.view(job, tenant, admin=admin, user_id=user)
        return view if withdrawn is None else self._as_withdrawn(view, withdrawn)

    def _as_withdrawn(self, view: Task, at: datetime) -> Task:
        """The task as a tenant that withdrew from it sees it: canceled when it canceled, whatever the others get."""
        return view.model_copy(update={
            "status": JobStatus.CANCELED.value, "stage": "canceled", "cancel_requested": True, "finished_at": at,
            "eta_seconds": None, "result": None, "error": None, "preview": None,
            "queue_position": None, "actions": TaskActions(self=f"{self._base_url}/tasks/{view.task_id}", cancel=None)})

    def visible(self, job: JobDoc, tenant: str) -> bool:
        """GET /tasks/{id}'s rule: the job names the tenant, or the tenant's interest marker exists (cached)."""
        return self._standing(job, tenant)[0]

    def _queue_position(self, job: JobDoc, version: object) -> int:
        """Cached per job (and its document's version) for a few seconds: a queued task polled every second
        costs one aggregation per instance per interval, not one per poll."""
        key = (job.job_id, version)
        position = self._positions.get(key)
        if position is None:
            position = self._store.count_queued_before(job)
            self._positions.put(key, position)
        return position  # type: ignore[return-value]

    def get(self, task_id: str, tenant: str, *, admin: bool = False) -> Task:
        version = self._store.read(task_id)
        job = version.job
        view = self.tenant_view(job, tenant, admin=admin) if job is not None else None
        if view is None:
            raise NotFound(f"no task '{task_id}'", field="task_id")
        if view.status == JobStatus.QUEUED:
            view = view.model_copy(update={"queue_position": self._queue_position(job, version.snapshot.update_time)})
        return view

    def snapshot(self, task_id: str) -> tuple[JobDoc | None, int | None]:
        """The job as stored, and its place in line while queued (for the shared progress watcher)."""
        job = self._store.job(task_id)
        position = self._store.count_queued_before(job) if job is not None and job.status == JobStatus.QUEUED \
            else None
        return job, position

    def list(self, query: TaskListQuery, tenant: str) -> TaskPage:
        """The tenant's (or one end user's) tasks, newest first, from the interest records (one query and one
        batched read of the jobs per page). A status filter applies to the jobs read: such a listing reads up to
        `FILTERED_SCAN_PAGES` pages of records to fill a page, so a page may still hold fewer than `page_size`
        items; `next_cursor` goes on. A cursor is a position in the interest records (the query without the
        status), so every `next_cursor` given out is taken back, whatever its job's status."""
        filters = {field: str(value) for field, value in (("type", query.type), ("soul_id", query.soul_id))
                   if value is not None}
        user = (query.user_id, scoped_user(tenant, query.user_id)) if query.user_id is not None else None

        def shown(job: JobDoc, withdrawn_at: datetime | None) -> Task | None:
            view = self.view(job, tenant, sign=False, user_id=query.user_id)
            view = self._as_withdrawn(view, withdrawn_at) if withdrawn_at is not None else view
            return view if query.status is None or str(view.status) == str(query.status) else None

        items, cursor = self._scan(tenant, user, filters, query.page_size, query.cursor, shown,
                                   pages=1 if query.status is None else FILTERED_SCAN_PAGES)
        return TaskPage(items=items, next_cursor=cursor)

    def images(self, tenant: str, page_size: int, cursor: str | None, *,
               admin: bool = False) -> tuple[list[Variant], str | None]:
        """`GET /static/images`: the images of this tenant's finished image jobs, newest first, with signed URLs:
        the visibility of `/tasks` (the same query as `GET /tasks?status=succeeded&type=image`, its cursor a
        position in the tenant's image tasks), as the tenant's content policy lets it see them."""
        def finished(job: JobDoc, withdrawn_at: datetime | None) -> ImageResult | None:
            done = withdrawn_at is None and job.status == JobStatus.SUCCEEDED and isinstance(job.result, ImageResult)
            return job.result if done else None

        images, after = self._scan(tenant, None, {"type": JobType.IMAGE.value}, page_size, cursor, finished,
                                   pages=FILTERED_SCAN_PAGES)
        viewer = self.viewer(tenant, admin=admin)  # withheld images are left out (content policy)
        # signed together: reused when fresh, the rest in parallel
        return [view for view in variant_links(self._signer, images, viewer) if view is not None], after

    def _scan(self, tenant: str, user: tuple[str, str] | None, filters: dict[str, str], page_size: int,
              cursor: str | None, keep: Callable[[JobDoc, datetime | None], Item | None], *,
              pages: int) -> tuple[list[Item], str | None]:
        """Up to `page_size` of what `keep(job, withdrawn_at)` gives for the tenant's interest records after
        `cursor`, reading at most `pages` pages of them; the cursor is the last record looked at, None at the
        end."""
        items: list[Item] = []
        for _ in range(pages):
            ids, after, withdrawn = self._store.interest.page(tenant, user, filters, page_size, cursor)
            jobs = {job.job_id: job for job in self._store.jobs(ids)}
            for position, job_id in enumerate(ids):
                item = keep(jobs[job_id], withdrawn.get(job_id)) if job_id in jobs else None
                if item is not None:
                    items.append(item)
                if len(items) == page_size:
                    more = position < len(ids) - 1 or after is not None
                    return items, job_id if more else None
            if after is None:
                return items, None
            cursor = after
        return items, cursor

    def video_output(self, task_id: str, fmt: str, tenant: str) -> str | None:
        """`GET /static/videos/{task}.{fmt}`: the object of an animation of a task this tenant may see (the rule
        of `GET /tasks/{id}`: video task ids are computable from public values), or None."""
        job = self._store.job(task_id)
        if job is None or not isinstance(job.result, VideoResult):
            return None
        visible, _, withdrawn = self._standing(job, tenant)
        if not visible or withdrawn is not None:  # a tenant that canceled reads the task canceled, with no result
            return None
        return next((o.object for o in job.result.outputs if o.format == fmt), None)

    def cancel(self, task_id: str, tenant: str) -> tuple[int, Task]:
        """Withdraw `tenant`'s interest. When other tenants still wait, the job goes on for them and this tenant
        sees it canceled (200; the task no longer shows to it). When nobody else waits: queued jobs are canceled
        at once (200), running ones stop at their next step (202). Finished: 409."""
        for _ in range(5):
            version = self._store.read(task_id)
            job = version.job
            visible, _, withdrawn = self._standing(job, tenant) if job is not None else (False, None, None)
            if not visible:
                raise NotFound(f"no task '{task_id}'", field="task_id")
            if withdrawn is not None:
                raise Conflict(f"task '{task_id}' is already canceled; only queued or running tasks can be canceled")
            if JobStatus(job.status) in TERMINAL_STATUSES:
                raise Conflict(
                    f"task '{task_id}' is already {job.status}; only queued or running tasks can be canceled"
                )
            # Whoever else waits decides whether the work goes on. Only then are this tenant's interest records
            # withdrawn (the task no longer shows to it); a job canceled for good stays in its listings, canceled.
            self._positions.clear()  # everyone behind a canceled job moves up
            now = utcnow()
            others = [t for t in job.tenants if t != tenant]
            mine = {scoped_user(tenant, user) for user in job.requesters.get(tenant, [])}
            tenancy = bool(job.tenants or job.tenant)
            waiting = others[0] if others else (self._store.interest.other_waiting(task_id, tenant) if tenancy
                                                else None)
            if waiting is None and tenancy and not cancel_pending(job, now, CANCEL_PENDING_S / 2):
                # Nobody else seems to wait: say so on the job, then look again. A joiner records its interest and
                # then reads the job, so either it sees this intent (and asks for a fresh job) or the next look
                # finds its record.
                self._store.update_if_unchanged(version, {"cancel_pending_at": now, "updated_at": now})
                continue
            someone_left = waiting is not None
            if someone_left:
                self._store.interest.withdraw(task_id, tenant, now)
                if self._webhooks is not None:
                    self._webhooks.withdraw(task_id, tenant, now)
                self._interest.drop((task_id, tenant))
                update = (JobStore.withdrawal(tenant, others, [k for k in job.requester_keys if k not in mine], now)
                          if tenant in job.tenants else {})
                if job.tenant == tenant and waiting:
                    update["tenant"] = waiting  # the GPU time is charged to a tenant that still wants the work
                if job.cancel_pending_at is not None:
                    update["cancel_pending_at"] = None
                update = update or None
            elif job.status == JobStatus.QUEUED:
                update = {"status": JobStatus.CANCELED.value, "stage": "canceled", "finished_at": now,
                          "cancel_requested": True, "updated_at": now, "event_published_at": now,
                          **retention.expires(names.JOBS, now, self._job_retention)}
            else:
                update = {"cancel_requested": True, "updated_at": now}
            # Conditional on the read: a runner claiming the job at the same moment wins or loses cleanly.
            if update is not None and not self._store.update_if_unchanged(version, update):
                continue
            if someone_left:
                return 200, self._as_withdrawn(self.view(job, tenant), now)
            canceled = job.model_copy(update=update)
            if canceled.status == JobStatus.CANCELED:
                self._store.settle_reservation(job, now)  # a queued job never ran: its GPU-seconds are free again
                self._announce(canceled)
                return 200, self.view(canceled, tenant)
            return 202, self.view(canceled, tenant)
        raise Unavailable(f"task '{task_id}' kept changing; retry")

    def _announce(self, job: JobDoc) -> None:
        event = JobEvent(job_id=job.job_id, type=job.type, status=JobStatus.CANCELED, soul_id=job.soul_id,
                         requested_by=job.requested_by, occurred_at=utcnow())
        self._publisher.publish_event(
            event_type=names.EVENT_JOB_CANCELED, event_id=job.job_id, data=event.model_dump_json().encode()
        )

    def stats(self) -> TaskStats:
        by_status = {s.value: self._store.count_by("status", s.value) for s in JobStatus}
        by_type = {t.value: self._store.count_by("type", t.value) for t in JobType}
        finished = self._store.recent_finished(JobStatus.SUCCEEDED.value, STATS_SAMPLE)
        durations: dict[str, list[float]] = {t.value: [] for t in JobType}
        for job in finished:
            if job.started_at and job.finished_at:
                durations[str(job.type)].append((job.finished_at - job.started_at).total_seconds())
        return TaskStats(
            total=sum(by_status.values()),
            by_status=by_status,
            by_type=by_type,
            durations={
                kind: DurationStats(count=len(values), p50_seconds=percentile(sorted(values), 50),
                                    p95_seconds=percentile(sorted(values), 95))
                for kind, values in durations.items()
            },
            sample_size=len(finished),
            gpu=self._usage.summary() if self._usage is not None else None,
        )

    def viewer(self, tenant: str, *, admin: bool = False) -> Viewer:
        return self._content.viewer(tenant, admin=admin) if self._content is not None else Viewer(admin=admin)

    def blocks(self, tenant: str, cue: str) -> bool:
        """Whether the tenant blocks a term of a cue it did not send itself (an image it would animate)."""
        return self._content is not None and self._content.blocks(tenant, cue)

    def view(self, job: JobDoc, tenant: str, *, sign: bool = True, admin: bool = False,
             viewer: Viewer | None = None, user_id: str | None = None) -> Task:
        """The job as `tenant` sees it: only its own end users, never another tenant's, and its result as the
        tenant's content policy lets it see it (`viewer` overrides the tenant's, e.g. for a webhook body)."""
        viewer = viewer or self.viewer(tenant, admin=admin)
        user_id = user_id or _user_seen_by(job, tenant)
        if user_id is None and sign and tenant and job.tenant is not None and tenant not in job.tenants:
            user_id = self._joined(job, tenant)[1]  # a joiner: its user is on its interest record
        url = f"{self._base_url}/tasks/{job.job_id}"
        active = JobStatus(job.status) not in TERMINAL_STATUSES
        # A running job whose lease ran out lost its runner: no ETA is true until another one takes it up.
        stalled = job.status == JobStatus.RUNNING and job.lease_expires_at is not None \
            and job.lease_expires_at <= utcnow()
        return Task(
            task_id=job.job_id,
            type=job.type,
            status=job.status,
            progress=job.progress,
            stage=STALLED_STAGE if stalled else job.stage,
            eta_seconds=None if stalled else job.eta_seconds,
            soul_id=job.soul_id,
            user_id=user_id,
            cue=getattr(job.request, "cue", None),
            created_at=job.created_at,
            started_at=job.started_at,
            finished_at=job.finished_at,
            attempts=job.attempts,
            cancel_requested=job.cancel_requested,
            result=self._result(job, viewer) if sign else None,
            error=job.error,
            actions=TaskActions(self=url, cancel=url if active else None),
            metrics=TaskMetrics(**job.metrics.model_dump()) if job.metrics is not None else None,
            preview=self._preview(job, viewer) if sign and active else None,
        )

    def _preview(self, job: JobDoc, viewer: Viewer) -> TaskPreview | None:
        """The latest preview of a running job, signed, for policies that show previews (core/content_policy.py)."""
        if job.preview is None or not content_policy.shows_previews(viewer):
            return None
        signed = self._signer.sign(job.preview.object)
        return TaskPreview(task_id=job.job_id, step=job.preview.step, steps=job.preview.steps, url=signed.url)

    def _result(self, job: JobDoc, viewer: Viewer) -> TaskResult | None:
        if isinstance(job.result, ImageResult):
            withheld = withheld_view(job.result, viewer)
            if withheld is not None:
                return TaskResult(withheld=withheld)
            return TaskResult(variant=variant_link(self._signer, job.result, viewer))
        if isinstance(job.result, VideoResult):
            links = []
            outputs = job.result.outputs
            for output, signed in zip(outputs, self._signer.sign_many([o.object for o in outputs])):
                links.append(MediaLink(format=output.format, url=signed.url, expires_at=signed.expires_at,
                                       content_type=output.content_type, bytes=output.bytes))
            return TaskResult(outputs=links)
        return None


def _user_seen_by(job: JobDoc, tenant: str) -> str | None:
    if not job.tenants and job.tenant is None:
        return job.requested_by  # a job from before tenancy
    users = job.requesters.get(tenant, [])
    return users[0] if users else None
