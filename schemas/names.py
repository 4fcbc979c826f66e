"""Names that both deployables and the local stand-ins agree on: Firestore collections, Pub/Sub topics and
subscriptions, GCS object paths, CloudEvent types. Changing one is a contract change."""

from __future__ import annotations

# Firestore collections.
PROMPTS = "prompts"
VARIANTS = "variants"
USERS = "users"
SEEN = "seen"  # users/{user_id}/seen/{variant_id}
SEEN_BY_PK = "seen_by_pk"  # users/{user_id}/seen_by_pk/{pk}: variant_ids of that key the user saw (one read)
INTEREST = "interest"  # jobs/{job_id}/interest/{tenant|user digest}: who waits on a job (written by joiners)
JOBS = "jobs"
STYLES = "styles"
IDEMPOTENCY = "idempotency"
RUNNER_STATS = "runner_stats"
TENANTS = "tenants"  # tenants/{tenant}/...: per-tenant counters (quotas)
COUNTERS = "counters"  # counters/{name}/shards/{n}: sharded counters, summed on read
COUNTER_SHARDS = "shards"
COUNTER_DEDUP_HITS = "image_dedup_hits"  # image requests answered with an existing variant
JOB_HEADS = "job_heads"  # job_heads/{first job id}: which retry of that work is current, which retries failed
WEBHOOKS = "webhooks"  # jobs/{job_id}/webhooks/{webhook_id}: one requester's webhook
WARM_POOL = "warm_pool"  # warm_pool/{pk} (+ /askers/{user}, /prerenders/{variant_index}): functions/services/warm_pool.py
LEASES = "leases"  # leases/{name}: who runs a deployment-wide pass now (leases/reconciler), and its scan cursors
IDENTITIES = "identities"  # identities/{soul_id}: reference images and LoRA (schemas/identity.py)
WEBHOOK_SLOTS = "webhook_slots"  # jobs/{job_id}/webhook_slots/{tenant}~{n}: the cap on a tenant's targets per job
DELIVERIES = "deliveries"  # jobs/{job_id}/webhooks/{webhook_id}/deliveries/{key}: attempts of one event

# Pub/Sub topics.
TOPIC_JOBS = "soul-jobs"  # the interactive lane: a user is waiting
TOPIC_JOBS_BACKGROUND = "soul-jobs-background"  # the background lane: pre-renders, bulk work
TOPIC_JOBS_DEAD_LETTER = "soul-jobs-dead-letter"
TOPIC_EVENTS = "soul-events"
TOPIC_REQUESTS = "soul-requests"
TOPIC_WEBHOOK_RETRIES = "soul-webhook-retries"  # a webhook target's next attempt, published by the webhooks function

# Pub/Sub subscriptions.
SUB_RUNNER = "soul-jobs-runner"
SUB_RUNNER_BACKGROUND = "soul-jobs-background-runner"
SUB_EVENTS_WEBHOOKS = "soul-events-webhooks"  # push subscription to the `webhooks` function
SUB_JOBS_DEAD_LETTER = "soul-jobs-dead-letter-sub"
SUB_EVENTS = "soul-events-sub"
SUB_REQUESTS_PUSH = "soul-requests-ingest"
SUB_WEBHOOK_RETRIES = "soul-webhook-retries-push"  # push subscription to the `webhooks` function (its retries)

# Delivery policy of the runner's subscription.
MAX_DELIVERY_ATTEMPTS = 5

# CloudEvent types published on soul-events.
EVENT_SOURCE_RUNNER = "//soul/gpu_runner"
EVENT_SOURCE_FUNCTIONS = "//soul/functions"
EVENT_JOB_SUCCEEDED = "soul.job.succeeded"
EVENT_JOB_FAILED = "soul.job.failed"
EVENT_JOB_CANCELED = "soul.job.canceled"
EVENT_JOB_STARTED = "soul.job.started"  # data: schemas.push.JobStarted
EVENT_JOB_PROGRESS = "soul.job.progress"  # data: schemas.push.JobProgress (throttled)
EVENT_REQUEST_ACCEPTED = "soul.request.accepted"
EVENT_REQUEST_REJECTED = "soul.request.rejected"


def image_object(soul_id: str, pk: str, variant_id: str) -> str:
    return f"images/{soul_id}/{pk}/{variant_id}.png"


def blurred_image_object(soul_id: str, pk: str, variant_id: str) -> str:
    """The blurred rendition of a flagged image (content policy `blur`), beside the original."""
    return f"images/{soul_id}/{pk}/{variant_id}.blurred.png"


def preview_object(job_id: str, step: int) -> str:
    """A preview of a job's image while it denoises (a TTL/lifecycle rule may delete these after a day)."""
    return f"previews/{job_id}/{step}.webp"


def video_object(variant_id: str, job_id: str, fmt: str) -> str:
    return f"videos/{variant_id}/{job_id}.{fmt}"


def reference_object(soul_id: str, ref_id: str) -> str:
    return f"references/{soul_id}/{ref_id}.png"


def lora_object(soul_id: str, version: str) -> str:
    return f"loras/{soul_id}/{version}.safetensors"
