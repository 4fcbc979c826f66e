"""Builds the functions' services from settings and clients, once per process."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

from functions._clients import Clients
from functions.auth import KeyRing, build_key_ring
from functions.counters import ShardedCounter
from functions.estimates import EstimateDefaults
from functions.idempotency import IdempotencyStore
from functions.images import ImageService
from functions.publish import Publisher
from functions.quota_policy import Quota
from functions.quotas import QuotaService
from functions.settings import FunctionsSettings
from functions.signing import UrlSigner
from functions.store import Store
from functions.styles import StyleService
from functions.tasks import TaskService
from functions.usage import GpuUsage
from functions.videos import VideoService
from functions.warm_pool import WarmPool
from functions.webhooks import WebhookRegistry
from schemas import names


@dataclass(frozen=True)
class Services:
    settings: FunctionsSettings
    clients: Clients
    store: Store
    publisher: Publisher
    signer: UrlSigner
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

    def tenant_webhook_secret(self, tenant: str) -> str | None:
        """The webhook signing secret the keys file gives `tenant` (None: no webhooks for it)."""
        return self.keys.tenant_webhook_secret(tenant)


def build_services(settings: FunctionsSettings, clients: Clients, keys: KeyRing | None = None) -> Services:
    store = Store(clients.firestore, settings.backend_timeout_s)
    if keys is None:  # ConfigError: the deployable does not start
        keys = build_key_ring(settings.api_keys.get_secret_value(), settings.api_keys_file)
    quotas = QuotaService(
        clients.firestore,
        Quota(
            requests_per_second=settings.quota_requests_per_second,
            burst=settings.quota_burst,
            jobs_per_hour=settings.quota_jobs_per_hour,
            gpu_seconds_per_day=settings.quota_gpu_seconds_per_day,
            variants_per_prompt_per_user_per_day=settings.quota_variants_per_prompt_per_user_per_day,
        ),
        keys,
        shards=settings.quota_shards,
        timeout=settings.backend_timeout_s,
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
    styles = StyleService(clients.firestore, settings.backend_timeout_s, settings.style_clock_skew_s)
    usage = GpuUsage(store, ShardedCounter(clients.firestore, names.COUNTER_DEDUP_HITS, deadline=store.deadline))
    tasks = TaskService(store, signer, publisher, settings.public_base_url, usage=usage)
    warm_pool = WarmPool(store, settings)
    return Services(
        settings=settings,
        clients=clients,
        store=store,
        publisher=publisher,
        signer=signer,
        styles=styles,
        images=ImageService(store, styles, publisher, signer, settings, defaults, quotas, warm_pool, usage=usage),
        tasks=tasks,
        videos=VideoService(store, publisher, tasks, settings, defaults, quotas),
        idempotency=IdempotencyStore(
            clients.firestore, timedelta(seconds=settings.idempotency_ttl_s), settings.backend_timeout_s
        ),
        estimate_defaults=defaults,
        keys=keys,
        quotas=quotas,
        webhooks=WebhookRegistry(store, publisher, settings, keys),
        warm_pool=warm_pool,
    )
