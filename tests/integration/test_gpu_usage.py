"""GPU-seconds and queue position on the real api function against the Firestore emulator: `metrics` on
`GET /tasks/{id}`, device time spent and saved by dedup in `/tasks/stats/summary` (the sharded hit counter), and a
queued task's place in its lane."""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta

import pytest
from google.cloud import firestore

from functions.adapters.firestore.counters import ShardedCounter
from functions.services.usage import gpu_stats
from schemas import names
from soul_common import rollups
from soul_common.firestore import Db
from schemas._base import firestore_dict, utcnow
from schemas.jobs import ImageJobSpec, ImageResult, JobDoc, JobLane, JobMetrics, JobStatus, JobType, VideoJobSpec
from functions.adapters.firestore.interest import InterestRecord, interest_id
from tests.integration.test_api_surface import seed_variants

PENGUIN = {"soul_id": "nova", "cue": "penguin", "user_id": "user123"}
START = utcnow() - timedelta(hours=1)


@pytest.fixture(scope="module")
def db(emulator_stack):
    return firestore.Client(project=os.environ["GCS_PROJECT_ID"])


def image_job(n: int, status: JobStatus = JobStatus.QUEUED, *, gpu: float | None = None,
              lane: JobLane = JobLane.INTERACTIVE, minute: int | None = None) -> JobDoc:
    pk = f"{n:032x}"
    spec = ImageJobSpec(soul_id="nova", pk=pk, variant_index=0, variant_id=f"01J{n:023d}", cue="penguin",
                        prompt="nova, penguin", width=64, height=64, steps=2, guidance=5.0, seed=n,
                        style_fingerprint="f")
    created = START + timedelta(minutes=n if minute is None else minute)
    done = status == JobStatus.SUCCEEDED
    return JobDoc(
        job_id=f"img-{pk}-0", type=JobType.IMAGE, status=status, request=spec, lane=lane, created_at=created,
        tenant="default", tenants=["default"],
        updated_at=created, started_at=created if done else None, finished_at=created if done else None,
        result=ImageResult(variant_id=spec.variant_id, pk=pk, object=names.image_object("nova", pk, spec.variant_id),
                           width=64, height=64, seed=n, bytes=10, render_seconds=gpu or 0.0,
                           created_at=created) if done else None,
        metrics=JobMetrics(gpu_seconds=gpu, model="sdxl-tiny", device="cpu", batch_size=2) if gpu is not None else None,
    )


def video_job(gpu: float) -> JobDoc:
    spec = VideoJobSpec(variant_id="01J" + "9" * 23, source_object="images/x.png", num_frames=8, fps=8, seed=1)
    return JobDoc(job_id="vid-1", type=JobType.VIDEO, status=JobStatus.SUCCEEDED, request=spec, created_at=START,
                  updated_at=START, started_at=START, finished_at=START,
                  metrics=JobMetrics(gpu_seconds=gpu, model="svd-tiny", device="cpu"))


def save(db, *jobs: JobDoc) -> None:
    """Jobs as the runner leaves them: the document, its creator's interest marker (what JobStore.create
    writes), and (finished with metrics) its share of the usage rollups (what gpu_runner/adapters/jobstore.py
    finish adds; tests/integration/test_bounded_storage.py runs that)."""
    for job in jobs:
        ref = db.collection(names.JOBS).document(job.job_id)
        ref.set(firestore_dict(job))
        if job.tenant is not None:
            ref.collection(names.INTEREST).document(interest_id(job.tenant, None)).set(
                InterestRecord(job.tenant).document(job, job.created_at))
        if job.metrics is not None:
            batch = Db(db).batch()
            rollups.add_job(batch, tenant=job.tenant, job_type=str(job.type),
                            succeeded=job.status == JobStatus.SUCCEEDED, gpu_seconds=job.metrics.gpu_seconds,
                            finished_at=job.finished_at or job.updated_at, writer="runner-test")
            batch.commit()


# --- GET /tasks/{id}: metrics -------------------------------------------------------------------------------------


def test_a_task_shows_the_gpu_seconds_the_runner_measured(api, db):
    save(db, image_job(1, JobStatus.SUCCEEDED, gpu=1.25), image_job(2))
    done = api.get(f"/tasks/{image_job(1).job_id}").json
    assert done["metrics"] == {"gpu_seconds": 1.25, "model": "sdxl-tiny", "device": "cpu", "batch_size": 2,
                               "safety_model": None, "safety_seconds": 0.0}
    assert done["queue_position"] is None
    assert api.get(f"/tasks/{image_job(2).job_id}").json["metrics"] is None
    listed = {item["task_id"]: item for item in api.get("/tasks").json["items"]}
    assert listed[image_job(1).job_id]["metrics"]["gpu_seconds"] == 1.25


# --- /tasks/stats/summary: device time spent and saved ------------------------------------------------------------


def test_stats_sum_gpu_seconds_and_value_dedup_hits_at_the_mean(api, db):
    save(db, image_job(1, JobStatus.SUCCEEDED, gpu=2.0), image_job(2, JobStatus.SUCCEEDED, gpu=4.0),
         image_job(3, JobStatus.FAILED, gpu=0.5), video_job(10.0))
    empty = api.get("/tasks/stats/summary").json["gpu"]
    assert empty["dedup_hits"] == 0 and empty["gpu_seconds_saved_by_dedup"] == 0.0
    # A render is queued for the penguin; once its variant exists, two other users get it without a render.
    queued = api.get("/image", query_string=PENGUIN)
    assert queued.status_code == 202
    seed_variants(db, 1, pk=queued.json["pk_id"])
    for user in ("u-a", "u-b"):
        hit = api.get("/image", query_string={**PENGUIN, "user_id": user})
        assert hit.json["status"] == "ready", hit.json
    gpu = api.get("/tasks/stats/summary").json["gpu"]
    assert gpu == {
        "total_gpu_seconds": 16.5, "image_gpu_seconds": 6.5, "rendered_images": 2, "dedup_hits": 2,
        "gpu_seconds_per_image_job": 3.0, "gpu_seconds_per_delivered_image": 1.625,
        "gpu_seconds_saved_by_dedup": 6.0,
    }


def test_gpu_stats_before_any_measurement():
    stats = gpu_stats(total=0.0, image_total=0.0, rendered=0, mean_per_image=None, hits=3)
    assert stats.gpu_seconds_per_image_job is None and stats.gpu_seconds_saved_by_dedup is None
    assert stats.gpu_seconds_per_delivered_image == 0.0
    assert gpu_stats(total=0, image_total=0, rendered=0, mean_per_image=None, hits=0).gpu_seconds_per_delivered_image \
        is None


def test_the_sharded_counter_loses_no_concurrent_increment(db, clean_firestore):
    counter = ShardedCounter(Db(db), "test_counter", shards=4)
    with ThreadPoolExecutor(max_workers=8) as pool:
        list(pool.map(lambda _: counter.increment(), range(40)))
    counter.increment(by=2)
    assert counter.total() == 42
    shards = db.collection(names.COUNTERS).document("test_counter").collection(names.COUNTER_SHARDS).stream()
    assert 1 < len(list(shards)) <= 4  # spread over the shards, never more than configured
    assert ShardedCounter(Db(db), "never_counted").total() == 0
    with pytest.raises(ValueError, match="shard"):
        ShardedCounter(Db(db), "x", shards=0)


# --- GET /tasks/{id}: queue position ------------------------------------------------------------------------------


def test_a_queued_task_knows_its_place_in_its_lane(api, db):
    save(
        db,
        image_job(1), image_job(2), image_job(3),  # queued, interactive, in creation order
        image_job(4, lane=JobLane.BACKGROUND, minute=0),  # earlier, but another lane
        image_job(5, JobStatus.RUNNING, minute=0), image_job(6, JobStatus.SUCCEEDED, gpu=1.0, minute=0),
    )
    positions = [api.get(f"/tasks/{image_job(n).job_id}").json["queue_position"] for n in (1, 2, 3, 4)]
    assert positions == [0, 1, 2, 0]
    assert api.get(f"/tasks/{image_job(5).job_id}").json["queue_position"] is None
    assert api.get(f"/tasks/{image_job(6).job_id}").json["queue_position"] is None
    # Cancel the first: everyone behind it moves up.
    assert api.delete(f"/tasks/{image_job(1).job_id}").status_code == 200
    assert api.get(f"/tasks/{image_job(3).job_id}").json["queue_position"] == 1


def test_a_days_dedup_saving_stays_as_written_when_the_mean_moves_later(db, clean_firestore):
    """It was valued at read time at the deployment's current mean: a past day's figure of one tenant moved
    whenever other tenants rendered (0.974 -> 0.501 with its hits unchanged)."""
    from functions.services.usage import usage_report

    gateway = Db(db)
    totals = db.collection(rollups.TOTALS).document("0")
    totals.set({"gpu_seconds": 2.0, "image_gpu_seconds": 2.0, "rendered_images": 1,
                "rendered_gpu_seconds": 2.0})  # as the runner writes it: a hit is worth 2 GPU-seconds now
    buffer = rollups.DedupBuffer(gateway, "functions-test", flush_s=3600)
    for _ in range(3):
        buffer.add("acme", utcnow())
    buffer.flush()
    totals.set({"gpu_seconds": 100.0, "image_gpu_seconds": 100.0, "rendered_images": 10,
                "rendered_gpu_seconds": 100.0})  # others rendered: the mean is 10 now
    today = utcnow().date()
    report = usage_report("acme", rollups.days(gateway, "acme", today, today), 10.0)
    assert report.days[0].dedup_hits == 3 and report.days[0].gpu_seconds_saved_by_dedup == 6.0
    # hits recorded before savings were kept are valued at the mean of the day they are read
    day = rollups.days(gateway, "acme", today, today)[today.isoformat()]
    assert usage_report("acme", {"d": {**day, "dedup_hits": 4.0}}, 10.0).days[0].gpu_seconds_saved_by_dedup == 16.0
    assert usage_report("acme", {"d": {**day, "dedup_hits_valued": 0.0, "dedup_gpu_seconds_saved": 0.0}},
                        None).days[0].gpu_seconds_saved_by_dedup is None
