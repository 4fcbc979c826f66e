"""Configuration of the functions deployable: one settings object, read from the environment once at the
entry point and passed down. Variable names of the original app are kept where they still mean the same."""

from __future__ import annotations

from typing import Literal

from pydantic import AliasChoices, Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from schemas import names
from schemas.safety import ContentPolicy
from soul_common.delivery import policy


class FunctionsSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="SOUL_", extra="ignore", frozen=True)

    project_id: str = Field(
        default="soul-local", validation_alias=AliasChoices("GCS_PROJECT_ID", "GOOGLE_CLOUD_PROJECT")
    )
    bucket: str = Field(default="soul-local-media", validation_alias=AliasChoices("GCS_BUCKET_NAME"))
    log_level: str = Field(default="INFO", validation_alias=AliasChoices("LOG_LEVEL"))
    # The model the runner serves; part of the prompt key, so switching models never serves old pixels.
    model_tag: str = "tiny-sdxl-v1"
    # V4 URL signing: a service-account key file, or (on GCP, no key) IAM signBlob as `signing_service_account`.
    signing_key_file: str | None = None
    signing_service_account: str | None = None
    signed_url_endpoint: str | None = None  # e.g. the fake-gcs-server address locally; None = storage.googleapis.com
    signed_url_ttl_s: int = Field(default=3600, ge=60, le=7 * 24 * 3600)
    # Estimates before a runner has measured anything (the original app's SVD_* names).
    estimate_image_seconds: float = 8.0
    svd_estimated_seconds_per_frame: float = Field(
        default=2.0, gt=0, validation_alias=AliasChoices("SVD_ESTIMATED_SECONDS_PER_FRAME")
    )
    estimate_encode_seconds_per_frame: float = Field(default=0.08, gt=0)
    svd_num_frames: int = Field(default=25, ge=2, le=64, validation_alias=AliasChoices("SVD_NUM_FRAMES"))
    svd_fps: int = Field(default=7, ge=1, le=60, validation_alias=AliasChoices("SVD_FPS"))
    # Auth: comma-separated keys; empty = auth off (local only; the deployed config refuses to start without it).
    api_keys: SecretStr = SecretStr("")
    # Tenants and roles: a JSON list of {tenant, role, key|key_sha256, quota, webhook_secret} (functions/core/tenants.py).
    api_keys_file: str | None = None
    # "platform": the platform verified the caller's ID token before the request arrived (Cloud Run invoker IAM).
    auth_mode: Literal["none", "api_key", "platform"] = "none"
    # Platform mode: verified identities (ID token email or sub), comma-separated, that get the admin role.
    platform_admins: str = ""
    # Wrong API keys, per source address, in memory (functions/http/auth_throttle.py): a burst, then a steady rate.
    auth_failure_burst: int = Field(default=20, ge=1, le=10_000)
    auth_failures_per_minute: float = Field(default=30.0, gt=0)
    auth_failure_sources: int = Field(default=10_000, ge=100)  # sources remembered per instance (bounded memory)
    trusted_proxy_hops: int = Field(default=0, ge=0, le=5)  # proxies whose X-Forwarded-For entry names the source
    # Default quotas of every tenant (overridable per tenant in the keys file), counted in Firestore.
    quotas_enabled: bool = True
    quota_requests_per_second: float = Field(default=50.0, gt=0)
    quota_burst: int = Field(default=100, ge=1)
    quota_jobs_per_hour: int = Field(default=200, ge=0)
    quota_gpu_seconds_per_day: float = Field(default=4 * 3600.0, ge=0)
    quota_variants_per_prompt_per_user_per_day: int = Field(default=10, ge=0)
    quota_shards: int = Field(default=4, ge=1, le=64)
    # How long an instance's lease of a tenant's tokens lasts (functions/services/rate.py): its sync interval.
    quota_rate_lease_s: float = Field(default=2.0, gt=0, le=60)
    # Shards of each tenant's jobs-per-hour counter (written at every job creation, read summed).
    quota_job_counter_shards: int = Field(default=16, ge=1, le=64)
    # A style's `updated_at` may be at most this far in the future (clock skew between callers).
    style_clock_skew_s: float = Field(default=300.0, ge=0)
    # How long an instance keeps a soul's style and identity for image requests (0: read them on every request).
    # A change made through this instance shows at once, one made through another within this many seconds.
    look_cache_s: float = Field(default=5.0, ge=0, le=300)
    # Set in every deployed configuration: refuse to start when auth is off.
    require_auth: bool = False
    idempotency_ttl_s: int = Field(default=24 * 3600, ge=60)
    # How long a finished (canceled) job is kept before Firestore's TTL deletes it (soul_common/retention.py).
    job_retention_days: float = Field(default=30.0, gt=0)
    max_body_bytes: int = 64 * 1024
    # Admin uploads of a soul's identity (functions/core/uploads.py): the whole body (Cloud Run takes at most 32 MiB
    # per HTTP/1 request; base64 in JSON adds a third), one reference image, its pixels, one LoRA and its rank.
    max_upload_body_bytes: int = Field(default=32 * 1024 * 1024, ge=1024, le=32 * 1024 * 1024)
    # Upload bodies one api process holds in memory at once, all requests together (functions/http/asgi.py): an
    # upload past it waits for none of them, it is a 503 with Retry-After. Four whole uploads by default.
    max_buffered_upload_bytes: int = Field(default=128 * 1024 * 1024, ge=1024)
    reference_max_bytes: int = Field(default=10 * 1024 * 1024, ge=1024)
    reference_max_pixels: int = Field(default=4096 * 4096, ge=64 * 64, le=8192 * 8192)
    lora_max_bytes: int = Field(default=23 * 1024 * 1024, ge=1024)
    lora_max_rank: int = Field(default=128, ge=1, le=1024)
    # Deadline of each Firestore call: past it the request answers 503 instead of waiting on retries.
    backend_timeout_s: float = Field(default=10.0, gt=0, le=120)
    public_base_url: str = ""  # prefix of status_url; empty = relative URLs
    # Webhooks (functions/services/webhooks.py): the signing secret when no tenants are configured (`whsec_<base64>`),
    # local mode (http to loopback allowed), and the bounded retry schedule of each delivery.
    webhook_secret: SecretStr = SecretStr("")
    webhook_allow_loopback: bool = False
    # Local mode: the loopback ports webhooks may go to ("8801,8802" or "8800-8809"), those of the stack's own test
    # receivers; never an emulator's or a function's (refused at start-up). Empty: no loopback target at all.
    webhook_loopback_ports: str = ""
    # One attempt's overall deadline (connect, send, status line): a receiver dripping bytes cannot stretch it.
    webhook_timeout_s: float = Field(default=5.0, gt=0, le=30)
    webhook_targets_per_tenant_per_job: int = Field(default=5, ge=1, le=100)
    webhook_parallel_targets: int = Field(default=64, ge=1, le=256)  # targets of one event delivered at once
    # A failing target is retried, one push of soul-webhook-retries per attempt, for at most the budget (an hour
    # at most: its attempts are listed on the delivery document); the backoff's maximum and one attempt's timeout
    # fit in that subscription's ack deadline: `_webhook_retries_fit_their_push`.
    webhook_retry_budget_s: float = Field(default=120.0, ge=0, le=3600)
    webhook_backoff_initial_s: float = Field(default=1.0, gt=0, le=60)
    webhook_backoff_max_s: float = Field(default=30.0, gt=0, le=300)
    # Warm pool (functions/services/warm_pool.py): pre-render `ahead` unseen variants of prompt keys with demand.
    warm_pool_enabled: bool = False
    warm_pool_min_users: int = Field(default=2, ge=1, le=1000)  # distinct users within the window = demand
    warm_pool_window_s: float = Field(default=3600.0, gt=0)
    warm_pool_ahead: int = Field(default=1, ge=1, le=16)
    warm_pool_max_ahead: int = Field(default=4, ge=1, le=16)  # bound of POST /image/warm `variants`
    warm_pool_key_cap_per_day: int = Field(default=50, ge=0)  # pre-renders per prompt key per UTC day
    # Content policy (functions/core/content_policy.py): every tenant's default (the keys file may set a tenant's
    # own `content_policy`), and blocked terms (comma-separated) screened on every tenant's normalized cues.
    content_policy: ContentPolicy = ContentPolicy.FLAG
    blocked_terms: str = Field(default="", max_length=20000)
    # Server-sent events of GET /tasks/{id}/events (functions/http/sse.py).
    sse_poll_interval_s: float = Field(default=0.5, gt=0, le=10)
    sse_heartbeat_s: float = Field(default=15.0, gt=0, le=60)
    sse_max_duration_s: float = Field(default=300.0, gt=0, le=3600)
    # Open event streams one instance holds, in all and per tenant (functions/services/progress.py); past them a
    # 429 with this Retry-After. Cloud Run counts each open stream against max_instance_request_concurrency.
    sse_max_streams_per_instance: int = Field(default=1000, ge=1, le=100_000)
    sse_max_streams_per_tenant: int = Field(default=200, ge=1, le=100_000)
    sse_retry_after_s: float = Field(default=5.0, gt=0, le=600)
    # The deployed async front (functions/http/asgi.py): threads that run the synchronous router (streams hold
    # none of them), and how long a request body may sit idle between two reads before a 408.
    worker_threads: int = Field(default=16, ge=1, le=512, validation_alias=AliasChoices("SOUL_WORKER_THREADS",
                                                                                          "THREADS"))
    body_idle_timeout_s: float = Field(default=10.0, gt=0, le=120)
    # How long a connection may take to send its request line and headers (functions/http/front.py): 408 after.
    header_timeout_s: float = Field(default=10.0, gt=0, le=120)
    # Where the emulators are (local only; set by emulators/): their ports are never webhook targets.
    firestore_emulator_host: str | None = Field(default=None, validation_alias=AliasChoices("FIRESTORE_EMULATOR_HOST"))
    pubsub_emulator_host: str | None = Field(default=None, validation_alias=AliasChoices("PUBSUB_EMULATOR_HOST"))
    storage_emulator_host: str | None = Field(default=None, validation_alias=AliasChoices("STORAGE_EMULATOR_HOST"))

    @model_validator(mode="after")
    def _webhook_retries_fit_their_push(self) -> FunctionsSettings:
        """A push of soul-webhook-retries waits until its attempt is due (at most the backoff's maximum) and makes
        it: past the subscription's ack deadline Pub/Sub would push the retry again while the first still waits."""
        deadline = policy(names.SUB_WEBHOOK_RETRIES).ack_deadline_s
        if self.webhook_backoff_max_s + self.webhook_timeout_s >= deadline:
            raise ValueError(
                f"SOUL_WEBHOOK_BACKOFF_MAX_S ({self.webhook_backoff_max_s:g}) + SOUL_WEBHOOK_TIMEOUT_S "
                f"({self.webhook_timeout_s:g}) must stay below the {deadline} s ack deadline of "
                f"{names.SUB_WEBHOOK_RETRIES}"
            )
        return self

    @property
    def loopback_ports(self) -> frozenset[int]:
        return parse_ports(self.webhook_loopback_ports)

    @model_validator(mode="after")
    def _loopback_ports_spare_the_stack(self) -> FunctionsSettings:
        """A declared receiver port must not be one the stack's own services listen on."""
        try:
            declared = self.loopback_ports
        except ValueError as exc:
            raise ValueError(f"SOUL_WEBHOOK_LOOPBACK_PORTS: {exc}") from None
        taken: dict[int, str] = {}
        for name, port in self.infrastructure_ports().items():
            taken.setdefault(port, name)
        clash = sorted(p for p in declared if p in taken)
        if clash:
            raise ValueError(
                f"SOUL_WEBHOOK_LOOPBACK_PORTS names port {clash[0]}, where {taken[clash[0]]} listens; webhooks may "
                "only go to the stack's test receivers"
            )
        return self

    def infrastructure_ports(self) -> dict[str, int]:
        """The ports of the emulators (and the signed-URL endpoint) this process talks to: never webhook targets."""
        found: dict[str, int] = {}
        for name, address in (("the Firestore emulator", self.firestore_emulator_host),
                              ("the Pub/Sub emulator", self.pubsub_emulator_host),
                              ("the storage emulator", self.storage_emulator_host),
                              ("the signed-URL endpoint", self.signed_url_endpoint)):
            port = _port_of(address)
            if port is not None:
                found[name] = port
        return found

    @model_validator(mode="after")
    def _auth_is_consistent(self) -> FunctionsSettings:
        has_keys = bool(self.api_keys.get_secret_value().strip()) or bool(self.api_keys_file)
        if self.auth_mode == "platform" and has_keys:
            raise ValueError(
                "SOUL_AUTH_MODE=platform ignores API keys, but SOUL_API_KEYS or SOUL_API_KEYS_FILE is set: choose "
                "one (keys: SOUL_AUTH_MODE=api_key; invoker IAM only: unset the keys)"
            )
        if self.auth_mode == "api_key" and not has_keys:
            raise ValueError("SOUL_AUTH_MODE=api_key needs SOUL_API_KEYS or SOUL_API_KEYS_FILE")
        if has_keys and self.auth_mode == "none":
            object.__setattr__(self, "auth_mode", "api_key")
        if self.require_auth and self.auth_mode == "none":
            raise ValueError(
                "SOUL_REQUIRE_AUTH is set but auth is off: set SOUL_API_KEYS, or SOUL_AUTH_MODE=platform behind "
                "Cloud Run invoker IAM"
            )
        return self


def parse_ports(text: str) -> frozenset[int]:
    """"8801, 8802" or "8800-8809" (or both, comma-separated) as a set of ports; ValueError names a bad part."""
    ports: set[int] = set()
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        low, _, high = part.partition("-")
        if not low.isdigit() or (high and not high.isdigit()):
            raise ValueError(f"'{part}' is not a port or a range of ports")
        first, last = int(low), int(high or low)
        if not 1 <= first <= last <= 65535 or last - first > 1000:
            raise ValueError(f"'{part}' is not a port range within 1-65535 (at most 1000 ports)")
        ports.update(range(first, last + 1))
    return frozenset(ports)


def _port_of(address: str | None) -> int | None:
    if not address:
        return None
    from urllib.parse import urlsplit

    try:
        parts = urlsplit(address if "//" in address else f"//{address}")
        return parts.port or (443 if parts.scheme == "https" else 80 if parts.scheme == "http" else None)
    except ValueError:
        return None
