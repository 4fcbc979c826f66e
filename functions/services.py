"""Builds the functions' services from settings and clients, once per process."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

from functions._clients import Clients
from functions.estimates import EstimateDefaults
from functions.idempotency import IdempotencyStore
from functions.images import ImageService
from functions.publish import Publisher
from functions.settings import FunctionsSettings
from functions.signing import UrlSigner
from functions.store import Store
from functions.styles import StyleService
from functions.tasks import TaskService
from functions.videos import VideoService
from functions.warm_pool import WarmPool
from functions.webhooks import WebhookRegistry


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
    webhooks: WebhookRegistry
    warm_pool: WarmPool


def build_services(settings: FunctionsSettings, clients: Clients) -> Services:
    store = Store(clients.firestore, settings.backend_timeout_s)
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
    styles = StyleService(clients.firestore, settings.backend_timeout_s)
    tasks = TaskService(store, signer, publisher, settings.public_base_url)
    warm_pool = WarmPool(store, settings)
    return Services(
        settings=settings,
        clients=clients,
        store=store,
        publisher=publisher,
        signer=signer,
        styles=styles,
        images=ImageService(store, styles, publisher, signer, settings, defaults, warm_pool),
        tasks=tasks,
        videos=VideoService(store, publisher, tasks, settings, defaults),
        idempotency=IdempotencyStore(
            clients.firestore, timedelta(seconds=settings.idempotency_ttl_s), settings.backend_timeout_s
        ),
        estimate_defaults=defaults,
        webhooks=WebhookRegistry(store, publisher, settings),
        warm_pool=warm_pool,
    )
