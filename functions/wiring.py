"""Builds the functions' services from settings and clients, once per process: the one place that knows which
adapter each service gets. The Firestore gateway (`Db`) is made here, so every repository shares its deadline
and its ledger."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import timedelta
from functools import partial

import structlog
from google.api_core import exceptions as gexc

from functions.adapters.clients import Clients
from functions.adapters.firestore.counters import BufferedCounter, ShardedCounter
from functions.adapters.firestore.idempotency import IdempotencyRecords
from functions.adapters.firestore.jobs import JobStore
from functions.adapters.firestore.prompts import PromptStore
from functions.adapters.firestore.quotas import QuotaStore
from functions.adapters.firestore.styles import StyleStore
from functions.adapters.firestore.usage import UsageStore
from functions.adapters.firestore.warm_pool import WarmPoolStore
from functions.adapters.firestore.webhooks import WebhookStore
from functions.adapters.firestore.identities import IdentityStore
from functions.adapters.gcs import AssetStore, probe_bucket
from functions.adapters.pubsub import Publisher
from functions.adapters.signing import UrlSigner
from functions.core.estimates import EstimateDefaults
from functions.core.quota_policy import Quota
from functions.core.tenants import KeyRing, build_key_ring, check_webhook_secrets
from functions.core.uploads import UploadLimits
from functions.services.identity import IdentityService
from functions.services.idempotency import IdempotencyStore
from functions.services.content import ContentPolicies
from functions.services.images import ImageService
from functions.services.progress import ProgressHub, StreamCaps
from functions.services.quotas import QuotaService
from functions.services.styles import StyleService
from functions.services.tasks import TaskService
from functions.services.usage import GpuUsage
from functions.services.videos import VideoService
from functions.services.warm_pool import WarmPool
from functions.services.webhooks import WebhookRegistry
from functions.settings import FunctionsSettings
from schemas import names
from soul_common.firestore import Db

log = structlog.get_logger(__name__)


@dataclass(frozen=True)
class Services:
    settings: FunctionsSettings
    clients: Clients
    db: Db
    prompts: PromptStore
    jobs: JobStore
    webhook_store: WebhookStore
    publisher: Publisher
    signer: UrlSigner
    usage: GpuUsage
    styles: StyleService
    images: ImageService
    tasks: TaskService
    videos: VideoService
    idempotency: IdempotencyStore
    estimate_defaults: EstimateDefaults
    keys: KeyRing
    quotas: QuotaService
    webhooks: WebhookRegistry
    warm_pool: WarmPool
    progress: ProgressHub  # live progress: one shared watcher per followed job, stream caps
    identities: IdentityService
    content: ContentPolicies
    readiness: Mapping[str, Callable[[], None]]  # backend -> a cheap check that raises when it is unreachable


def build_services(settings: FunctionsSettings, clients: Clients, keys: KeyRing | None = None) -> Services:
    if keys is None:  # ConfigError: the deployable does not start
        keys = build_key_ring(settings.api_keys.get_secret_value(), settings.api_keys_file)
    unsigned = check_webhook_secrets(keys, settings.webhook_secret.get_secret_value())
    if unsigned and keys:
        log.warning("webhooks_refused_for_tenants_without_a_secret", tenants=unsigned)
    db = Db(clients.firestore, timeout_s=settings.backend_timeout_s)
    prompts, webhook_store = PromptStore(db), WebhookStore(db)
    jobs = JobStore(db, job_retention=timedelta(days=settings.job_retention_days))
    quotas = QuotaService(
        QuotaStore(db),
        jobs,
        Quota(
            requests_per_second=settings.quota_requests_per_second,
            burst=settings.quota_burst,
            jobs_per_hour=settings.quota_jobs_per_hour,
            gpu_seconds_per_day=settings.quota_gpu_seconds_per_day,
            variants_per_prompt_per_user_per_day=settings.quota_variants_per_prompt_per_user_per_day,
        ),
        keys,
        shards=settings.quota_shards,
        rate_lease_s=settings.quota_rate_lease_s,
        job_counter_shards=settings.quota_job_counter_shards,
        enabled=settings.quotas_enabled,
    )
    publisher = Publisher(clients.publisher, settings.project_id)
    signer = UrlSigner(
        clients.storage,
        settings.bucket,
        ttl=timedelta(seconds=settings.signed_url_ttl_s),
        key_file=settings.signing_key_file,
        service_account_email=settings.signing_service_account,
        endpoint=settings.signed_url_endpoint,
    )
    defaults = EstimateDefaults(
        image_seconds=settings.estimate_image_seconds,
        video_seconds_per_frame=settings.svd_estimated_seconds_per_frame,
        encode_seconds_per_frame=settings.estimate_encode_seconds_per_frame,
    )
    styles = StyleService(StyleStore(db), settings.style_clock_skew_s, cache_s=settings.look_cache_s)
    usage = GpuUsage(BufferedCounter(ShardedCounter(db, names.COUNTER_DEDUP_HITS)), UsageStore(db))
    content = ContentPolicies(keys, settings)
    tasks = TaskService(jobs, signer, publisher, settings.public_base_url, usage=usage, content=content,
                        job_retention=timedelta(days=settings.job_retention_days), webhooks=webhook_store)
    warm_pool = WarmPool(WarmPoolStore(db), jobs, prompts, settings)
    identities = IdentityService(
        IdentityStore(db), AssetStore(clients.storage, settings.bucket), styles, settings.model_tag,
        UploadLimits(reference_max_bytes=settings.reference_max_bytes,
                     reference_max_pixels=settings.reference_max_pixels, lora_max_bytes=settings.lora_max_bytes,
                     lora_max_rank=settings.lora_max_rank),
        cache_s=settings.look_cache_s,
    )
    return Services(
        settings=settings,
        clients=clients,
        db=db,
        prompts=prompts,
        jobs=jobs,
        webhook_store=webhook_store,
        publisher=publisher,
        signer=signer,
        usage=usage,
        styles=styles,
        images=ImageService(prompts, jobs, styles, publisher, signer, settings, defaults, quotas, warm_pool,
                            usage=usage, content=content, identities=identities),
        tasks=tasks,
        videos=VideoService(prompts, jobs, publisher, tasks, settings, defaults, quotas),
        idempotency=IdempotencyStore(IdempotencyRecords(db), timedelta(seconds=settings.idempotency_ttl_s)),
        estimate_defaults=defaults,
        keys=keys,
        quotas=quotas,
        webhooks=WebhookRegistry(webhook_store, jobs, publisher, settings, keys),
        warm_pool=warm_pool,
        progress=ProgressHub(tasks, poll_interval_s=settings.sse_poll_interval_s,
                             caps=StreamCaps(per_instance=settings.sse_max_streams_per_instance,
                                             per_tenant=settings.sse_max_streams_per_tenant,
                                             retry_after_s=settings.sse_retry_after_s),
                             transient=(gexc.GoogleAPICallError, gexc.RetryError)),
        identities=identities,
        content=content,
        readiness={"firestore": jobs.ping, "pubsub": publisher.ping,
                   "gcs": partial(probe_bucket, clients.storage, settings.bucket)},
    )
