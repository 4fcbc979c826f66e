"""The chaos suite (issue 9): two supervised runner processes, 24 jobs (20 over HTTP, 4 through ingest), and at
once: SIGKILLs at every stage of a job (the runner's failpoints: before the claim, mid-render, after the upload,
after the variant write, after the finish, after the event), both runners SIGKILLed together, a runner frozen
with SIGSTOP past its lease, duplicated job messages, poison messages, and a Pub/Sub emulator crash mid-run
that loses its whole backlog (the reconciler must complete every job).

Asserted: every job succeeded, once (one object, one variant each); no finished job whose status, stage and
progress disagree (a stale write from a frozen runner); one completion event per job after dedup on the
CloudEvent id, and only "succeeded" ones; the poison on the dead-letter topic; no runner process left.

The seed is printed; `SOUL_CHAOS_SEED=<seed>` replays the same choices (which jobs get duplicates, which runner is
frozen, every runner start's failpoint seed); timings on a busy machine still vary."""

from __future__ import annotations

import base64
import json
import os
import random
import signal
import sys
import time
from collections import Counter, defaultdict
from datetime import timedelta

import pytest
from google.cloud import firestore, pubsub_v1

from schemas import names
from schemas.jobs import JobRequested
from soul_common.events import EventPublisher
from soul_common.firestore import Db
from soul_common.reconciler import ReconcilePolicy, Reconciler
from tests.fleet import Fleet, jobs, objects_per_variant, pid_alive
from tests.support import pull_all

pytestmark = pytest.mark.fault

STAGES = ("before_claim", "mid_render", "after_upload", "after_variant_write", "after_finish", "after_event")
# Per hit; mid_render is hit at every denoising step (12 here). Each runner start after the 3rd runs without
# failpoints, so kills are bounded (a job cannot be killed more often than the reconciler's attempt bound).
FAILPOINTS = "before_claim:0.08,mid_render:0.01,after_upload:0.1,after_variant_write:0.1,after_finish:0.1,after_event:0.1"
KILLING_STARTS = 3
HTTP_CUES = ("penguin", "owl", "storm", "rain", "lighthouse", "harbor", "forest", "desert", "comet", "lantern",
             "garden", "bridge", "castle", "river", "meadow", "glacier", "market", "library", "train", "violin")
INGEST_CUES = ("kite", "piano", "volcano", "canyon")
POISON = (b"not json", b'{"schema_version": 1, "job_id": "img-ffffffffffffffffffffffffffffffff-0", "type": "image"}',
          b'{"schema_version": 9, "job_id": "x", "type": "image"}')
TIMEOUT_S = 240
# The scheduled `reconcile` function's pass, run by the test loop every SCHEDULE_S as Cloud Scheduler would call it.
# Its backlog window is short here: the Pub/Sub crash loses messages no runner had taken yet.
SCHEDULE_S = 2.0
SCHEDULED_POLICY = ReconcilePolicy(unpublished_after=timedelta(seconds=2), requeue_queued_after=timedelta(seconds=8),
                                   undelivered_after=timedelta(seconds=60))


def _ingest(cue: str) -> str:
    """A request through the `ingest` function's code, as a soul-requests message would bring it."""
    from functions.services.ingest import handle_message
    from functions.main import _get_api

    body = json.dumps({"soul_id": "mira", "cue": cue, "user_id": "chaos"}).encode()
    message = {"data": base64.b64encode(body).decode(), "attributes": {"type": "image"}}
    outcome = handle_message(_get_api().services, message, f"chaos-{cue}")
    assert outcome.accepted, outcome
    return outcome.answer.task_id


class Chaos:
    def __init__(self, seed: int, fleet: Fleet, emulator_stack, subscriber):
        self.rng = random.Random(seed)
        self.seed = seed
        self.fleet = fleet
        self.emulators = emulator_stack
        self.subscriber = subscriber
        self.publisher = pubsub_v1.PublisherClient()
        self.project = os.environ["GCS_PROJECT_ID"]
        self.events: list = []
        self.figures: Counter = Counter()
        self.last_fault_at = time.monotonic()

    def runner_env(self, name: str):
        def env(restarts: int) -> dict:
            seed = f"{self.seed}{sum(map(ord, name))}{restarts}"
            spec = FAILPOINTS if restarts < KILLING_STARTS else ""
            return {**self.fleet.env, "SOUL_RUNNER_ID": name, "SOUL_FAILPOINTS": spec,
                    "SOUL_FAILPOINT_SEED": seed}
        return env

    def collect_events(self, rounds: int = 1) -> None:
        self.events.extend(pull_all(self.subscriber, names.SUB_EVENTS, rounds=rounds))

    def duplicate(self, task_ids: list[str], count: int) -> None:
        topic = self.publisher.topic_path(self.project, names.TOPIC_JOBS)
        for job_id in self.rng.sample(task_ids, count):
            data = JobRequested(job_id=job_id, type="image").model_dump_json().encode()
            self.publisher.publish(topic, data, job_id=job_id, type="image", schema_version="1").result(30)
        self.figures["duplicates"] += count
        self.last_fault_at = time.monotonic()

    def poison(self) -> None:
        topic = self.publisher.topic_path(self.project, names.TOPIC_JOBS)
        for data in POISON:
            self.publisher.publish(topic, data, chaos="poison").result(30)
        self.figures["poison"] += len(POISON)

    def signal_runners(self, sig: signal.Signals, names_: list[str]) -> None:
        for name in names_:
            if (pid := self.fleet.pid(name)) is not None:
                os.killpg(pid, sig)

    def freeze_past_lease(self, db, lease_s: float) -> bool:
        """SIGSTOP the runner of a job that is rendering, for longer than its lease; False if none renders now."""
        rendering = [j["lease_owner"] for j in jobs(db).values() if j["status"] == "running" and j["stage"] == "denoising"]
        if not rendering:
            return False
        owner = self.rng.choice(sorted(rendering))
        self.signal_runners(signal.SIGSTOP, [owner])
        time.sleep(lease_s + 3)
        self.signal_runners(signal.SIGCONT, [owner])
        self.figures["sigstop_past_lease"] += 1
        self.last_fault_at = time.monotonic()
        return True

    def kill_all(self, runner_names: list[str]) -> None:
        self.signal_runners(signal.SIGKILL, runner_names)
        self.figures["sigkill_all_runners"] += 1
        self.last_fault_at = time.monotonic()

    def restart_pubsub(self, runner_names: list[str]) -> None:
        """Crash the Pub/Sub emulator: its whole backlog is lost. The runners are frozen meanwhile, so the events
        they publish are not lost with it (Pub/Sub itself never loses acked-for publishes; the emulator would)."""
        self.signal_runners(signal.SIGSTOP, runner_names)
        try:
            # Everything published before the freeze is collected: a publish acknowledged just before it may not be
            # pullable at once, and one empty `return_immediately` answer is not proof of an empty backlog.
            time.sleep(1.0)
            self.collect_events(rounds=4)
            self.emulators.restart_pubsub()
        finally:
            self.signal_runners(signal.SIGCONT, runner_names)
        self.figures["pubsub_restarts"] += 1
        self.last_fault_at = time.monotonic()


@pytest.fixture
def pubsub_reset_after(emulator_stack):
    """Killed runners leave unacked messages that would come back within the ack deadline, in a later test:
    crash Pub/Sub once more afterwards so the session's next tests start with empty subscriptions."""
    yield
    emulator_stack.restart_pubsub()


def test_chaos_nothing_lost_nothing_twice_nothing_stale(api, emulator_stack, subscriber, tmp_path_factory, capsys,
                                                        pubsub_reset_after):
    seed = int(os.environ.get("SOUL_CHAOS_SEED") or random.SystemRandom().randrange(2**31))
    with capsys.disabled():
        print(f"\nchaos seed {seed}: replay with SOUL_CHAOS_SEED={seed}", flush=True)
    db = firestore.Client(project=os.environ["GCS_PROJECT_ID"])
    fleet = Fleet(tmp_path_factory.mktemp("chaos"), tmp_path_factory.getbasetemp() / "models",
                  SOUL_TINY_MAX_STEPS="12")
    chaos = Chaos(seed, fleet, emulator_stack, subscriber)
    runners = ["runner-a", "runner-b"]
    started = time.monotonic()
    pids: set[int] = set()
    try:
        for name in runners:
            fleet.supervisor.add(name, [sys.executable, "-m", "gpu_runner", "--warm"], fleet.logs / f"{name}.log",
                                 marker="gpu_runner", env=chaos.runner_env(name))
        task_ids = [api.get("/image", query_string={"soul_id": "nova", "cue": cue, "user_id": "chaos"}).json[
            "task_id"] for cue in HTTP_CUES]
        task_ids += [_ingest(cue) for cue in INGEST_CUES]
        plan = ["duplicate", "freeze", "kill_all", "restart_pubsub", "poison", "duplicate"]
        scheduled = Reconciler(Db(db), EventPublisher(chaos.publisher, chaos.project), SCHEDULED_POLICY)
        last_scheduled = 0.0
        parked: list[bytes] = []  # the dead-letter topic's messages, collected as they arrive
        while True:
            fleet.supervisor.tick()
            if time.monotonic() - last_scheduled >= SCHEDULE_S:
                last_scheduled = time.monotonic()
                chaos.figures["scheduled_republished"] += len(scheduled.sweep().republished)
            pids.update(pid for name in runners if (pid := fleet.pid(name)))
            chaos.collect_events()
            states = jobs(db)
            finished = [t for t in task_ids if states[t]["status"] in ("succeeded", "failed", "canceled")]
            if plan:
                step = plan[0]
                if step == "duplicate" and finished:
                    chaos.duplicate(task_ids, 4)
                elif step == "freeze" and chaos.freeze_past_lease(db, lease_s=5):
                    pass
                elif step == "kill_all" and len(finished) >= 6:
                    chaos.kill_all(runners)
                elif step == "restart_pubsub" and len(finished) >= 10:
                    chaos.restart_pubsub(runners)
                elif step == "poison":
                    chaos.poison()
                else:
                    step = None
                if step is not None:
                    plan.pop(0)
            announced = {m.message.attributes.get("ce-id") for m in chaos.events}
            if "poison" not in plan:
                # A poison message naming a missing job needs a claim attempt (and may meet a killed runner and
                # its ack deadline) before it is parked: the run is over only once all of it is.
                parked += [m.message.data for m in pull_all(subscriber, names.SUB_JOBS_DEAD_LETTER, rounds=1)]
            poison_parked = all(p in parked for p in POISON)
            if not plan and len(finished) == len(task_ids) and announced >= set(task_ids) and poison_parked:
                break
            assert time.monotonic() - started < TIMEOUT_S, (
                f"seed {seed}: not done; plan left {plan}, "
                f"{Counter(states[t]['status'] for t in task_ids)}, events for {len(announced & set(task_ids))}, "
                f"parked {parked}")
            time.sleep(0.2)
        recovered_s = time.monotonic() - chaos.last_fault_at
    finally:
        pids.update(fleet.stop())
    final = jobs(db)
    log_text = fleet.log_text()
    kills = Counter({stage: log_text.count(f'"failpoint": "{stage}"') for stage in STAGES})
    chaos.figures.update({f"kill_{stage}": n for stage, n in kills.items()})

    # Every job succeeded, once: one object and one variant each.
    unsuccessful = {t: (final[t]["status"], final[t]["attempts"], final[t].get("republished"), final[t]["error"])
                    for t in task_ids if final[t]["status"] != "succeeded"}
    assert not unsuccessful, (seed, unsuccessful)
    variants = {final[t]["request"]["variant_id"] for t in task_ids}
    per_variant = objects_per_variant()
    assert {v: per_variant[v] for v in variants} == {v: 1 for v in variants}, seed
    assert len(list(db.collection(names.VARIANTS).stream())) == len(task_ids), seed
    # No stale write on a finished job.
    stale = {t: (final[t]["stage"], final[t]["progress"]) for t in task_ids
             if final[t]["stage"] != "succeeded" or final[t]["progress"] != 1.0}
    assert not stale, (seed, stale)
    # One completion event per job after dedup on the CloudEvent id, and only the success.
    by_id = defaultdict(set)
    for message in chaos.events:
        attributes = message.message.attributes
        if attributes.get("ce-source") == names.EVENT_SOURCE_RUNNER:
            by_id[attributes["ce-id"]].add(attributes["ce-type"])
    assert {t: by_id[t] for t in task_ids} == {t: {names.EVENT_JOB_SUCCEEDED} for t in task_ids}, seed
    # The poison is parked on the dead-letter topic (at least once: a runner killed after parking it parks it again).
    assert all(p in parked for p in POISON), (seed, parked)
    # No runner process left behind.
    assert not [pid for pid in pids if pid_alive(pid)], seed
    chaos.figures.update(jobs=len(task_ids), lost=0, duplicated=0, stale=0,
                         runner_restarts=log_text.count('"runner_ready"') - len(runners))
    with capsys.disabled():
        print(f"chaos seed {seed}: {dict(sorted(chaos.figures.items()))}; recovered {recovered_s:.0f} s after the "
              f"last fault; total {time.monotonic() - started:.0f} s", flush=True)
