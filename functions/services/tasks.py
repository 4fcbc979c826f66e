"""Tasks: a job document as the `/tasks` API shows it (with signed URLs for finished results), listing with
filters, cancellation, and summary statistics."""

from __future__ import annotations

import math
from collections.abc import Sequence
from datetime import timedelta

from functions.adapters.firestore.jobs import JobStore
from functions.adapters.pubsub import Publisher
from functions.adapters.signing import UrlSigner
from functions.core import content_policy
from functions.core.content_policy import Viewer
from functions.core.errors import Conflict, NotFound, Unavailable
from functions.core.tenants import DEFAULT_TENANT, scoped_user
from functions.services.content import ContentPolicies
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
        job_retention: timedelta = retention.JOB_RETENTION
    ):
        self._store = store
        self._job_retention = job_retention  # a canceled job's TTL (soul_common/retention.py)
        self._signer = signer
        self._publisher = publisher
        self._base_url = base_url
        self._usage = usage
        self._content = content  # None: every tenant sees results as under the default policy (`flag`)

    def get(self, task_id: str, tenant: str, *, admin: bool = False) -> Task:
        job = self._store.job(task_id)
        if job is None or not visible_to(job, tenant):
            raise NotFound(f"no task '{task_id}'", field="task_id")
        view = self.view(job, tenant, admin=admin)
        if job.status == JobStatus.QUEUED:
            view = view.model_copy(update={"queue_position": self._store.count_queued_before(job)})
        return view

    def snapshot(self, task_id: str) -> tuple[JobDoc | None, int | None]:
        """The job as stored, and its place in line while queued (for the shared progress watcher)."""
        job = self._store.job(task_id)
        position = self._store.count_queued_before(job) if job is not None and job.status == JobStatus.QUEUED \
            else None
        return job, position

    def list(self, query: TaskListQuery, tenant: str) -> TaskPage:
        filters = {
            field: str(value)
            for field, value in (("status", query.status), ("type", query.type), ("soul_id", query.soul_id))
            if value is not None
        }
        contains = (("requester_keys", scoped_user(tenant, query.user_id)) if query.user_id is not None
                    else ("tenants", tenant))
        jobs, cursor = self._store.page(filters, query.page_size, query.cursor, contains=contains)
        return TaskPage(items=[self.view(job, tenant, sign=False) for job in jobs], next_cursor=cursor)

    def images(self, tenant: str, page_size: int, cursor: str | None, *,
               admin: bool = False) -> tuple[list[Variant], str | None]:
        """`GET /static/images`: the images of this tenant's finished image jobs, newest first, with signed URLs:
        the visibility of `/tasks` (the same query as `GET /tasks?status=succeeded&type=image`, its cursor a job
        id within those results), as the tenant's content policy lets it see them."""
        filters = {"status": JobStatus.SUCCEEDED.value, "type": JobType.IMAGE.value}
        jobs, after = self._store.page(filters, page_size, cursor, contains=("tenants", tenant))
        viewer = self.viewer(tenant, admin=admin)  # withheld images are left out (content policy)
        images = [job.result for job in jobs if isinstance(job.result, ImageResult)]
        # signed together: reused when fresh, the rest in parallel
        return [view for view in variant_links(self._signer, images, viewer) if view is not None], after

    def video_output(self, task_id: str, fmt: str, tenant: str) -> str | None:
        """`GET /static/videos/{task}.{fmt}`: the object of an animation of a task this tenant may see (the rule
        of `GET /tasks/{id}`: video task ids are computable from public values), or None."""
        job = self._store.job(task_id)
        if job is None or not visible_to(job, tenant) or not isinstance(job.result, VideoResult):
            return None
        return next((o.object for o in job.result.outputs if o.format == fmt), None)

    def cancel(self, task_id: str, tenant: str) -> tuple[int, Task]:
        """Withdraw `tenant`'s interest. When other tenants still wait, the job goes on for them and this tenant
        sees it canceled (200; the task no longer shows to it). When nobody else waits: queued jobs are canceled
        at once (200), running ones stop at their next step (202). Finished: 409."""
        for _ in range(5):
            version = self._store.read(task_id)
            job = version.job
            if job is None or not visible_to(job, tenant):
                raise NotFound(f"no task '{task_id}'", field="task_id")
            if JobStatus(job.status) in TERMINAL_STATUSES:
                raise Conflict(
                    f"task '{task_id}' is already {job.status}; only queued or running tasks can be canceled"
                )
            now = utcnow()
            others = [t for t in job.tenants if t != tenant]
            mine = {scoped_user(tenant, user) for user in job.requesters.get(tenant, [])}
            if others:
                update = JobStore.withdrawal(tenant, others, [k for k in job.requester_keys if k not in mine], now)
            elif job.status == JobStatus.QUEUED:
                update = {"status": JobStatus.CANCELED.value, "stage": "canceled", "finished_at": now,
                          "cancel_requested": True, "updated_at": now, "event_published_at": now,
                          **retention.expires(names.JOBS, now, self._job_retention)}
            else:
                update = {"cancel_requested": True, "updated_at": now}
            # Conditional on the read: a runner claiming the job at the same moment wins or loses cleanly.
            if not self._store.update_if_unchanged(version, update):
                continue
            if others:
                withdrawn = self.view(job, tenant).model_copy(update={
                    "status": JobStatus.CANCELED.value, "stage": "canceled", "cancel_requested": True,
                    "finished_at": now, "result": None,
                    "actions": TaskActions(self=f"{self._base_url}/tasks/{job.job_id}", cancel=None)})
                return 200, withdrawn
            canceled = job.model_copy(update=update)
            if canceled.status == JobStatus.CANCELED:
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

    def view(self, job: JobDoc, tenant: str, *, sign: bool = True, admin: bool = False,
             viewer: Viewer | None = None) -> Task:
        """The job as `tenant` sees it: only its own end users, never another tenant's, and its result as the
        tenant's content policy lets it see it (`viewer` overrides the tenant's, e.g. for a webhook body)."""
        viewer = viewer or self.viewer(tenant, admin=admin)
        url = f"{self._base_url}/tasks/{job.job_id}"
        active = JobStatus(job.status) not in TERMINAL_STATUSES
        return Task(
            task_id=job.job_id,
            type=job.type,
            status=job.status,
            progress=job.progress,
            stage=job.stage,
            eta_seconds=job.eta_seconds,
            soul_id=job.soul_id,
            user_id=_user_seen_by(job, tenant),
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
