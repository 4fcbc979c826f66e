"""The shared progress watcher (functions/services/progress.py) and the event stream on it (functions/http/sse.py):
the reads of a followed job do not grow with its followers, streams are admitted within their caps, a slot
comes back when a stream closes, and a stream sends heartbeats and ends at its maximum duration. The task
service here shares the real one's interface (`snapshot`, `view`) and counts its reads."""

from __future__ import annotations

import asyncio
import threading
import time
from datetime import datetime, timezone

import pytest

from functions.core import errors
from functions.http.sse import EventStream, open_stream
from functions.services.tasks import visible_to
from functions.services.progress import ProgressHub, StreamCaps, Watch, admit
from functions.settings import FunctionsSettings
from schemas.api import Task, TaskActions
from schemas.jobs import JobDoc

CREATED = datetime(2026, 11, 25, tzinfo=timezone.utc)



def run_isolated(coroutine):
    """asyncio.run on a thread of its own: an earlier test (Playwright's sync API) may leave a loop running on this
    thread, and asyncio.run refuses to nest."""
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, coroutine).result()

def job(status: str = "running", progress: float = 0.5, tenants: tuple[str, ...] = ("acme",)) -> JobDoc:
    # The watcher never looks into the request: a constructed document is enough.
    return JobDoc.model_construct(job_id="img-1", type="image", status=status, progress=progress, stage="denoise",
                                  created_at=CREATED, updated_at=CREATED, tenants=list(tenants), tenant=tenants[0],
                                  soul_id="nova")


class CountingTasks:
    """The task service's watcher-facing interface over one mutable job, counting reads."""

    def __init__(self, current: JobDoc):
        self.current = current
        self.reads = 0
        self.lock = threading.Lock()

    def snapshot(self, task_id):
        with self.lock:
            self.reads += 1
        return self.current, None

    def visible(self, job, tenant):
        return visible_to(job, tenant)  # the real service also consults the tenant's interest marker

    def view(self, job, tenant, *, sign=True, admin=False):
        return Task(task_id=job.job_id, type=job.type, status=job.status, progress=job.progress, stage=job.stage,
                    created_at=job.created_at, actions=TaskActions(self=f"/tasks/{job.job_id}"))

    def tenant_view(self, job, tenant, *, admin=False):
        return self.view(job, tenant, admin=admin) if self.visible(job, tenant) else None  # none here withdraws


def hub_of(tasks, *, per_instance=1000, per_tenant=1000, interval=0.02) -> ProgressHub:
    return ProgressHub(tasks, poll_interval_s=interval,
                       caps=StreamCaps(per_instance=per_instance, per_tenant=per_tenant, retry_after_s=3))


def settings(**kw) -> FunctionsSettings:
    return FunctionsSettings(**{"sse_poll_interval_s": 0.02, "sse_heartbeat_s": 30, "sse_max_duration_s": 30, **kw})


async def follow_for(hub: ProgressHub, followers: int, seconds: float) -> list[list[str]]:
    """`followers` streams of one job in one event loop for `seconds`, then closed."""
    cfg = settings()

    async def one() -> list[str]:
        stream = open_stream(hub, "img-1", "acme", cfg)
        frames = []
        try:
            async with asyncio.timeout(seconds):
                async for chunk in stream:
                    frames.append(chunk)
        except TimeoutError:
            pass
        return frames

    return await asyncio.gather(*(one() for _ in range(followers)))


def test_reads_of_a_followed_job_do_not_grow_with_its_followers():
    counts = {}
    for followers in (1, 300):
        tasks = CountingTasks(job())
        hub = hub_of(tasks)
        run_isolated(follow_for(hub, followers, 0.5))
        counts[followers] = tasks.reads
    # ~0.5 s / 0.02 s = 25 reads either way (one seed read + one per interval), never one per follower
    assert counts[300] <= counts[1] + 5 and counts[1] <= 40


def test_every_follower_sees_each_change_once_and_the_end():
    tasks = CountingTasks(job(progress=0.1))
    hub = hub_of(tasks)

    def runner():
        time.sleep(0.1)
        tasks.current = job(progress=0.6)
        time.sleep(0.1)
        tasks.current = job(status="succeeded", progress=1.0)

    threading.Thread(target=runner).start()
    results = run_isolated(follow_for(hub, 50, 5))
    for frames in results:
        updates = [f for f in frames if "event: update" in f]
        assert len(updates) == 3 and '"progress":0.6' in updates[1]
        assert frames[-1].startswith("event: end")
    assert hub.open_streams() == {}  # every slot came back


def test_streams_past_a_tenants_cap_are_refused_with_retry_after_and_others_still_fit():
    hub = hub_of(CountingTasks(job(tenants=("acme", "globex"))), per_instance=5, per_tenant=3)
    held = [hub.follow("img-1", "acme")[0] for _ in range(3)]
    with pytest.raises(errors.TooManyRequests) as refused:
        hub.follow("img-1", "acme")
    assert refused.value.headers["Retry-After"] == "3" and refused.value.code == "too_many_streams"
    held += [hub.follow("img-1", "globex")[0] for _ in range(2)]
    with pytest.raises(errors.TooManyRequests):  # the instance is full now
        hub.follow("img-1", "globex")
    held[0].close()
    held[0].close()  # closing twice gives back one slot
    held.append(hub.follow("img-1", "acme")[0])
    assert hub.open_streams() == {"acme": 3, "globex": 2}


def test_a_task_another_tenant_cannot_see_is_a_404_and_takes_no_slot():
    hub = hub_of(CountingTasks(job(tenants=("acme",))))
    with pytest.raises(errors.NotFound):
        hub.follow("img-1", "globex")
    assert hub.open_streams() == {}


def test_followers_of_one_tenant_share_one_rendering_of_each_change():
    tasks = CountingTasks(job(tenants=("acme", "globex")))
    hub = hub_of(tasks)
    follows = [hub.follow("img-1", tenant)[0] for tenant in ("acme", "acme", "globex")]
    snap = follows[0].watch.snapshot
    made = []

    def render(task):
        made.append(task)
        return object()

    acme = [f.rendered(snap, render) for f in follows[:2]]
    globex = follows[2].rendered(snap, render)
    assert acme[0] is acme[1] and globex is not acme[0] and len(made) == 2


def test_admission_is_decided_per_tenant_then_per_instance():
    caps = StreamCaps(per_instance=10, per_tenant=4, retry_after_s=1)
    assert admit(caps, 0, 0) is None and admit(caps, 9, 3) is None
    assert "tenant" in admit(caps, 5, 4) and "instance" in admit(caps, 10, 0)


def test_a_stream_sends_heartbeats_and_ends_at_its_maximum_duration():
    now = [0.0]

    class Idle(Watch):  # nothing changes: every wait runs to its timeout on a fake clock
        def wait(self, after, timeout):
            now[0] += timeout
            return None

    class Follow:
        watch = Idle("img-1")
        closed = False

        def rendered(self, snap, render):
            return render(CountingTasks(job()).view(snap.job, "acme"))

        def close(self):
            self.closed = True

    follow = Follow()
    follow.watch.publish(job())
    stream = EventStream(follow, follow.watch.snapshot, settings(sse_heartbeat_s=3.0, sse_max_duration_s=10.0),
                         clock=lambda: now[0])
    frames = list(stream)
    assert frames[0].startswith("retry: ")
    assert sum("event: update" in f for f in frames) == 1  # nothing changed
    assert frames.count(": keepalive\n\n") == 3
    assert "event: timeout" in frames[-1] and now[0] == 10.0 and follow.closed


def test_a_stream_resumed_with_last_event_id_sends_only_what_the_client_lacks():
    """Event ids name what the client has (update digest, preview step), so a reconnect (EventSource sends
    Last-Event-ID by itself) is not sent the update it already has, and one made on another instance resumes too;
    an id this stream did not make is ignored."""
    tasks = CountingTasks(job(progress=0.3))
    cfg = settings(sse_max_duration_s=0.3)

    def frames_of(last_event_id=None) -> list[str]:
        return list(open_stream(hub_of(tasks), "img-1", "acme", cfg, last_event_id=last_event_id))

    def ids(frames):
        return [f.split("\n", 1)[0].removeprefix("id: ") for f in frames if f.startswith("id: ")]

    first = frames_of()
    assert sum("event: update" in f for f in first) == 1
    [seen] = ids(first)
    assert frames_of(seen) and not any("event: update" in f for f in frames_of(seen))  # nothing new: no replay
    tasks.current = job(progress=0.7)
    resumed = frames_of(seen)  # a fresh hub: the digest, not the instance's memory, says what the client has
    assert [f for f in resumed if "event: update" in f][0].count('"progress":0.7') == 1 and ids(resumed) != [seen]
    for foreign in ("3", "", "zz.1", "0123456789abcdef.x", "x" * 5000):  # the old per-connection counter, junk
        assert sum("event: update" in f for f in frames_of(foreign)) == 1
    tasks.current = job(status="succeeded", progress=1.0)
    [done] = ids(frames_of())
    assert [f.split("\n")[0] for f in frames_of(done)] == ["retry: 2000", "event: end"]  # only the end
