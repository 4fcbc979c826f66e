"""The HTTP surface of the `api` function: one table of endpoints (method, path, parameters, bodies, answers)
and their handlers. The router (`app.py`) parses and validates from this table, and the OpenAPI document
(`openapi.py`) is generated from it, so the contract and the code cannot drift apart.

Handlers are thin: they get parsed models, call a service, and return (status, model) or a redirect."""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import partial
from importlib import metadata

import flask
from pydantic import BaseModel

from functions.core import content_policy, estimates
from functions.core.errors import InvalidInput, NotFound
from functions.core.places import shipped_places
from functions.core.tenants import LOCAL, Principal, scoped_user
from functions.http import sse
from functions.services.images import ImageAsk
from functions.wiring import Services
from schemas.push import WebhookOptions
from schemas._base import utcnow
from schemas.api import (
    EstimateQuery,
    Health,
    ImageQueued,
    ImageReady,
    ImageOrder,
    ImageRequest,
    Info,
    MarkSeenQuery,
    Me,
    PageQuery,
    Seen,
    SeenPage,
    SelfieCity,
    SelfieOptions,
    SelfieRequest,
    StaticListing,
    StyleDeleted,
    StyleDeleteQuery,
    StyleOut,
    StylePage,
    StyleUpsert,
    Task,
    TaskListQuery,
    TaskPage,
    TaskStats,
    Usage,
    UsageQuery,
    VariantPage,
    VideoAccepted,
    VideoEstimate,
    VideoFromVariantQuery,
    VideoGenerateRequest,
)
from schemas.documents import SeenDoc
from schemas.identity import VERSION_PATTERN, IdentityOut, LoraUpload, ReferenceUpload
from schemas.ids import JOB_ID_PATTERN, PK_PATTERN, SOUL_ID_PATTERN, USER_ID_PATTERN
from schemas.jobs import JobLane, VideoResult
from schemas.push import WarmAnswer, WarmRequest


@dataclass(frozen=True)
class Call:
    """One parsed request, as a handler sees it; `principal` is the one channel saying who is asking."""

    request: flask.Request
    path: Mapping[str, str]
    query: BaseModel | None
    body: BaseModel | None
    principal: Principal = LOCAL  # the authenticated caller: tenant, role, key id, idempotency scope


Reply = tuple[int, BaseModel] | flask.Response
Handler = Callable[[Services, Call], Reply]


@dataclass(frozen=True)
class Endpoint:
    name: str
    method: str
    rule: str  # werkzeug syntax: /tasks/<task_id>
    handler: Handler
    summary: str
    tag: str
    responses: Mapping[int, type[BaseModel] | None]
    query: type[BaseModel] | None = None
    body: type[BaseModel] | None = None
    path_params: Mapping[str, str] = field(default_factory=dict)  # name -> regex
    public: bool = False
    creates_work: bool = False  # honours Idempotency-Key
    role: str = "client"  # "admin": only admin keys (styles); every non-public endpoint needs at least a client key
    media_type: str = "application/json"
    upload: bool = False  # the body may be multipart or JSON up to the upload limit (functions/http/uploads.py)


# Path parameter formats.
FILENAME_IMAGE = r"^[0-9A-HJKMNP-TV-Z]{26}\.png$"
FILENAME_VIDEO = r"^(img|vid)-[0-9a-f]{32}-[0-9]{1,6}(-r[0-9]{1,6})?\.(gif|mp4|webp)$"


def _webhook_options(call: Call) -> WebhookOptions | None:
    for part in (call.body, call.query):
        if isinstance(part, WebhookOptions) and part.webhook:
            return part
    return None


def registers_webhook(handler: Handler) -> Handler:
    """Wrap a work-creating handler: vet the caller's webhook before the work, register it on the job after."""

    @functools.wraps(handler)
    def wrapped(svc: Services, call: Call) -> Reply:
        options = _webhook_options(call)
        if options is not None:
            svc.webhooks.check(options.webhook, call.principal.tenant)
        reply = handler(svc, call)
        if options is not None and isinstance(reply, tuple):
            svc.webhooks.attach(options, reply[1], call.principal.tenant)
        return reply

    return wrapped


def redirect(url: str) -> flask.Response:
    """A 302 to `url`, built without Flask's app context: the deployed front (functions/http/asgi.py) runs the
    router outside one, where `flask.redirect` would answer a plain werkzeug response."""
    response = flask.Response(status=302)
    response.headers["Location"] = url
    response.headers["Cache-Control"] = "private, no-store"  # the target is a short-lived signed URL
    return response


# ---- health and info -------------------------------------------------------------------------------------------


def healthz(svc: Services, call: Call) -> Reply:
    return 200, Health(status="ok")


def ready(svc: Services, call: Call) -> Reply:
    results: dict[str, str] = {}
    for name, check in svc.readiness.items():
        try:
            check()
            results[name] = "ok"
        except Exception as exc:  # noqa: BLE001 - readiness reports any failure by name
            results[name] = f"unavailable: {type(exc).__name__}"
    ok = all(v == "ok" for v in results.values())
    return (200 if ok else 503), Health(status="ok" if ok else "unavailable", checks=results)


def me(svc: Services, call: Call) -> Reply:
    return 200, Me(tenant=call.principal.tenant, role=call.principal.role)


def info(svc: Services, call: Call) -> Reply:
    """Version for every key; the infrastructure (emulator hosts and ports, project, bucket) only for admins: in
    local mode an emulator's address is a target, and nothing a client key does needs it."""
    import os

    if not call.principal.is_admin:
        return 200, Info(name="soul", version=metadata.version("soul"), model_backend=svc.settings.model_tag)

    def backend(env: str) -> str:
        host = os.environ.get(env)
        return f"emulator at {host}" if host else "gcp"

    s = svc.settings
    return 200, Info(
        name="soul",
        version=metadata.version("soul"),
        backends={
            "firestore": backend("FIRESTORE_EMULATOR_HOST"),
            "pubsub": backend("PUBSUB_EMULATOR_HOST"),
            "gcs": backend("STORAGE_EMULATOR_HOST"),
        },
        model_backend=s.model_tag,
        configuration={
            "project_id": s.project_id,
            "bucket": s.bucket,
            "auth_mode": s.auth_mode,
            "signed_url_ttl_s": s.signed_url_ttl_s,
            "signing": "key_file" if s.signing_key_file else "iam_sign_blob",
            "max_body_bytes": s.max_body_bytes,
            "svd_num_frames": s.svd_num_frames,
            "svd_fps": s.svd_fps,
            "svd_estimated_seconds_per_frame": s.svd_estimated_seconds_per_frame,
            "log_level": s.log_level,
        },
    )


# ---- images ----------------------------------------------------------------------------------------------------


def _image_reply(answer: ImageReady | ImageQueued) -> Reply:
    return (200 if isinstance(answer, ImageReady) else 202), answer


def image(svc: Services, call: Call) -> Reply:
    ask = call.query if call.query is not None else call.body
    assert isinstance(ask, ImageRequest)
    lane = ask.lane if isinstance(ask, ImageOrder) else JobLane.INTERACTIVE
    return _image_reply(svc.images.request(ImageAsk(soul_id=ask.soul_id, cue=ask.cue, user_id=ask.user_id,
                                                    tenant=call.principal.tenant, lane=lane,
                                                    admin=call.principal.is_admin, seed=ask.seed,
                                                    scheduler=ask.scheduler)))


def selfie(svc: Services, call: Call) -> Reply:
    assert isinstance(call.body, SelfieRequest)
    return _image_reply(svc.images.selfie(call.body, call.principal.tenant))


def selfie_options(svc: Services, call: Call) -> Reply:
    catalog = shipped_places()
    cities = [SelfieCity(key=key, name=city.name) for key, city in catalog.cities.items()]
    return 200, SelfieOptions(cities=cities, moods=list(catalog.moods))


def mark_seen(svc: Services, call: Call) -> Reply:
    query = call.query
    assert isinstance(query, MarkSeenQuery)
    variant = svc.prompts.variant(query.variant_id)
    if variant is None:
        raise NotFound(f"no variant '{query.variant_id}'", field="variant_id")
    user = scoped_user(call.principal.tenant, query.user_id)
    seen = SeenDoc(variant_id=variant.variant_id, pk=variant.pk, soul_id=variant.soul_id, seen_at=utcnow())
    doc = svc.prompts.mark_seen(user, seen)
    svc.warm_pool.after_seen(user, variant, partial(svc.images.prerender, tenant=call.principal.tenant),
                             call.principal.tenant)
    return 200, Seen(variant_id=doc.variant_id, user_id=query.user_id, pk_id=doc.pk, soul_id=doc.soul_id,
                     seen_at=doc.seen_at)


def variants_of_pk(svc: Services, call: Call) -> Reply:
    page = call.query
    assert isinstance(page, PageQuery)
    variants, cursor = svc.prompts.variants_page(call.path["pk_id"], page.page_size, page.cursor)
    return 200, VariantPage(items=_visible_variants(svc, call, variants), next_cursor=cursor)


def _visible_variants(svc: Services, call: Call, variants) -> list:
    """A listing as the caller's content policy lets it see it: withheld variants are left out, and so are those
    whose cue holds a term the caller's tenant blocks (another tenant's image of that cue)."""
    tenant = call.principal.tenant
    viewer = svc.content.viewer(tenant, admin=call.principal.is_admin)
    allowed = [v for v in variants if not svc.content.blocks(tenant, v.cue)]
    return [view for view in svc.images.variant_views(allowed, viewer) if view is not None]


def seen_of_user(svc: Services, call: Call) -> Reply:
    page = call.query
    assert isinstance(page, PageQuery)
    user_id = call.path["user_id"]
    docs, cursor = svc.prompts.seen_page(scoped_user(call.principal.tenant, user_id), page.page_size, page.cursor)
    items = [Seen(variant_id=d.variant_id, user_id=user_id, pk_id=d.pk, soul_id=d.soul_id, seen_at=d.seen_at)
             for d in docs]
    return 200, SeenPage(items=items, next_cursor=cursor)


# ---- styles ----------------------------------------------------------------------------------------------------


def style_put(svc: Services, call: Call) -> Reply:
    assert isinstance(call.body, StyleUpsert)
    return 200, svc.styles.put(call.body)


def style_get(svc: Services, call: Call) -> Reply:
    return 200, svc.styles.get(call.path["soul_id"])


def style_delete(svc: Services, call: Call) -> Reply:
    assert isinstance(call.query, StyleDeleteQuery)
    return 200, svc.styles.delete(call.path["soul_id"], call.query.updated_at)


def style_list(svc: Services, call: Call) -> Reply:
    page = call.query
    assert isinstance(page, PageQuery)
    if page.cursor and not re.fullmatch(SOUL_ID_PATTERN, page.cursor):
        raise InvalidInput("cursor does not name a position in this list", field="cursor")
    return 200, svc.styles.list(page.page_size, page.cursor)


# ---- a soul's identity: reference images and LoRA (admin) -------------------------------------------------------


def identity_get(svc: Services, call: Call) -> Reply:
    return 200, svc.identities.get(call.path["soul_id"])


def reference_add(svc: Services, call: Call) -> Reply:
    assert isinstance(call.body, ReferenceUpload)
    return 201, svc.identities.add_reference(call.path["soul_id"], call.body.image)


def reference_delete(svc: Services, call: Call) -> Reply:
    return 200, svc.identities.delete_reference(call.path["soul_id"], call.path["ref_id"])


def lora_put(svc: Services, call: Call) -> Reply:
    assert isinstance(call.body, LoraUpload)
    return 200, svc.identities.put_lora(call.path["soul_id"], call.body)


def lora_delete(svc: Services, call: Call) -> Reply:
    return 200, svc.identities.delete_lora(call.path["soul_id"])


# ---- tasks -----------------------------------------------------------------------------------------------------


def task_get(svc: Services, call: Call) -> Reply:
    tenant = call.principal.tenant
    task = svc.tasks.get(call.path["task_id"], tenant, admin=call.principal.is_admin)
    return 200, task.model_copy(update={"deliveries": svc.webhooks.deliveries(task.task_id, tenant)})


def task_events(svc: Services, call: Call) -> Reply:
    # 429 when this tenant's or this instance's streams are at their cap, 404 (the visibility rule of
    # GET /tasks/{id}) before the stream opens; the stream follows the instance's shared watcher of the job.
    stream = sse.open_stream(svc.progress, call.path["task_id"], call.principal.tenant, svc.settings,
                             admin=call.principal.is_admin, last_event_id=call.request.headers.get("Last-Event-ID"))
    return flask.Response(stream, mimetype="text/event-stream",
                          headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"})


def task_cancel(svc: Services, call: Call) -> Reply:
    return svc.tasks.cancel(call.path["task_id"], call.principal.tenant)


def task_list(svc: Services, call: Call) -> Reply:
    assert isinstance(call.query, TaskListQuery)
    return 200, svc.tasks.list(call.query, call.principal.tenant)


def usage(svc: Services, call: Call) -> Reply:
    assert isinstance(call.query, UsageQuery)
    return 200, svc.usage.usage(call.principal.tenant, call.query.days)


def task_stats(svc: Services, call: Call) -> Reply:
    return 200, svc.tasks.stats().model_copy(update={"prerenders": svc.warm_pool.stats()})


def image_warm(svc: Services, call: Call) -> Reply:
    assert isinstance(call.body, WarmRequest)
    return 200, svc.images.warm(call.body, call.principal.tenant)


# ---- video -----------------------------------------------------------------------------------------------------


def video_estimate(svc: Services, call: Call) -> Reply:
    assert isinstance(call.query, EstimateQuery)
    frames = call.query.num_frames or svc.settings.svd_num_frames
    return 200, estimates.video_estimate(svc.jobs.runner_stats(), frames, svc.estimate_defaults)


def video_from_variant(svc: Services, call: Call) -> Reply:
    query = call.query
    assert isinstance(query, VideoFromVariantQuery)
    return svc.videos.from_variant(query.variant_id, query.num_frames, query.generate_gif, query.user_id,
                                   call.principal.tenant)


def video_generate(svc: Services, call: Call) -> Reply:
    body = call.body
    assert isinstance(body, VideoGenerateRequest)
    return svc.videos.from_image_path(body.image_path, body.num_frames, body.generate_gif, body.user_id,
                                      call.principal.tenant)


# ---- compatibility with the original app's static paths: redirects to signed URLs, never local files -----------


def static_image(svc: Services, call: Call) -> Reply:
    variant = svc.prompts.variant(call.path["filename"].removesuffix(".png"))
    if variant is None:
        raise NotFound(f"no image '{call.path['filename']}'", field="filename")
    viewer = svc.content.viewer(call.principal.tenant, admin=call.principal.is_admin)
    view = svc.images.variant_view(variant, viewer)
    if view is None:  # withheld under this tenant's content policy: as if it did not exist
        raise NotFound(f"no image '{call.path['filename']}'", field="filename")
    return redirect(view.url)


def static_video(svc: Services, call: Call) -> Reply:
    job_id, _, fmt = call.path["filename"].rpartition(".")
    found = svc.tasks.video_output(job_id, fmt, call.principal.tenant)
    job = svc.jobs.job(job_id) if found is not None else None
    if found is None or (isinstance(job.result, VideoResult)
                         and not _animation_visible(svc, call, job.result.variant_id)):
        raise NotFound(f"no video '{call.path['filename']}'", field="filename")
    return redirect(svc.signer.sign(found).url)


def _animation_visible(svc: Services, call: Call, variant_id: str) -> bool:
    """An animation shows its source's pixels: hidden from tenants whose policy blurs or withholds a flagged one."""
    variant = svc.prompts.variant(variant_id)
    viewer = svc.content.viewer(call.principal.tenant, admin=call.principal.is_admin)
    return variant is None or variant.safety is None or not variant.safety.flagged or \
        content_policy.sees_flagged_originals(viewer)


def static_images(svc: Services, call: Call) -> Reply:
    page = call.query
    assert isinstance(page, PageQuery)
    items, cursor = svc.tasks.images(call.principal.tenant, page.page_size, page.cursor,
                                     admin=call.principal.is_admin)
    return 200, StaticListing(items=items, next_cursor=cursor)


TASK = {"task_id": JOB_ID_PATTERN}
ERRORS_ONLY: Mapping[int, None] = {}

ENDPOINTS: tuple[Endpoint, ...] = (
    Endpoint("healthz", "GET", "/healthz", healthz, "Liveness: the process is up.", "health", {200: Health},
             public=True),
    Endpoint("ready", "GET", "/ready", ready, "Readiness: Firestore, Pub/Sub and GCS are reachable.", "health",
             {200: Health, 503: Health}, public=True),
    Endpoint("info", "GET", "/info", info,
             "Version; for admin keys also backends and configuration (never secrets).", "health",
             {200: Info}),
    Endpoint("me", "GET", "/me", me, "The caller's tenant and role (what its API key may do).", "health",
             {200: Me}),
    Endpoint("image_get", "GET", "/image", image, "An unseen variant of the cue for this user, or the job making one.",
             "image", {200: ImageReady, 202: ImageQueued}, query=ImageRequest),
    Endpoint("image_post", "POST", "/image", registers_webhook(image),
             "Same as GET /image, with a JSON body; may add a webhook and ask for the background lane.", "image",
             {200: ImageReady, 202: ImageQueued}, body=ImageOrder, creates_work=True),
    Endpoint("selfie", "POST", "/image/selfie", registers_webhook(selfie),
             "A selfie of the soul at a place in the city that fits the mood, fresh for this user.", "image",
             {200: ImageReady, 202: ImageQueued}, body=SelfieRequest, creates_work=True),
    Endpoint("image_warm", "POST", "/image/warm", image_warm,
             "Keep `variants` unseen variants of a cue pre-rendered ahead, in the background lane (admin keys; "
             "batch jobs get an admin key of their tenant).",
             "image", {200: WarmAnswer}, body=WarmRequest, creates_work=True, role="admin"),
    Endpoint("selfie_options", "GET", "/image/selfie/options", selfie_options,
             "The cities and moods a selfie can ask for.", "image", {200: SelfieOptions}),
    Endpoint("mark_seen", "POST", "/image/mark-seen", mark_seen, "Mark a variant seen by a user (idempotent).",
             "image", {200: Seen}, query=MarkSeenQuery),
    Endpoint("variants", "GET", "/image/variants/<pk_id>", variants_of_pk, "All variants of a prompt key.",
             "image", {200: VariantPage}, query=PageQuery, path_params={"pk_id": PK_PATTERN}),
    Endpoint("seen", "GET", "/image/user/<user_id>/seen", seen_of_user, "The variants a user has marked seen.",
             "image", {200: SeenPage}, query=PageQuery, path_params={"user_id": USER_ID_PATTERN}),
    Endpoint("style_put", "POST", "/style", style_put,
             "Create or update a style profile (admin); last write wins on updated_at.", "style",
             {200: StyleOut}, body=StyleUpsert, role="admin"),
    Endpoint("style_list", "GET", "/style", style_list, "All souls' styles (catalog and stored).", "style",
             {200: StylePage}, query=PageQuery),
    Endpoint("style_get", "GET", "/style/<soul_id>", style_get, "A soul's style.", "style", {200: StyleOut},
             path_params={"soul_id": SOUL_ID_PATTERN}),
    Endpoint("style_delete", "DELETE", "/style/<soul_id>", style_delete,
             "Delete a stored style (admin; the catalog default applies again); last write wins on updated_at.",
             "style", {200: StyleDeleted}, query=StyleDeleteQuery, path_params={"soul_id": SOUL_ID_PATTERN},
             role="admin"),
    Endpoint("usage", "GET", "/usage", usage,
             "Your tenant's images, GPU-seconds and dedup savings by UTC day (the deployment-wide summary is "
             "/tasks/stats/summary, admin).", "tasks", {200: Usage}, query=UsageQuery),
    Endpoint("identity_get", "GET", "/style/<soul_id>/identity", identity_get,
             "A soul's reference images and LoRA adapter (admin).", "style", {200: IdentityOut},
             path_params={"soul_id": SOUL_ID_PATTERN}, role="admin"),
    Endpoint("reference_add", "POST", "/style/<soul_id>/references", reference_add,
             "Add a reference image (admin; PNG, JPEG or WebP bytes as multipart `image` or base64 JSON; 1-4 per "
             "soul): validated, re-encoded, stored create-only; renders are conditioned on it (IP-Adapter).",
             "style", {201: IdentityOut}, body=ReferenceUpload, path_params={"soul_id": SOUL_ID_PATTERN},
             role="admin", upload=True),
    Endpoint("reference_delete", "DELETE", "/style/<soul_id>/references/<ref_id>", reference_delete,
             "Remove a reference image (admin).", "style", {200: IdentityOut},
             path_params={"soul_id": SOUL_ID_PATTERN, "ref_id": VERSION_PATTERN}, role="admin"),
    Endpoint("lora_put", "POST", "/style/<soul_id>/lora", lora_put,
             "Attach a LoRA (admin; diffusers/peft .safetensors as multipart `lora` + `name`, `scale`, or base64 "
             "JSON): checked against the model's layers, stored create-only; it replaces the soul's adapter.",
             "style", {200: IdentityOut}, body=LoraUpload, path_params={"soul_id": SOUL_ID_PATTERN}, role="admin",
             upload=True),
    Endpoint("lora_delete", "DELETE", "/style/<soul_id>/lora", lora_delete, "Detach the soul's LoRA (admin).",
             "style", {200: IdentityOut}, path_params={"soul_id": SOUL_ID_PATTERN}, role="admin"),
    Endpoint("task_stats", "GET", "/tasks/stats/summary", task_stats,
             "The deployment's counts by status and type, p50/p95 durations and GPU-seconds (admin: it spans every "
             "tenant).", "tasks", {200: TaskStats}, role="admin"),
    Endpoint("task_get", "GET", "/tasks/<task_id>", task_get, "A task's status, progress and result.", "tasks",
             {200: Task}, path_params=TASK),
    Endpoint("task_events", "GET", "/tasks/<task_id>/events", task_events,
             "Live progress as server-sent events (`update` on each change, `end` at a terminal state).", "tasks",
             {200: None}, path_params=TASK, media_type="text/event-stream"),
    Endpoint("task_cancel", "DELETE", "/tasks/<task_id>", task_cancel,
             "Cancel your interest: queued tasks stop at once (200), running ones at their next step (202); a task "
             "another tenant still waits on goes on for it (200, canceled for you).", "tasks",
             {200: Task, 202: Task}, path_params=TASK),
    Endpoint("task_list", "GET", "/tasks", task_list, "Tasks, newest first, with filters.", "tasks",
             {200: TaskPage}, query=TaskListQuery),
    Endpoint("video_estimate", "GET", "/video/estimate", video_estimate,
             "Estimated animation time, from measured runner pace when there is any.", "video",
             {200: VideoEstimate}, query=EstimateQuery),
    Endpoint("video_from_variant", "POST", "/video/generate-from-variant", registers_webhook(video_from_variant),
             "Animate a variant (GIF, MP4, WebP); the same request joins the same job.", "video",
             {200: VideoAccepted, 202: VideoAccepted}, query=VideoFromVariantQuery, creates_work=True),
    Endpoint("video_generate", "POST", "/video/generate", registers_webhook(video_generate),
             "Animate the variant whose image object `image_path` names (no file paths, no URLs).", "video",
             {200: VideoAccepted, 202: VideoAccepted}, body=VideoGenerateRequest, creates_work=True),
    Endpoint("static_image", "GET", "/static/image/<filename>", static_image,
             "Redirect to a signed URL of an image ({variant_id}.png).", "compat", {302: None},
             path_params={"filename": FILENAME_IMAGE}),
    Endpoint("generated", "GET", "/generated/<filename>", static_image, "Same as /static/image/{filename}.",
             "compat", {302: None}, path_params={"filename": FILENAME_IMAGE}),
    Endpoint("static_video", "GET", "/static/videos/<filename>", static_video,
             "Redirect to a signed URL of an animation ({task_id}.gif|mp4|webp).", "compat", {302: None},
             path_params={"filename": FILENAME_VIDEO}),
    Endpoint("static_images", "GET", "/static/images", static_images,
             "Images of this tenant's finished image tasks with signed URLs, newest first.",
             "compat", {200: StaticListing}, query=PageQuery),
)
