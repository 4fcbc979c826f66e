"""Issue 17 on the real api function against the emulators: what one request reads and writes, counted through the
gateway's ledger (soul_common/firestore.py `Ledger.tally`), so a regression that puts a write back on a hot
document or makes reads grow with the data fails here, not only in bench/scale.py.

Rules: a join never writes the job document (so a runner's conditional write is never lost to a joiner); a user
asking again writes nothing; a dedup hit reads at most 4 documents and writes none, whatever the number of
variants and seen entries; mark-seen and `GET /tasks/{id}` read a fixed number of documents; `prompts/{pk}` is
written by the job's creator only; the rate limiter and the dedup-hit counter stay off the hit's path."""

from __future__ import annotations

import json
import os
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta

import pytest
from google.cloud import firestore

from functions.adapters.firestore.counters import BufferedCounter, ShardedCounter
from gpu_runner.adapters.jobstore import JobStore as RunnerJobStore
from schemas import names
from soul_common.firestore import Db, doc
from tests.integration.test_security import H_ACME, H_GLOBEX, PENGUIN, make_api, seed_variant

RATE = "tenants/*/rate"
# prompts/{pk} + the user's seen_by_pk/{pk} (one round trip) and the chosen variant; the soul's style and identity
# are kept per instance and read again in the background (functions/services/styles.py `current`, identity.py
# `current`): 5 reads without that, 4 before identities (issue 20).
HIT_READS = 3


@pytest.fixture(scope="module")
def db(emulator_stack):
    return firestore.Client(project=os.environ["GCS_PROJECT_ID"])


@pytest.fixture
def app(emulator_stack, monkeypatch, tmp_path, clean_firestore, drain_jobs):
    client, api = make_api(monkeypatch, tmp_path)
    yield client, api.services.db.ledger
    api.services.usage._hits.flush()  # nothing of this test's is left to land in the next test's Firestore


def costs(ledger, call):
    with ledger.tally() as tally:
        response = call()
    return response, tally


def writes_to(tally, collection: str) -> int:
    return tally.by_collection[("write", collection)]


def reads_beside_rate(tally) -> int:
    """A request's reads without its rate-token lease (amortized over many requests: see the last test)."""
    return tally.reads - tally.by_collection[("read", RATE)]


def test_joins_never_write_the_job_document(app, db):
    client, ledger = app
    task_id = client.get("/image", query_string=PENGUIN, headers=H_ACME).json["task_id"]
    before = db.collection(names.JOBS).document(task_id).get()

    def join(i: int):
        headers = H_GLOBEX if i % 3 == 0 else H_ACME
        return costs(ledger, lambda: client.get("/image", query_string={**PENGUIN, "user_id": f"u-{i}"},
                                                 headers=headers))

    with ThreadPoolExecutor(max_workers=8) as pool:
        answers = list(pool.map(join, range(24)))
    assert {r.json["task_id"] for r, _ in answers} == {task_id}
    assert sum(writes_to(t, names.JOBS) for _, t in answers) == 0
    after = db.collection(names.JOBS).document(task_id).get()
    assert after.update_time == before.update_time  # the document the runner writes conditionally is untouched
    stored = after.to_dict()
    assert stored["tenants"] == ["acme"] and stored["requester_keys"] == ["acme~user123"]  # bounded: the creator
    interest = list(db.collection(names.JOBS).document(task_id).collection(names.INTEREST).stream())
    assert len(interest) == 2 + 24 + 1  # acme's and globex's markers, a record per user, the creator's user
    # Each joiner shows its own users' tasks, never the job's other tenant's.
    listed = client.get("/tasks", query_string={"user_id": "u-3"}, headers=H_GLOBEX).json["items"]
    assert [t["task_id"] for t in listed] == [task_id]
    assert client.get("/tasks", query_string={"user_id": "u-3"}, headers=H_ACME).json["items"] == []
    assert client.get(f"/tasks/{task_id}", headers=H_GLOBEX).json["user_id"] in {f"u-{i}" for i in range(0, 24, 3)}


def test_a_runners_conditional_write_is_never_lost_to_joiners(app, db):
    client, _ = app
    task_id = client.get("/image", query_string=PENGUIN, headers=H_ACME).json["task_id"]
    runner_db = Db(db)
    runner = RunnerJobStore(runner_db, "runner-a", timedelta(seconds=30))
    runner.claim(task_id, "image")
    ref = doc(names.JOBS, task_id)
    read = runner_db.get(ref)  # the runner read the job ...
    for i in range(10):  # ... users pile in ...
        assert client.get("/image", query_string={**PENGUIN, "user_id": f"j-{i}"}, headers=H_ACME).status_code == 202
    assert runner_db.update(ref, {"progress": 0.5}, if_unchanged=read)  # ... and its write still lands
    runner.progress(task_id, 0.6, "denoising", 1.0)
    assert runner_db.ledger.contention["jobs"] == 0


def test_a_user_asking_again_writes_nothing(app):
    client, ledger = app
    client.get("/image", query_string=PENGUIN, headers=H_ACME)
    client.get("/image", query_string={**PENGUIN, "user_id": "second"}, headers=H_ACME)
    for user in ("user123", "second"):  # the creator, then a joiner
        response, tally = costs(ledger, lambda: client.get("/image", query_string={**PENGUIN, "user_id": user},
                                                             headers=H_ACME))
        assert response.status_code == 202
        assert tally.writes == 0 and tally.contended == 0, tally.by_collection


@pytest.mark.parametrize("variants", [1, 12])
def test_a_hit_reads_a_fixed_number_of_documents_and_writes_none(app, db, variants):
    client, ledger = app
    pk = client.get("/image", query_string=PENGUIN, headers=H_ACME).json["pk_id"]
    ids = [seed_variant(db, pk, index) for index in range(variants)]
    for variant_id in ids[:-1]:  # this user saw all but the newest
        assert client.post("/image/mark-seen", query_string={"variant_id": variant_id, "user_id": "u1"},
                           headers=H_ACME).status_code == 200
    for user, expected in (("u1", ids[-1]), ("fresh", ids[0])):
        client.get("/image", query_string={**PENGUIN, "user_id": user}, headers=H_ACME)  # rate lease warmed
        response, tally = costs(ledger, lambda: client.get("/image", query_string={**PENGUIN, "user_id": user},
                                                             headers=H_ACME))
        assert response.status_code == 200 and response.json["variant"]["variant_id"] == expected
        assert reads_beside_rate(tally) <= HIT_READS, tally.by_collection
        own = tally.writes - writes_to(tally, RATE)
        assert own == 0, tally.by_collection  # no counter, no rollup, no prompt write: the flushers' threads do them


def test_mark_seen_and_task_reads_do_not_grow(app, db):
    client, ledger = app
    queued = client.get("/image", query_string=PENGUIN, headers=H_ACME).json
    client.get("/image", query_string={**PENGUIN, "user_id": "joiner"}, headers=H_GLOBEX)
    ids = [seed_variant(db, queued["pk_id"], index) for index in range(8)]
    reads = []
    for variant_id in ids:
        response, tally = costs(ledger, lambda: client.post(
            "/image/mark-seen", query_string={"variant_id": variant_id, "user_id": "u"}, headers=H_ACME))
        assert response.status_code == 200
        reads.append(reads_beside_rate(tally))
        # the seen entry and the user's own per-key index (plus, at times, a lease of rate tokens: below)
        assert tally.writes - writes_to(tally, RATE) == 2, tally.by_collection
    assert len(set(reads)) == 1, reads
    for headers in (H_ACME, H_GLOBEX):
        _, first = costs(ledger, lambda: client.get(f"/tasks/{queued['task_id']}", headers=headers))
        _, again = costs(ledger, lambda: client.get(f"/tasks/{queued['task_id']}", headers=headers))
        assert reads_beside_rate(first) <= 4 and reads_beside_rate(again) <= 2  # the interest facts are cached
        assert first.writes - writes_to(first, RATE) == 0 and again.writes - writes_to(again, RATE) == 0


def test_the_prompt_index_is_written_by_the_creator_only(app):
    client, ledger = app
    _, created = costs(ledger, lambda: client.get("/image", query_string=PENGUIN, headers=H_ACME))
    assert writes_to(created, names.PROMPTS) == 1
    for i in range(5):
        _, joined = costs(ledger, lambda: client.get("/image", query_string={**PENGUIN, "user_id": f"p-{i}"},
                                                       headers=H_ACME))
        assert writes_to(joined, names.PROMPTS) == 0 and joined.contended == 0


def test_dedup_hits_make_no_write_on_the_request_and_one_flush(app, db):
    client, ledger = app
    pk = client.get("/image", query_string=PENGUIN, headers=H_ACME).json["pk_id"]
    seed_variant(db, pk)
    for i in range(10):
        response, tally = costs(ledger, lambda: client.get("/image", query_string={**PENGUIN, "user_id": f"h-{i}"},
                                                             headers=H_ACME))
        assert response.status_code == 200
        assert writes_to(tally, names.COUNTERS + "/*/" + names.COUNTER_SHARDS) == 0
    # The counter itself, on the emulator: hits add up in memory, one flush writes them in one increment.
    counter = BufferedCounter(ShardedCounter(Db(db), "test_buffered"), flush_s=3600)
    for _ in range(25):
        counter.increment()
    assert counter.total() == 25  # counted before any write
    shards = "counters/*/shards"
    before = counter._counter._db.ledger.writes[shards]
    counter.flush()
    assert counter._counter._db.ledger.writes[shards] - before == 1
    assert ShardedCounter(Db(db), "test_buffered").total() == 25


def test_the_rate_limiter_leases_tokens_instead_of_writing_per_request(app, db):
    client, ledger = app
    pk = client.get("/image", query_string=PENGUIN, headers=H_ACME).json["pk_id"]
    seed_variant(db, pk)
    synchronous = 0
    for i in range(40):
        response, tally = costs(ledger, lambda: client.get("/image", query_string={**PENGUIN, "user_id": f"r-{i}"},
                                                             headers=H_ACME))
        assert response.status_code == 200
        synchronous += writes_to(tally, RATE)
    # Leases double while the instance runs dry and are topped up in the background: a handful of waits at the
    # start, then none (a write per request would be 40).
    assert synchronous <= 8, synchronous


def test_creating_a_job_reads_the_same_whatever_the_counter_shards(emulator_stack, monkeypatch, tmp_path,
                                                                   clean_firestore, drain_jobs):
    """The jobs-per-hour quota and the GPU-seconds reservations each write one shard and sum theirs with one
    aggregation: a new job's reads do not grow with `SOUL_QUOTA_JOB_COUNTER_SHARDS` (they were 16 document reads
    with 16 shards), and the sums are exact."""
    reads = {}
    for shards in (1, 16, 64):
        monkeypatch.setenv("SOUL_QUOTA_JOB_COUNTER_SHARDS", str(shards))
        client, api = make_api(monkeypatch, tmp_path)
        ledger = api.services.db.ledger
        client.get("/image", query_string={**PENGUIN, "cue": f"warm {shards}"}, headers=H_ACME)  # rate lease
        counts = []
        for i in range(3):
            response, tally = costs(ledger, lambda: client.get(
                "/image", query_string={**PENGUIN, "cue": f"new cue {shards} {i}"}, headers=H_ACME))
            assert response.status_code == 202, response.json
            counts.append(tally.by_collection[("read", "tenants/*/counters")])
        reads[shards] = max(counts)
        api.services.usage._hits.flush()
    assert set(reads.values()) == {2}, reads  # two aggregations (jobs this hour, GPU reserved), a read each
    hour = [d for d in api.services.db._client.collection("tenants").document("acme").collection("counters").stream()
            if d.id.startswith("jobs-")]
    assert sum(d.to_dict()["n"] for d in hour) == 3 * 4  # every creation counted once


def test_the_backfill_gives_jobs_from_before_interest_documents_their_records_and_expiry(app, db):
    """Jobs written before issue 17 name their askers on the job document only; listings read interest records,
    so those jobs were invisible in `GET /tasks` until `python -m functions.backfill` ran (once, resumable)."""
    from functions.adapters.firestore import backfill
    from schemas._base import firestore_dict
    from schemas.jobs import JobStatus
    from tests.integration.test_gpu_usage import image_job

    client, _ = app
    old = [image_job(n, JobStatus.SUCCEEDED if n % 2 else JobStatus.QUEUED).model_copy(update={
        "tenant": "acme", "tenants": ["acme", "globex"], "requesters": {"acme": [f"u{n}"], "globex": ["g"]},
        "requester_keys": [f"acme~u{n}", "globex~g"]}) for n in range(1, 6)]
    for job in old:  # as the functions wrote them then: no interest records, no expiry on the finished ones
        db.collection(names.JOBS).document(job.job_id).set(firestore_dict(job))

    def listed(headers, **query):
        return {item["task_id"] for item in client.get("/tasks", query_string=query, headers=headers).json["items"]}

    assert listed(H_ACME) == set() and listed(H_GLOBEX, user_id="g") == set()
    pages = []
    done = backfill.run(Db(db), page_size=2, report=lambda p: pages.append(p.cursor))
    assert done.jobs == 5 and done.invalid == 0 and len(pages) == 3
    assert done.interest_created == 5 * 4  # two tenant markers and two users' records per job
    assert done.expiry_set == 3  # the finished ones
    ids = {job.job_id for job in old}
    assert listed(H_ACME) == ids and listed(H_GLOBEX) == ids and listed(H_GLOBEX, user_id="g") == ids
    assert listed(H_ACME, user_id="u3") == {old[2].job_id} and listed(H_ACME, user_id="g") == set()
    finished = db.collection(names.JOBS).document(old[0].job_id).get().to_dict()
    assert finished["expires_at"] == finished["finished_at"] + timedelta(days=30)
    assert "expires_at" not in db.collection(names.JOBS).document(old[1].job_id).get().to_dict()  # still queued

    again = backfill.run(Db(db), page_size=2)
    assert (again.jobs, again.interest_created, again.expiry_set) == (5, 0, 0)  # idempotent
    resumed = backfill.run(Db(db), page_size=2, after=old[2].job_id)
    assert resumed.jobs == 2
    for headers, user in ((H_ACME, None), (H_ACME, "u3"), (H_GLOBEX, "g")):  # filtered listings, by tenant or user
        mine = {job.job_id for job in old if user in (None, "g") or job.job_id == old[2].job_id}
        by = {"user_id": user} if user else {}
        assert listed(headers, **by, type="image") == mine and listed(headers, **by, type="video") == set()
        assert listed(headers, **by, soul_id="nova") == mine and listed(headers, **by, soul_id="ember") == set()
        assert listed(headers, **by, type="image", soul_id="nova") == mine


def test_the_backfill_command_line_reports_its_cursor_and_refuses_a_bad_page_size(app, db, capsys):
    from functions import backfill
    from schemas._base import firestore_dict
    from schemas.jobs import JobStatus
    from tests.integration.test_gpu_usage import image_job

    with pytest.raises(SystemExit) as refused:
        backfill.main(["--page-size", "0"])
    assert refused.value.code == 2 and "--page-size must be between 1 and 1000" in capsys.readouterr().err
    old = [image_job(n, JobStatus.SUCCEEDED) for n in range(1, 4)]
    for job in old:
        db.collection(names.JOBS).document(job.job_id).set(firestore_dict(job))
    assert backfill.main(["--page-size", "2", "--dry-run"]) == 0
    out, err = capsys.readouterr()
    dry = json.loads(out)
    assert dry["dry_run"] is True and dry["done"]["jobs"] == 3 and dry["done"]["expiry_set"] == 3
    assert [json.loads(line)["progress"]["cursor"] for line in err.splitlines()] == [old[1].job_id, old[2].job_id]
    assert "expires_at" not in db.collection(names.JOBS).document(old[0].job_id).get().to_dict()  # nothing written
    assert backfill.main(["--after", old[0].job_id]) == 0
    done = json.loads(capsys.readouterr().out)["done"]
    assert done["jobs"] == 2 and done["expiry_set"] == 2 and done["interest_created"] == 2
    assert "expires_at" not in db.collection(names.JOBS).document(old[0].job_id).get().to_dict()  # before --after
